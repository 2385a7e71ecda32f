"""Temporal ensembling of overlapping action chunks (ACT, Zhao et al. 2023; LeRobot's ACTTemporalEnsembler).

When a new chunk is decoded every r < H steps, each timestep is covered by up to ceil(H / r) chunks decoded from
different frames. The executed action is their weighted mean, w_i = exp(-coeff * i), i = 0 for the oldest chunk that
covers the step (ACT's convention: coeff > 0 favours older predictions, coeff < 0 newer ones, 0 is a plain mean).
The gripper dimension is averaged like the others (as in ACT); its sign is what the env reads.
"""

from __future__ import annotations

import math

import numpy as np


def check_coeff(coeff: float) -> float:
    if not isinstance(coeff, (int, float)) or not math.isfinite(coeff):
        raise ValueError(f"ensemble coeff: expected a finite float, got {coeff!r}")
    return float(coeff)


class TemporalEnsembler:
    def __init__(self, coeff: float = 0.01):
        self.coeff = check_coeff(coeff)
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start step, chunk (H, D)), oldest first

    def add(self, t: int, chunk: np.ndarray) -> None:
        """Register a chunk decoded at step t: chunk[j] is the action for step t + j. chunk: (H, D)."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or len(chunk) == 0:
            raise ValueError(f"chunk: expected a non-empty (H, D) array, got shape {chunk.shape}")
        if self._chunks and t <= self._chunks[-1][0]:
            raise ValueError(f"t: expected a step after the last chunk's ({self._chunks[-1][0]}), got {t}")
        self._chunks.append((int(t), chunk))

    def action(self, t: int) -> np.ndarray:
        """The ensembled action for step t, (D,) float32. Chunks that no longer reach t are dropped."""
        self._chunks = [(s, c) for s, c in self._chunks if t < s + len(c)]
        covering = [c[t - s] for s, c in self._chunks if s <= t]
        if not covering:
            raise ValueError(f"t: no chunk covers step {t}; add one first")
        w = np.exp(-self.coeff * np.arange(len(covering), dtype=np.float64))
        return (np.tensordot(w / w.sum(), np.stack(covering), axes=1)).astype(np.float32)
