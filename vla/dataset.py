"""Demonstration datasets in robomimic's HDF5 layout.

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

Writing is append-and-flush, one whole demo at a time: a run killed between demos leaves a valid file with
every finished demo. The reader loads demos into memory and yields (observation, action chunk) samples.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from vla.features import DatasetError, Demo, FeatureMap, fit_frames  # noqa: F401  (DatasetError, Demo: re-exported)
from vla.formats import DATASET_FORMS, detect
from vla.formats.base import LoadOptions, demo_lowdim, first_demo_dims
from vla.formats.base import demo_index as _demo_index
from vla.formats.base import split_names as _split_names

FORMAT = "vla-stack/1"
IMAGE_KEYS = {"agentview": "agentview_image", "wrist": "wrist_image"}
LOWDIM_KEYS = ("state", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object_pos")
REQUIRED_DEMO_KEYS = ("actions", "obs/state")


# --------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------
class DemoWriter:
    """Append demos to a robomimic-layout HDF5 file, flushing after each one.

    `append=True` opens an existing file and continues numbering; otherwise an existing file is an error unless
    `overwrite=True` (the old file is removed first). Either way the file on disk is valid after every demo, so a
    run that dies - even without a chance to clean up - keeps every demo it finished; `append=True` continues it.
    """

    def __init__(self, path: str, env_args: dict, append: bool = False, overwrite: bool = False, valid_every: int = 10,
                 vla_env_args: dict | None = None):
        """env_args: robomimic's env metadata (type 1 = robosuite for a single robosuite task); vla_env_args: this
        project's own description, in an attribute of its own."""
        self.path = str(path)
        self.valid_every = int(valid_every)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)) or ".", exist_ok=True)
        if os.path.exists(self.path) and append:
            check_file(self.path)
            self.f = h5py.File(self.path, "a")
        elif os.path.exists(self.path) and not overwrite:
            raise FileExistsError(f"{self.path}: exists; pass append=True (--append) or overwrite=True (--overwrite)")
        else:
            if os.path.exists(self.path):
                os.remove(self.path)
            self.f = h5py.File(self.path, "w")
            data = self.f.create_group("data")
            data.attrs["total"] = 0
            data.attrs["format"] = FORMAT
            data.attrs["env_args"] = json.dumps(env_args)
            if vla_env_args is not None:
                data.attrs["vla_env_args"] = json.dumps(vla_env_args)
            data.attrs["tasks"] = json.dumps([])
            self.f.create_group("mask")
            self._write_masks([], [])
            self.f.flush()
        self.data = self.f["data"]
        names = sorted(self.data.keys(), key=_demo_index)
        self.n = (_demo_index(names[-1]) + 1) if names else 0
        self.train = [n.decode() for n in self.f["mask/train"][()]] if "mask/train" in self.f else []
        self.valid = [n.decode() for n in self.f["mask/valid"][()]] if "mask/valid" in self.f else []

    def _write_masks(self, train: list[str], valid: list[str]) -> None:
        for key, names in (("train", train), ("valid", valid)):
            if key in self.f["mask"]:
                del self.f["mask"][key]
            self.f["mask"].create_dataset(key, data=np.array(names, dtype="S"))

    def add_demo(
        self,
        *,
        task: str,
        instruction: str,
        seed: int,
        images: dict[str, np.ndarray],
        state: np.ndarray,
        actions: np.ndarray,
        object_pos: np.ndarray,
        sim_states: np.ndarray,
        env_args: dict | None = None,
    ) -> str:
        """Write one whole demo; returns its name. Every 1-in-`valid_every` demo goes to mask/valid."""
        T = len(actions)
        if T == 0:
            raise ValueError("actions: a demo needs at least one step")
        for k, v in [("state", state), ("object_pos", object_pos), ("states", sim_states)]:
            if len(v) != T:
                raise ValueError(f"{k}: expected {T} rows (one per action), got {len(v)}")
        name = f"demo_{self.n}"
        g = self.data.create_group(name)
        obs = g.create_group("obs")
        for cam, arr in images.items():
            arr = np.asarray(arr, dtype=np.uint8)
            if arr.shape[0] != T or arr.ndim != 4:
                raise ValueError(f"images[{cam!r}]: expected (T={T}, S, S, 3) uint8, got {arr.shape}")
            obs.create_dataset(
                IMAGE_KEYS.get(cam, f"{cam}_image"), data=arr, chunks=(1, *arr.shape[1:]), compression="lzf"
            )
        state = np.asarray(state, dtype=np.float32)
        obs.create_dataset("state", data=state)
        obs.create_dataset("robot0_eef_pos", data=state[:, 0:3])
        obs.create_dataset("robot0_eef_quat", data=state[:, 3:7])
        obs.create_dataset("robot0_gripper_qpos", data=state[:, 7:9])
        obs.create_dataset("object_pos", data=np.asarray(object_pos, dtype=np.float32))
        g.create_dataset("actions", data=np.asarray(actions, dtype=np.float32))
        rewards = np.zeros(T, dtype=np.float32)
        rewards[-1] = 1.0
        g.create_dataset("rewards", data=rewards)
        dones = np.zeros(T, dtype=np.uint8)
        dones[-1] = 1
        g.create_dataset("dones", data=dones)
        g.create_dataset("states", data=np.asarray(sim_states, dtype=np.float64))
        g.attrs["num_samples"] = T
        g.attrs["instruction"] = instruction
        g.attrs["task"] = task
        g.attrs["seed"] = int(seed)
        if env_args is not None:
            g.attrs["env_args"] = json.dumps(env_args)
        (self.valid if (self.n % self.valid_every == self.valid_every - 1) else self.train).append(name)
        self._write_masks(self.train, self.valid)
        self.data.attrs["total"] = int(self.data.attrs["total"]) + T
        tasks = json.loads(self.data.attrs["tasks"])
        if task not in tasks:
            self.data.attrs["tasks"] = json.dumps(tasks + [task])
        self.n += 1
        self.f.flush()
        return name

    @property
    def num_demos(self) -> int:
        return len(self.data.keys())

    def close(self) -> None:
        if self.f is None:
            return
        self.f.flush()
        self.f.close()
        self.f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------------------
