"""LIBERO's native HDF5 datasets: one file per task (`<task>_demo.hdf5`), or a folder of them (a suite).

    data                          attrs: problem_info (JSON: language_instruction, ...), env_args (JSON: env_kwargs
                                  control_freq), bddl_file_name (the task's .bddl: its stem is the task name)
    data/demo_<i>/obs/agentview_rgb     uint8   (T, H, W, 3)   as rendered: upside down (OpenGL)
    data/demo_<i>/obs/eye_in_hand_rgb   uint8   (T, H, W, 3)   the same
    data/demo_<i>/obs/ee_pos            float   (T, 3)         end-effector position
    data/demo_<i>/obs/ee_ori            float   (T, 3)         end-effector orientation, axis-angle
    data/demo_<i>/obs/gripper_states    float   (T, 2)         gripper finger qpos
    data/demo_<i>/obs/{ee_states, joint_states}                (not read)
    data/demo_<i>/actions               float   (T, 7)         OSC end-effector deltas in [-1, 1], gripper -1 open

Read as: cameras "agentview" and "wrist" (the names sim.libero.conventions.CAMERA_KEYS gives first), each frame
rotated 180 degrees ([::-1, ::-1]) so it is upright, as the LIBERO env worker sends frames at evaluation; state (8) =
ee_pos + ee_ori + gripper_states, the layout both peers feed LIBERO policies (conventions.libero_state); actions
eef_delta (7); the instruction is the one LIBERO's benchmark gives the task (from the .bddl file name, as evaluation
sends it; problem_info's language_instruction only without a bddl_file_name); the control rate is env_args'
control_freq (20 Hz). Without mask/, every 10th demo of a file is "valid". With an image size, frames go through the
shared on-disk FrameCache (vla.formats.frames), as LeRobot's do.
"""

from __future__ import annotations

import json
import os

import numpy as np

from vla.features import DatasetError, Demo, FeatureMap
from vla.formats.base import (LoadOptions, Reader, check_cameras, demo_index, demo_lowdim, first_demo_dims,
                              hdf5_files, is_hdf5, open_hdf5, split_names)
from vla.formats.frames import FrameCache

CAMERAS = {"agentview": "agentview_rgb", "wrist": "eye_in_hand_rgb"}  # policy name -> obs key
STATE_KEYS = ("ee_pos", "ee_ori", "gripper_states")
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "gripper_left", "gripper_right")
ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
CONTROL_HZ = 20.0  # LIBERO's robosuite control_freq, when env_args does not say


def upright(frames: np.ndarray) -> np.ndarray:
    """LIBERO's stored (T, H, W, 3) frames -> upright ones: rotated 180 degrees (a flip alone would mirror them)."""
    return np.ascontiguousarray(frames[:, ::-1, ::-1])


def is_libero_file(path: str) -> bool:
    """An HDF5 file in LIBERO's native layout: data.attrs problem_info, or LIBERO's obs keys in its first demo."""
    if not is_hdf5(path):
        return False
    try:
        with open_hdf5(path) as f:
            if "data" not in f:
                return False
            if "problem_info" in f["data"].attrs:
                return True
            names = list(f["data"].keys())
            obs = f["data"][names[0]].get("obs") if names else None
            return obs is not None and {"agentview_rgb", "ee_pos", "gripper_states"} <= set(obs.keys())
    except (OSError, DatasetError):
        return False


