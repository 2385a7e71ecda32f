"""Temporal ensembling of overlapping action chunks (ACT, Zhao et al. 2023; LeRobot's ACTTemporalEnsembler).

When a new chunk is decoded every r < H steps, each timestep is covered by up to ceil(H / r) chunks decoded from
different frames. The executed action is their weighted mean, w_i = exp(-coeff * i), i = 0 for the oldest chunk that
covers the step (ACT's convention: coeff > 0 favours older predictions, coeff < 0 newer ones, 0 is a plain mean).
The gripper dimension is averaged like the others (as in ACT); its sign is what the env reads.

Used by the control loop (robot_bridge.control_loop: sync mode and the async "ensemble" blend), so local evaluation,
remote evaluation and a robot run ensemble the same way. numpy only.
"""

from __future__ import annotations

import math

import numpy as np

MAX_COEFF = 100.0  # exp(-100) ~ 4e-44: beyond this the weights no longer change what runs


def check_coeff(coeff: float) -> float:
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or not math.isfinite(coeff) \
            or abs(coeff) > MAX_COEFF:
        raise ValueError(f"ensemble coeff: expected a finite float in -{MAX_COEFF:g}..{MAX_COEFF:g}, got {coeff!r}")
    return float(coeff)


class TemporalEnsembler:
    def __init__(self, coeff: float = 0.01):
        self.coeff = check_coeff(coeff)
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start step, chunk (H, D)), oldest first

    def add(self, t: int, chunk: np.ndarray) -> None:
        """Register a chunk whose first action is for step t: chunk[j] is the action for step t + j. chunk: (H, D).

        Steps are asked for in order, never before the newest chunk's start, so chunks that end before t are dropped.
        """
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or len(chunk) == 0:
            raise ValueError(f"chunk: expected a non-empty (H, D) array, got shape {chunk.shape}")
        if self._chunks and t <= self._chunks[-1][0]:
            raise ValueError(f"t: expected a step after the last chunk's ({self._chunks[-1][0]}), got {t}")
        self._chunks = [(s, c) for s, c in self._chunks if t < s + len(c)]
        self._chunks.append((int(t), chunk))

    def action(self, t: int) -> np.ndarray:
        """The ensembled action for step t, (D,) float32: the weighted mean of every chunk that covers t."""
        covering = [c[t - s] for s, c in self._chunks if s <= t < s + len(c)]
        if not covering:
            raise ValueError(f"t: no chunk covers step {t}; add one first")
        x = -self.coeff * np.arange(len(covering), dtype=np.float64)
        w = np.exp(x - x.max())  # shifted so that no weight overflows (coeff < 0); the normalised weights are the same
        return (np.tensordot(w / w.sum(), np.stack(covering), axes=1)).astype(np.float32)