def _open(path: str) -> h5py.File:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: dataset file not found; expected {DATASET_FORMS}")
    if os.path.isdir(path):
        h5 = sorted(n for n in os.listdir(path) if n.endswith((".hdf5", ".h5")))
        hint = (f"; it holds HDF5 file(s): pass them one by one ({', '.join(os.path.join(path, n) for n in h5[:3])}"
                f"{', ...' if len(h5) > 3 else ''})" if h5 else "")
        raise DatasetError(f"{path}: a folder, but not a LeRobot v3 dataset (no meta/info.json){hint}; expected "
                           f"{DATASET_FORMS}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        what = "not an HDF5 file" if "signature" in str(e) else \
            f"not a readable HDF5 file ({str(e).split(' (')[0].split(', errno')[0]})"  # h5py's internals cut off
        raise DatasetError(f"{path}: {what}; expected {DATASET_FORMS}") from e


def check_file(path: str) -> None:
    """Raise DatasetError naming the file and key if `path` is not a vla-stack/robomimic demo file."""
    with _open(path) as f:
        if "data" not in f:
            raise DatasetError(f"{path}: missing key 'data'")
        for name in f["data"].keys():
            for key in REQUIRED_DEMO_KEYS:
                if key not in f["data"][name]:
                    raise DatasetError(f"{path}: missing key 'data/{name}/{key}'")


def load_demos(
    paths: str | list[str],
    split: str | None = None,
    cameras: tuple[str, ...] | None = ("agentview", "wrist"),
    image_size: int | None = None,
    tasks: list[str] | None = None,
    max_demos_per_task: int | None = None,
    features=None,
    frame_fit: str = "crop",
    frame_cache: str | None = None,
    progress: bool = False,
) -> list[Demo]:
    """Read demos from one or several paths (several mix into one multi-task list); each path is read by the reader
    vla.formats.detect picks: a LeRobot v3 folder, a LIBERO native file or folder, our/robomimic HDF5 file or folder.

    split: None (all), "train" or "valid" (robomimic masks; without masks every 10th demo is "valid").
    cameras: the policy cameras to read (None: every camera of the feature map). features: a vla.features.FeatureMap
    (None: detected per path). image_size: frames made square (`frame_fit`: "crop" or "pad") and resized on load.
    LeRobot and LIBERO frames go through the on-disk cache under `frame_cache` (memmap views, not copies).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [str(paths)]
    if split not in (None, "train", "valid"):
        raise ValueError(f"split: expected None, 'train' or 'valid', got {split!r}")
    demos: list[Demo] = []
    per_task: dict[str, int] = {}

    def take(task: str) -> bool:
        if max_demos_per_task is not None and per_task.get(task, 0) >= max_demos_per_task:
            return False
        per_task[task] = per_task.get(task, 0) + 1
        return True

    opts = LoadOptions(split=split, cameras=None if cameras is None else tuple(cameras), image_size=image_size,
                       tasks=None if tasks is None else tuple(tasks), features=features, frame_fit=frame_fit,
                       frame_cache=frame_cache, progress=progress)
    for path in paths:
        demos += detect(path).load(str(path), opts, take)
    return demos


def _load_hdf5_file(path: str, opts: LoadOptions, take) -> list[Demo]:
    """One file in our or robomimic's layout (vla.formats.hdf5's reader); take(task): False skips the demo."""
    demos: list[Demo] = []
    with _open(path) as f:
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
        for name in _split_names(f, path, opts.split):
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
            demos.append(
                Demo(
                    name=f"{os.path.basename(path)}:{name}",
                    task=task,
                    instruction=instruction,
                    images=images,
                    state=state,
                    actions=actions,
                    object_pos=obj.astype(np.float32),
                )
            )
    return demos


def _hdf5_dims(path: str, features=None) -> dict:
    with _open(path) as f:
        return first_demo_dims(f, features or FeatureMap.detect(f, path), path)


def peek_dims(paths, features=None) -> dict:
    """{"cameras": [...], "state_dim", "action_dim", "features": FeatureMap} of the first demo of the first file (the
    model is sized by them before the data is loaded); the other files must agree (checked here)."""
    out = None
    for path in ([paths] if isinstance(paths, (str, os.PathLike)) else list(paths)):
        dims = detect(path).dims(str(path), features)
        if out is None:
            out = dims
        elif (dims["state_dim"], dims["action_dim"]) != (out["state_dim"], out["action_dim"]):
            raise DatasetError(f"{path}: state/action dims {dims['state_dim']}/{dims['action_dim']} differ from the "
                               f"first file's {out['state_dim']}/{out['action_dim']}")
    if out is None:
        raise ValueError("data.paths: expected at least one dataset file")
    return out


def describe(path: str, features=None) -> dict:
    """What `vla data info` prints: format, episodes, frames, fps, features (key, shape, dtype), per-dimension
    action/state quantiles (q01, q50, q99), tasks and instructions. Reads every demo's low-dim arrays, no images."""
    fm, feats, fmt = detect(path).describe(path, features)
    demos = load_demos(path, cameras=[], features=fm)
    tasks: dict[str, int] = {}
    for dm in demos:
        tasks[dm.task] = tasks.get(dm.task, 0) + 1

    def q(arrs):
        x = np.concatenate(arrs).astype(np.float64)
        return {k: np.round(np.quantile(x, p, axis=0), 5).tolist()
                for k, p in (("q01", .01), ("q50", .5), ("q99", .99))}

    return {"path": path, "format": fmt, "episodes": len(demos), "frames": int(sum(len(d) for d in demos)),
            "fps": fm.fps, "features": feats, "feature_map": fm.to_dict(),
            "action": q([d.actions for d in demos]), "state": q([d.state for d in demos]),
            "tasks": tasks, "instructions": sorted({d.instruction for d in demos})[:20]}


