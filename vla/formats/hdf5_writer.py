"""Demos written as this project's HDF5 (the layout in vla.formats.hdf5's docstring, which robomimic's tools read).

Writing is append-and-flush, one whole demo at a time: a run killed between demos leaves a valid file with every
finished demo.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from vla.formats.base import demo_index
from vla.formats.hdf5 import FORMAT, IMAGE_KEYS, check_file


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
        names = sorted(self.data.keys(), key=demo_index)
        self.n = (demo_index(names[-1]) + 1) if names else 0
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
