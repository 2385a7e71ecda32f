"""Statistics of demonstration arrays, in the two forms this project writes.

    compute_stats / dataset_stats    per-dimension summaries of the training demos (the normalizers and the
                                     checkpoint's statistics are made from them)
    feature_stats / image_stats      LeRobot's per-feature statistics of one episode (min, max, mean, std, count and
                                     the QUANTILES), and merge_stats, its aggregation over episodes (meta/stats.json)
"""

from __future__ import annotations

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's: q01, q10, q50, q90, q99


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


def dataset_stats(demos: list) -> dict[str, dict[str, list[float]]]:
    """compute_stats of the demos' (vla.features.Demo) actions, state and object positions."""
    return {
        "actions": compute_stats([d.actions for d in demos]),
        "state": compute_stats([d.state for d in demos]),
        "object_pos": compute_stats([d.object_pos.reshape(len(d), -1) for d in demos]),
    }


def feature_stats(x: np.ndarray, axis=0) -> dict:
    """LeRobot's statistics of one feature over rows: min, max, mean, std, count and the QUANTILES (as q01, ...)."""
    x = x.astype(np.float64)
    out = {"min": x.min(axis), "max": x.max(axis), "mean": x.mean(axis), "std": x.std(axis),
           "count": np.array([x.shape[0]])}
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(x, q, axis=axis)
    return out


def image_stats(frames: np.ndarray) -> dict:
    """uint8 (T, H, W, 3) -> LeRobot's image stats: per channel, in [0, 1], shape (3, 1, 1), over a sample of about
    200k pixels; the count is of frames, as LeRobot counts them."""
    x = frames.reshape(-1, 3)[:: max(1, frames.shape[0] * frames.shape[1] * frames.shape[2] // 200_000)] / 255.0
    s = feature_stats(x)
    return {k: v.reshape(3, 1, 1) for k, v in s.items() if k != "count"} | {"count": np.array([frames.shape[0]])}


def merge_stats(parts: list[dict]) -> dict:
    """Episode stats -> dataset stats: min/max exact, mean/std pooled by count, quantiles count-weighted (as LeRobot
    aggregates them)."""
    n = np.array([float(p["count"][0]) for p in parts])
    w = n / n.sum()
    mean = sum(wi * p["mean"] for wi, p in zip(w, parts))
    var = sum(wi * (p["std"] ** 2 + (p["mean"] - mean) ** 2) for wi, p in zip(w, parts))
    out = {"min": np.min([p["min"] for p in parts], 0), "max": np.max([p["max"] for p in parts], 0), "mean": mean,
           "std": np.sqrt(var), "count": np.array([int(n.sum())])}
    for k in parts[0]:
        if k.startswith("q"):
            out[k] = sum(wi * p[k] for wi, p in zip(w, parts))
    return out