def _describe_hdf5(path: str, features=None):
    with _open(path) as f:
        if "data" not in f:
            raise DatasetError(f"{path}: missing key 'data'")
        fm = features or FeatureMap.detect(f, path)
        names = sorted(f["data"].keys(), key=_demo_index)
        first = f["data"][names[0]]
        feats = {}
        for cam, key in fm.cameras.items():
            d = first[f"obs/{key}"]
            feats[f"camera.{cam}"] = {"key": f"obs/{key}", "shape": list(d.shape[1:]), "dtype": str(d.dtype)}
        for key in fm.state:
            d = first[f"obs/{key}"]
            feats[f"state.{key}"] = {"key": f"obs/{key}", "shape": list(d.shape[1:]), "dtype": str(d.dtype)}
        d = first[fm.action]
        feats["action"] = {"key": fm.action, "shape": list(d.shape[1:]), "dtype": str(d.dtype),
                           "space": fm.action_space}
    fmt = "vla-stack/1" if fm.state == ("state",) else "robomimic"
    return fm, feats, fmt


def compute_stats(arrays: list[np.ndarray]) -> dict[str, list[float]]:
    """Per-dimension mean, std, min, max, q01, q99 over rows of (N_i, D) arrays."""
    x = np.concatenate([a.reshape(len(a), -1) for a in arrays]).astype(np.float64)
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
    }


def dataset_stats(demos: list[Demo]) -> dict[str, dict[str, list[float]]]:
    return {
        "actions": compute_stats([d.actions for d in demos]),
        "state": compute_stats([d.state for d in demos]),
        "object_pos": compute_stats([d.object_pos.reshape(len(d), -1) for d in demos]),
    }


class ChunkSampler:
    """(observation, action chunk) samples: action chunk (H, D) from step t, padded with the last action.

    Also returns `is_pad` (H,) bool so losses can ignore padded steps if they wish.
    """

    def __init__(self, demos: list[Demo], horizon: int):
        if not demos:
            raise ValueError("demos: no demonstrations to sample from (check the path, split and task filter)")
        self.demos = demos
        self.horizon = int(horizon)
        self.index = np.array([(i, t) for i, d in enumerate(demos) for t in range(len(d))], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def get(self, k: int) -> dict:
        i, t = self.index[k]
        d = self.demos[i]
        T = len(d)
        steps = np.arange(t, t + self.horizon)
        is_pad = steps >= T
        steps = np.minimum(steps, T - 1)
        return {
            "images": {c: im[t] for c, im in d.images.items()},
            "state": d.state[t],
            "instruction": d.instruction,
            "task": d.task,
            "actions": d.actions[steps],
            "is_pad": is_pad,
            "object_pos": d.object_pos[t],
            "future_eef": d.state[steps, 0:3],
        }