def file_meta(f, path: str) -> dict:
    """{"task", "instruction", "fps"} of an open LIBERO file: the task is the .bddl file's stem (LIBERO's task name),
    else the file name without `_demo`; the instruction problem_info's language_instruction, else the task's words."""
    attrs = f["data"].attrs

    def js(key):
        try:
            return json.loads(attrs.get(key, "{}") or "{}")
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{path}: data.attrs[{key!r}] is not valid JSON ({e})") from e

    bddl = str(attrs.get("bddl_file_name", "") or "")
    stem = os.path.basename(path).rsplit(".", 1)[0]
    task = os.path.splitext(os.path.basename(bddl))[0] if bddl else (stem[:-len("_demo")] if stem.endswith("_demo")
                                                                      else stem)
    instruction = language_of_task(task) if bddl else ""
    instruction = instruction or str(js("problem_info").get("language_instruction", "") or "").strip()
    kw = js("env_args").get("env_kwargs") or {}
    fps = float(kw["control_freq"]) if kw.get("control_freq") else CONTROL_HZ
    return {"task": task, "instruction": instruction or task.replace("_", " "), "fps": fps}


def language_of_task(task: str) -> str:
    """The instruction LIBERO's benchmark gives a task (`Task.language`, what evaluation sends), made from the .bddl
    file name as LIBERO makes it: "pick_up_the_milk_and_place_it_in_the_basket" -> "pick up the milk and place it in
    the basket"; LIBERO-90/10 names drop their scene prefix ("KITCHEN_SCENE3_turn_on_the_stove" -> "turn on the
    stove"). The BDDL's own (:language ...) line, which problem_info carries, can differ ("pick the milk ..."), and a
    policy trained on it would read another sentence at evaluation."""
    if task[:1].isupper() and "SCENE" in task:
        return " ".join(task[task.find("SCENE") + (8 if "SCENE10" in task else 7):].split("_"))
    return " ".join(task.split("_"))


class LiberoHDF5(Reader):
    name = "libero"
    holds = ("a LIBERO native HDF5 file (<task>_demo.hdf5: data.attrs problem_info, obs/agentview_rgb, ee_pos, ee_ori, "
             "gripper_states) or a folder of them (a suite)")

    def sniff(self, path: str) -> bool:
        files = hdf5_files(path) if os.path.isdir(path) else [path]
        return bool(files) and all(is_libero_file(p) for p in files)

    def files(self, path: str) -> list[str]:
        return hdf5_files(path) if os.path.isdir(path) else [path]

    def feature_map(self, path: str) -> FeatureMap:
        first = self.files(path)[0]
        with open_hdf5(first) as f:
            names = sorted(f["data"].keys(), key=demo_index)
            if not names:
                raise DatasetError(f"{first}: no demos under 'data'")
            keys = set(f["data"][names[0]]["obs"].keys()) if "obs" in f["data"][names[0]] else set()
            fps = file_meta(f, first)["fps"]
        return FeatureMap(cameras={c: k for c, k in CAMERAS.items() if k in keys}, state=STATE_KEYS,
                          action="actions", action_space="eef_delta", fps=fps, action_names=ACTION_NAMES,
                          state_names=STATE_NAMES)

    def dims(self, path: str, features: FeatureMap | None = None) -> dict:
        fm = features or self.feature_map(path)
        first = self.files(path)[0]
        with open_hdf5(first) as f:
            return first_demo_dims(f, fm, first)

    def load(self, path: str, opts: LoadOptions, take) -> list[Demo]:
        fm = opts.features or self.feature_map(path)
        cams = check_cameras(path, fm, opts.cameras)
        source = _FrameSource(path, self.files(path)) if (opts.image_size and cams) else None
        cached = {}
        if source is not None:
            cached = {c: FrameCache(source, fm.cameras[c], opts.image_size, opts.frame_fit, opts.frame_cache)
                      .open(opts.progress) for c in cams}
        demos = []
        for p in self.files(path):
            with open_hdf5(p) as f:
                if "data" not in f:
                    raise DatasetError(f"{p}: missing key 'data'")
                meta = file_meta(f, p)
                for name in split_names(f, p, opts.split):
                    if name not in f["data"]:
                        raise DatasetError(f"{p}: mask/{opts.split} names missing demo 'data/{name}'")
                    if opts.tasks is not None and meta["task"] not in opts.tasks:
                        continue
                    if not take(meta["task"]):
                        continue
                    g = f["data"][name]
                    actions, state = demo_lowdim(g, fm, p, name, cams)  # (T, 7), (T, 8)
                    T = int(actions.shape[0])
                    images = {}
                    for c in cams:
                        if source is not None:
                            a = source.offset[(p, name)]
                            images[c] = cached[c][a:a + T]
                        else:
                            images[c] = upright(_frames(g, fm.cameras[c], T, p, name))
                    demos.append(Demo(name=f"{os.path.basename(p)}:{name}", task=meta["task"],
                                      instruction=fm.instruction or meta["instruction"], images=images,
                                      state=state, actions=actions,
                                      object_pos=np.zeros((T, 3, 3), np.float32)))
        return demos

    def describe(self, path: str, features: FeatureMap | None = None) -> tuple[FeatureMap, dict, str]:
        fm = features or self.feature_map(path)
        first = self.files(path)[0]
        feats = {}
        with open_hdf5(first) as f:
            g = f["data"][sorted(f["data"].keys(), key=demo_index)[0]]
            for cam, key in fm.cameras.items():
                d = g[f"obs/{key}"]
                feats[f"camera.{cam}"] = {"key": f"obs/{key}", "shape": list(d.shape[1:]), "dtype": str(d.dtype),
                                          "stored": "upside down (as rendered)", "read": "rotated 180 degrees"}
            for key in fm.state:
                d = g[f"obs/{key}"]
                feats[f"state.{key}"] = {"key": f"obs/{key}", "shape": list(d.shape[1:]), "dtype": str(d.dtype)}
            d = g[fm.action]
            feats["action"] = {"key": fm.action, "shape": list(d.shape[1:]), "dtype": str(d.dtype),
                               "space": fm.action_space, "names": list(fm.action_names or ())}
        return fm, feats, "libero"


