"""The on-disk frame cache every reader with an image size shares: decoded frames, squared (`fit_frames`) and
resized once, kept as a raw uint8 memmap that every process training on the dataset maps (DDP ranks do not each hold
the frames in RAM)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from typing import Callable, Protocol

import numpy as np

from vla.atomic import write_json_atomic
from vla.features import fit_frames


class FrameSource(Protocol):
    """What FrameCache reads: a LeRobot folder (vla.formats.lerobot_v3.LeRobotDir) or LIBERO's files."""

    root: str  # the dataset's path (part of the cache key)
    total_frames: int
    episodes: list  # dicts with dataset_from_index (first global frame) and length, in any order

    def stamp_files(self) -> list[str]:
        """The files whose size and mtime key the cache (a change to any of them builds a new one)."""

    def frames(self, key: str, episodes: list, sink: Callable) -> None:
        """Call sink(episode, uint8 (T, H, W, 3)) once per episode with the frames of camera `key`."""


class FrameCache:
    """Decoded, squared and resized frames of one dataset camera, as a raw uint8 memmap (total_frames, S, S, 3) in
    global frame order, under `cache_dir` (default $VLA_FRAME_CACHE or ~/.cache/vla/frames). Built once, under a
    file lock (concurrent DDP ranks: the first builds, the others wait and map it); complete when `done.json` exists.
    The key covers the dataset's path, its stamp files (size, mtime: LeRobot's info.json and episode metadata), the
    camera, size and fit."""

    def __init__(self, ds: FrameSource, key: str, size: int, fit: str, cache_dir: str | None = None):
        base = cache_dir or os.environ.get("VLA_FRAME_CACHE") or os.path.expanduser("~/.cache/vla/frames")
        stamp = [os.path.realpath(ds.root), key, size, fit]
        for p in ds.stamp_files():
            st = os.stat(p)
            stamp += [p, st.st_size, st.st_mtime_ns]
        digest = hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]
        self.dir = os.path.join(base, f"{os.path.basename(ds.root)}-{digest}")
        self.path = os.path.join(self.dir, f"{key}.u8")
        self.shape = (int(ds.total_frames), size, size, 3)
        self.ds, self.key, self.size, self.fit = ds, key, size, fit

    @property
    def done_path(self) -> str:
        return os.path.join(self.dir, f"{self.key}.done.json")

    def open(self, progress: bool = False) -> np.memmap:
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, f"{self.key}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(self.done_path):
                self._build(progress)
        return np.memmap(self.path, np.uint8, mode="r", shape=self.shape)

    def _build(self, progress: bool) -> None:
        """Written with plain file writes at each episode's offset (not through a writable mapping, whose dirty pages
        would count against this process's memory while it builds)."""
        from tqdm import tqdm

        tmp = self.path + ".tmp"
        row = int(np.prod(self.shape[1:]))
        bar = tqdm(total=self.shape[0], desc=f"decoding {self.key} -> {self.size}px cache", unit="frame",
                   disable=not progress)
        with open(tmp, "wb") as f:
            f.truncate(self.shape[0] * row)

            def sink(ep, frames):
                f.seek(int(ep["dataset_from_index"]) * row)
                f.write(np.ascontiguousarray(fit_frames(frames, self.size, self.fit), np.uint8).tobytes())
                bar.update(len(frames))

            self.ds.frames(self.key, self.ds.episodes, sink)
            f.flush()
            os.fsync(f.fileno())
        bar.close()
        os.replace(tmp, self.path)
        write_json_atomic(self.done_path, {"dataset": self.ds.root, "key": self.key, "shape": list(self.shape),
                                           "fit": self.fit})
