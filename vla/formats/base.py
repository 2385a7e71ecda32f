"""The interface every dataset reader implements, and the HDF5 helpers the HDF5 readers share.

A reader claims a path (`sniff`: a file, or a folder it reads as one dataset) and reads it the one way the training
path needs: its detected feature map, its dimensions before loading (the model is sized by them), its demos
(vla.features.Demo, frames squared and resized by `fit_frames`, through the shared on-disk FrameCache of
vla.formats.frames where the reader has one), and what `vla data info` prints. vla.formats keeps the registry and
picks the reader.
"""

from __future__ import annotations

import abc
import glob
import os
from dataclasses import dataclass
from typing import Callable

import h5py
import numpy as np

from vla.features import DatasetError, Demo, FeatureMap

HDF5_SUFFIXES = (".hdf5", ".h5")


@dataclass(frozen=True)
class LoadOptions:
    """What vla.formats.load_demos asks of every reader (its arguments, less the paths and the per-task cap)."""

    split: str | None = None  # None (all), "train" or "valid"
    cameras: tuple | None = ("agentview", "wrist")  # policy camera names to read; None: every camera of the feature map
    image_size: int | None = None  # frames made square (frame_fit) and resized; None: as stored
    tasks: tuple | None = None  # task filter
    features: FeatureMap | None = None  # the user's mapping; None: the reader's detected one
    frame_fit: str = "crop"
    frame_cache: str | None = None  # FrameCache directory (readers that cache decoded frames on disk)
    progress: bool = False


class Reader(abc.ABC):
    """One dataset format. `take(task) -> bool` (in `load`) is asked once per demo before its frames are read: False
    skips the demo (the per-task cap across files); it counts the demos it lets through."""

    name: str = ""
    holds: str = ""  # what a path of this format holds, for the error when no reader claims a path

    @abc.abstractmethod
    def sniff(self, path: str) -> bool:
        """Whether this reader reads `path` (cheap: metadata only, no frames)."""

    @abc.abstractmethod
    def feature_map(self, path: str) -> FeatureMap:
        """The detected mapping: cameras, state keys, action key and space, instruction source, control rate."""

    @abc.abstractmethod
    def dims(self, path: str, features: FeatureMap | None = None) -> dict:
        """{"cameras": [...], "state_dim", "action_dim", "features": FeatureMap}, read before any frame."""

    @abc.abstractmethod
    def load(self, path: str, opts: LoadOptions, take: Callable[[str], bool]) -> list[Demo]:
        """The demos of `path` for opts.split, in a stable order."""

    @abc.abstractmethod
    def describe(self, path: str, features: FeatureMap | None = None) -> tuple[FeatureMap, dict, str]:
        """(feature map, {feature: {key, shape, dtype, ...}}, format name) for `vla data info`."""


# --------------------------------------------------------------------------------------------------------------
# HDF5 helpers (robomimic's demo-group layout: data/demo_<i>, mask/<split>)
# --------------------------------------------------------------------------------------------------------------
def open_hdf5(path: str) -> h5py.File:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: dataset file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        what = "not an HDF5 file" if "signature" in str(e) else \
            f"not a readable HDF5 file ({str(e).split(' (')[0].split(', errno')[0]})"  # h5py's internals cut off
        raise DatasetError(f"{path}: {what}") from e


def is_hdf5(path: str) -> bool:
    try:
        return os.path.isfile(path) and h5py.is_hdf5(path)
    except OSError:
        return False


def hdf5_files(folder: str) -> list[str]:
    """The HDF5 files directly inside `folder` (*.hdf5, *.h5), sorted by name."""
    return sorted(p for s in HDF5_SUFFIXES for p in glob.glob(os.path.join(glob.escape(str(folder)), "*" + s))
                  if os.path.isfile(p))


def demo_index(name: str) -> int:
    try:
        return int(name.split("_")[-1])
    except ValueError:
        return -1


def split_names(f, path: str, split: str | None) -> list[str]:
    """Demo names of a split: robomimic's mask/<split> when the file has masks; without any mask/ (robomimic's and
    LIBERO's released files often have none) every 10th demo is held out for "valid"."""
    names = sorted(f["data"].keys(), key=demo_index)
    if split is None:
        return names
    if "mask" not in f or not len(f["mask"].keys()):
        return [n for i, n in enumerate(names) if (i % 10 == 9) == (split == "valid")]
    if f"mask/{split}" not in f:
        raise DatasetError(f"{path}: missing key 'mask/{split}'")
    return [n.decode() for n in f[f"mask/{split}"][()]]


def check_cameras(path: str, fm: FeatureMap, cameras) -> list[str]:
    """The policy cameras to read (None: all of the feature map's); one the feature map lacks is an error."""
    cams = list(fm.cameras) if cameras is None else list(cameras)
    unknown = [c for c in cams if c not in fm.cameras]
    if unknown:
        raise DatasetError(f"{path}: camera(s) {unknown} are not in the data's feature map ({fm.cameras}); map them "
                           f"in data.features.cameras or choose model.cameras")
    return cams


def demo_lowdim(g, fm: FeatureMap, path: str, name: str, cams=()) -> tuple[np.ndarray, np.ndarray]:
    """A demo group's actions (T, A) and state (T, S: fm.state's keys concatenated), after checking that those keys
    and the cameras' image keys are there and that every state key has T rows."""
    for key in [fm.action] + [f"obs/{k}" for k in fm.state] + [f"obs/{fm.cameras[c]}" for c in cams]:
        if key not in g:
            raise DatasetError(f"{path}: missing key 'data/{name}/{key}'")
    actions = g[fm.action][()].astype(np.float32)  # (T, A)
    T = int(actions.shape[0])
    parts = []
    for k in fm.state:
        v = g[f"obs/{k}"][()].astype(np.float32)
        if v.shape[0] != T:
            raise DatasetError(f"{path}: data/{name}/obs/{k}: {v.shape[0]} rows, the actions have {T}")
        parts.append(v.reshape(T, -1))
    return actions, np.concatenate(parts, axis=1)


def first_demo_dims(f, fm: FeatureMap, path: str) -> dict:
    """{"cameras", "state_dim", "action_dim", "features"} read off the first demo group of an open HDF5 file."""
    g = f["data"][sorted(f["data"].keys(), key=demo_index)[0]]
    for key in [fm.action] + [f"obs/{k}" for k in fm.state]:
        if key not in g:
            raise DatasetError(f"{path}: missing key '{g.name.lstrip('/')}/{key}'")
    state_dim = sum(int(np.prod(g[f"obs/{k}"].shape[1:])) for k in fm.state)
    return {"cameras": list(fm.cameras), "state_dim": state_dim, "action_dim": int(np.prod(g[fm.action].shape[1:])),
            "features": fm}
