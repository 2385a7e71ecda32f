"""This project's HDF5 ("vla-stack/1": obs/state) and robomimic's released key layout: one file, or a folder of such
files (read in name order). The writer of this layout is vla.formats.hdf5_writer.DemoWriter.

    data                         attrs: total (samples), env_args (JSON: robomimic's env metadata, type 1 = robosuite),
                                 vla_env_args (JSON: our task, cameras, image size), format ("vla-stack/1"), tasks
    data/demo_<i>                attrs: num_samples, instruction, task, seed, env_args (JSON)
        obs/agentview_image      uint8   (T, S, S, 3)   upright
        obs/wrist_image          uint8   (T, S, S, 3)
        obs/state                float32 (T, 9)         eef pos (3), eef quat xyzw (4), gripper qpos (2)
        obs/robot0_eef_pos       float32 (T, 3)         robomimic's low-dim keys, same numbers as `state`
        obs/robot0_eef_quat      float32 (T, 4)
        obs/robot0_gripper_qpos  float32 (T, 2)
        obs/object_pos           float32 (T, 3, 3)      privileged object positions (sim.tasks.TaskSpec.object_names)
        actions                  float32 (T, 7)
        rewards                  float32 (T,)
        dones                    uint8   (T,)
        states                   float64 (T, n)         flattened MuJoCo state
    mask/train, mask/valid       bytes   (n,)           demo names

robomimic's released files have no obs/state (the feature map concatenates robot0_eef_pos, robot0_eef_quat and
robot0_gripper_qpos: vla.features.FeatureMap.detect), no instruction (the task's name stands in) and often no mask/.
"""

from __future__ import annotations

import json
import os

import numpy as np

from vla.features import DatasetError, Demo, FeatureMap, fit_frames
from vla.formats.base import (LoadOptions, Reader, demo_index, demo_lowdim, first_demo_dims, hdf5_files, is_hdf5,
                              open_hdf5, split_names)
from vla.formats.libero_hdf5 import is_libero_file

FORMAT = "vla-stack/1"
IMAGE_KEYS = {"agentview": "agentview_image", "wrist": "wrist_image"}  # policy camera -> obs key
REQUIRED_DEMO_KEYS = ("actions", "obs/state")


def is_ours_or_robomimic(path: str) -> bool:
    """An HDF5 file that is not LIBERO's native layout (which the LIBERO reader claims first)."""
    return is_hdf5(path) and not is_libero_file(path)


def check_file(path: str) -> None:
    """Raise DatasetError naming the file and key if `path` is not a vla-stack/robomimic demo file."""
    with open_hdf5(path) as f:
        if "data" not in f:
            raise DatasetError(f"{path}: missing key 'data'")
        for name in f["data"].keys():
            for key in REQUIRED_DEMO_KEYS:
                if key not in f["data"][name]:
                    raise DatasetError(f"{path}: missing key 'data/{name}/{key}'")


class OursHDF5(Reader):
    name = "hdf5"
    holds = "an HDF5 file in this project's or robomimic's layout (data/demo_<i>/obs, actions) or a folder of them"

    def sniff(self, path: str) -> bool:
        files = hdf5_files(path) if os.path.isdir(path) else [path]
        return bool(files) and all(is_ours_or_robomimic(p) for p in files)

    def files(self, path: str) -> list[str]:
        return hdf5_files(path) if os.path.isdir(path) else [path]

    def feature_map(self, path: str) -> FeatureMap:
        first = self.files(path)[0]
        with open_hdf5(first) as f:
            return FeatureMap.detect(f, first)

    def dims(self, path: str, features: FeatureMap | None = None) -> dict:
        first = self.files(path)[0]
        with open_hdf5(first) as f:
            return first_demo_dims(f, features or FeatureMap.detect(f, first), first)

    def load(self, path: str, opts: LoadOptions, take) -> list[Demo]:
        return [d for p in self.files(path) for d in _load_file(p, opts, take)]

    def describe(self, path: str, features: FeatureMap | None = None) -> tuple[FeatureMap, dict, str]:
        first = self.files(path)[0]
        with open_hdf5(first) as f:
            if "data" not in f:
                raise DatasetError(f"{first}: missing key 'data'")
            fm = features or FeatureMap.detect(f, first)
            g = f["data"][sorted(f["data"].keys(), key=demo_index)[0]]
            feats = {}
            for cam, key in fm.cameras.items():
                d = g[f"obs/{key}"]
                feats[f"camera.{cam}"] = {"key": f"obs/{key}", "shape": list(d.shape[1:]), "dtype": str(d.dtype)}
            for key in fm.state:
                d = g[f"obs/{key}"]
                feats[f"state.{key}"] = {"key": f"obs/{key}", "shape": list(d.shape[1:]), "dtype": str(d.dtype)}
            d = g[fm.action]
            feats["action"] = {"key": fm.action, "shape": list(d.shape[1:]), "dtype": str(d.dtype),
                               "space": fm.action_space}
        return fm, feats, FORMAT if fm.state == ("state",) else "robomimic"


def _load_file(path: str, opts: LoadOptions, take) -> list[Demo]:
    """One file's demos of opts.split; take(task): False skips the demo."""
    demos: list[Demo] = []
    with open_hdf5(path) as f:
        if "data" not in f:
            raise DatasetError(f"{path}: missing key 'data'")
        fm = opts.features or FeatureMap.detect(f, path)
        cams = list(fm.cameras) if opts.cameras is None else list(opts.cameras)
        unknown = [c for c in cams if c not in fm.cameras]
        if unknown:
            raise DatasetError(f"{path}: camera(s) {unknown} are not in the data's feature map (no "
                               f"{', '.join(f'obs/{c}_image' for c in unknown)}; it has {fm.cameras}); map them "
                               f"in data.features.cameras or choose model.cameras")
        env_task = json.loads(f["data"].attrs.get("vla_env_args", "") or f["data"].attrs.get("env_args", "{}")
                              or "{}").get("env_name", "")
        for name in split_names(f, path, opts.split):
            if name not in f["data"]:
                raise DatasetError(f"{path}: mask/{opts.split} names missing demo 'data/{name}'")
            g = f["data"][name]
            task = str(g.attrs.get("task", env_task))
            if opts.tasks is not None and task not in opts.tasks:
                continue
            if not take(task):
                continue
            actions, state = demo_lowdim(g, fm, path, name, cams)
            T = int(actions.shape[0])
            images = {}
            for cam in cams:
                arr = g[f"obs/{fm.cameras[cam]}"][()]
                if arr.ndim != 4 or arr.shape[0] != T or arr.shape[3] != 3:
                    raise DatasetError(f"{path}: data/{name}/obs/{fm.cameras[cam]}: expected uint8 (T={T}, H, W, "
                                       f"3), got {arr.dtype} {arr.shape}")
                images[cam] = fit_frames(arr, opts.image_size, opts.frame_fit) if opts.image_size else arr
            obj = g["obs/object_pos"][()] if "obs/object_pos" in g else np.zeros((T, 3, 3), np.float32)
            instruction = fm.instruction or str(g.attrs.get("instruction", "")) or task
            demos.append(Demo(name=f"{os.path.basename(path)}:{name}", task=task, instruction=instruction,
                              images=images, state=state, actions=actions, object_pos=obj.astype(np.float32)))
    return demos
