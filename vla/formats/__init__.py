"""Dataset formats: one reader per format behind one interface (vla.formats.base.Reader), chosen by `detect`; the
entry points every caller reads a dataset through.

    load_demos(paths, ...)      the demos of one or several dataset paths (vla.features.Demo), each read by its reader
    peek_dims(paths)            cameras, state and action sizes and the feature map, before any frame is read
    describe(path)              what `vla data info` prints
    detect(path) -> Reader      the first registered reader whose sniff claims the path (a file or a folder); a path
                                no reader claims is one DatasetError (`unclaimed`) ending with `forms()`, what a
                                dataset path may be
    READERS                     in the order they are asked:
        lerobot   LeRobot v3 folder (meta/info.json)                               vla.formats.lerobot_v3
        libero    LIBERO native HDF5 (<task>_demo.hdf5), or a folder of them       vla.formats.libero_hdf5
        hdf5      this project's / robomimic's HDF5, or a folder of them           vla.formats.hdf5
    register(reader, first=False)   add a format (asked first, or before the catch-all hdf5 reader)

Shared by the readers: the interface and the HDF5 demo-group helpers (vla.formats.base), the on-disk frame cache
(vla.formats.frames), the feature map and Demo (vla.features). Writers live apart and read nothing back through
here: vla.formats.hdf5_writer.DemoWriter (this project's HDF5), vla.formats.lerobot_v3_writer.export_lerobot.
"""

from __future__ import annotations

import os

import numpy as np

from vla.features import DatasetError, Demo, FeatureMap
from vla.formats.base import LoadOptions, Reader, hdf5_files, is_hdf5
from vla.formats.hdf5 import OursHDF5
from vla.formats.lerobot_v3 import LeRobotV3
from vla.formats.libero_hdf5 import LiberoHDF5

READERS: list[Reader] = [LeRobotV3(), LiberoHDF5(), OursHDF5()]

__all__ = ["DATASET_FORMS", "READERS", "LoadOptions", "Reader", "describe", "detect", "forms", "load_demos",
           "peek_dims", "register", "unclaimed"]


def register(reader: Reader, first: bool = False) -> None:
    """Add a reader: asked first (`first`), else just before the last (the catch-all HDF5 reader)."""
    if any(r.name == reader.name for r in READERS):
        raise ValueError(f"format {reader.name!r} is already registered")
    READERS.insert(0 if first else max(0, len(READERS) - 1), reader)


def forms() -> str:
    """What a dataset path may be, one phrase per registered reader (the errors below end with it)."""
    holds = [r.holds for r in READERS]
    return holds[0] if len(holds) == 1 else ", ".join(holds[:-1]) + ", or " + holds[-1]


DATASET_FORMS = forms()


def unclaimed(path: str) -> DatasetError:
    """The one error for a path that no reader claims: why, when it is plain, and what a dataset path must hold."""
    why = ""
    if os.path.isfile(path) and not is_hdf5(path):
        why = "not an HDF5 file"
    elif os.path.isdir(path):
        h5 = hdf5_files(path)
        why = (f"a folder whose {len(h5)} HDF5 files are not all of one layout" if h5
               else "a folder with neither meta/info.json nor *.hdf5 / *.h5 files")
    return DatasetError(f"{path}: {why or 'not a dataset layout this project reads'}; expected {forms()}")


def detect(path) -> Reader:
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: dataset file or folder not found; expected {forms()}")
    for reader in READERS:
        if reader.sniff(path):
            return reader
    raise unclaimed(path)


def load_demos(
    paths: str | list[str],
    split: str | None = None,
    cameras: tuple[str, ...] | None = ("agentview", "wrist"),
    image_size: int | None = None,
    tasks: list[str] | None = None,
    max_demos_per_task: int | None = None,
    features: FeatureMap | None = None,
    frame_fit: str = "crop",
    frame_cache: str | None = None,
    progress: bool = False,
) -> list[Demo]:
    """Read demos from one or several paths (several mix into one multi-task list); each path is read by the reader
    `detect` picks: a LeRobot v3 folder, a LIBERO native file or folder, our/robomimic HDF5 file or folder.

    split: None (all), "train" or "valid" (robomimic masks; without masks every 10th demo is "valid").
    cameras: the policy cameras to read (None: every camera of the feature map). features: a vla.features.FeatureMap
    (None: detected per path). image_size: frames made square (`frame_fit`: "crop" or "pad") and resized on load.
    LeRobot and LIBERO frames go through the on-disk cache under `frame_cache` (memmap views, not copies).
    max_demos_per_task: a cap per task across all the paths, the first demos of each task kept.
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


def peek_dims(paths, features: FeatureMap | None = None) -> dict:
    """{"cameras": [...], "state_dim", "action_dim", "features": FeatureMap} of the first demo of the first path (the
    model is sized by them before the data is loaded); the other paths must agree (checked here)."""
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


def describe(path: str, features: FeatureMap | None = None) -> dict:
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