def _frames(g, key: str, T: int, path: str, name: str) -> np.ndarray:
    arr = g[f"obs/{key}"][()]
    if arr.ndim != 4 or arr.shape[0] != T or arr.shape[3] != 3:
        raise DatasetError(f"{path}: data/{name}/obs/{key}: expected uint8 (T={T}, H, W, 3), got {arr.dtype} "
                           f"{arr.shape}")
    return arr


class _FrameSource:
    """LIBERO files as a FrameCache source (vla.formats.frames.FrameSource): every demo of every file (all splits),
    in file then demo order, one global frame index; frames come out upright."""

    def __init__(self, path: str, files: list[str]):
        self.root = os.path.abspath(path).rstrip("/")
        self.files = files
        self.episodes: list[dict] = []
        self.offset: dict = {}  # (file, demo name) -> first global frame
        n = 0
        for p in files:
            with open_hdf5(p) as f:
                if "data" not in f:
                    raise DatasetError(f"{p}: missing key 'data'")
                for name in sorted(f["data"].keys(), key=demo_index):
                    if "actions" not in f["data"][name]:
                        raise DatasetError(f"{p}: missing key 'data/{name}/actions'")
                    T = int(f["data"][name]["actions"].shape[0])
                    self.episodes.append({"file": p, "demo": name, "dataset_from_index": n, "length": T,
                                          "episode_index": len(self.episodes)})
                    self.offset[(p, name)] = n
                    n += T
        self.total_frames = n

    def stamp_files(self) -> list[str]:
        return list(self.files)

    def frames(self, key: str, episodes: list[dict], sink) -> None:
        by_file: dict[str, list[dict]] = {}
        for ep in episodes:
            by_file.setdefault(ep["file"], []).append(ep)
        for p, eps in by_file.items():
            with open_hdf5(p) as f:
                for ep in eps:
                    g = f["data"][ep["demo"]]
                    if f"obs/{key}" not in g:
                        raise DatasetError(f"{p}: missing key 'data/{ep['demo']}/obs/{key}'")
                    sink(ep, upright(_frames(g, key, ep["length"], p, ep["demo"])))
