"""State normalization (actions normalize inside vla.tokenizers.ActionTokenizer). One symmetric place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StateNormalizer:
    low: np.ndarray  # (S,) q01
    high: np.ndarray  # (S,) q99

    def __post_init__(self):
        self.low = np.asarray(self.low, dtype=np.float32)
        self.high = np.asarray(self.high, dtype=np.float32)
        self.high = np.where(self.high - self.low < 1e-6, self.low + 1e-6, self.high).astype(np.float32)

    def normalize(self, state: np.ndarray) -> np.ndarray:
        """(..., S) -> roughly [-1, 1] (q01 -> -1, q99 -> 1), clipped to [-3, 3]."""
        x = 2.0 * (np.asarray(state, dtype=np.float32) - self.low) / (self.high - self.low) - 1.0
        return np.clip(x, -3.0, 3.0).astype(np.float32)

    def to_json(self) -> dict:
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "StateNormalizer":
        return cls(low=np.array(d["low"]), high=np.array(d["high"]))

    @classmethod
    def from_stats(cls, stats: dict) -> "StateNormalizer":
        return cls(low=np.array(stats["q01"]), high=np.array(stats["q99"]))
