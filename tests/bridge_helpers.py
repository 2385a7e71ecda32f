"""Shared pieces of the robot_bridge tests: observations, a slow policy wrapper, a free port (robot_bridge.net), waiting
for servers."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from robot_bridge.net import free_port  # noqa: F401  (the tests import it from here)

torch.set_num_threads(1)  # 2 shared cores: oversubscribed torch threads make inference 30x slower

CAMERAS = ("agentview", "wrist")


def make_obs(rng: np.random.Generator, size: int = 64, instruction: str = "lift the cube") -> dict:
    return {
        "images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in CAMERAS},
        "state": (rng.normal(size=9) * 0.1).astype(np.float32),
        "instruction": instruction,
    }


class SlowPolicy:
    """A real policy whose infer_batch first sleeps: delays[i] seconds on the i-th call (last value repeats)."""

    def __init__(self, policy, delays):
        self.policy = policy
        self.delays = list(delays)
        self.calls = 0
        self.lock = threading.Lock()

    @property
    def metadata(self):
        return self.policy.metadata

    def reset(self):
        self.policy.reset()

    def infer_batch(self, obs_list):
        with self.lock:
            d = self.delays[min(self.calls, len(self.delays) - 1)]
            self.calls += 1
        time.sleep(d)
        return self.policy.infer_batch(obs_list)

    def infer(self, obs):
        return self.infer_batch([obs])[0]


def wait_up(ready, procs=(), timeout_s: float = 120) -> None:
    """Poll ready() (a TimeoutError or OSError counts as not yet) until it is true; a process in `procs` that exits
    first fails the test with the end of its output."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args} exited: {p.stdout.read()[-2000:] if p.stdout else ''}")
        try:
            if ready():
                return
        except (TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError("servers did not come up")
