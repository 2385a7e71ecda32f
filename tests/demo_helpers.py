"""Synthetic demo files for the training tests: random 32 px images, random state, smooth actions, in the robomimic
layout the trainer reads (written by the project's own DemoWriter)."""

from __future__ import annotations

import numpy as np

from vla.formats.hdf5_writer import DemoWriter


def write_synthetic_demos(path: str, n: int, T: int, label=lambda i: ("Lift", "lift the cube"), seed: int = 0,
                          valid_every: int = 4, env_name: str = "Lift") -> str:
    """n demos of T steps at `path`; label(i) -> (task, instruction) of demo i. Returns path."""
    rng = np.random.default_rng(seed)
    with DemoWriter(path, {"env_name": env_name}, valid_every=valid_every) as w:
        for i in range(n):
            task, instruction = label(i)
            t = np.linspace(0, 1, T)[:, None]
            w.add_demo(task=task, instruction=instruction, seed=i,
                       images={c: rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8) for c in ("agentview", "wrist")},
                       state=rng.normal(size=(T, 9)).astype(np.float32),
                       actions=np.clip(np.sin(t * (1 + np.arange(7)) + i), -1, 1).astype(np.float32),
                       object_pos=rng.normal(size=(T, 3, 3)).astype(np.float32), sim_states=np.zeros((T, 4)))
    return path
