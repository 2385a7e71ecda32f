"""Chunk decode latency of a policy on real observations (shared by the benchmarks).

Observations come from a demo file (their images, state and instruction), so confidence patterns - and thus the
number of passes of threshold-based decoders - are those the policy meets in closed loop.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch


def training_data(policy_dir: str) -> str | None:
    """The first demo file a policy was trained on (its config.json's training record), or None."""
    cfg = json.load(open(os.path.join(policy_dir, "config.json")))
    paths = (((cfg.get("train") or {}).get("data") or {}).get("paths")) or []
    return paths[0] if paths else None


def demo_observation(demo, t: int) -> dict:
    """Frame t of a vla.dataset.Demo as a policy observation."""
    return {"images": {c: im[t] for c, im in demo.images.items()}, "state": demo.state[t],
            "instruction": demo.instruction}


def sample_observations(dataset: str, n: int = 100, seed: int = 0, task: str | None = None) -> list[dict]:
    from vla.dataset import load_demos

    demos = load_demos(dataset, split=None, tasks=[task] if task else None)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        d = demos[int(rng.integers(len(demos)))]
        t = int(rng.integers(len(d)))
        out.append(demo_observation(d, t))
    return out


def save_observations(path: str, observations: list[dict]) -> None:
    """Observations (same cameras, state size) -> one compressed .npz (written to a temporary name, then renamed):
    images_<camera> (N, H, W, 3) uint8, state (N, S) float32, instruction (N,) str."""
    cams = sorted(observations[0]["images"])
    arrays = {f"images_{c}": np.stack([np.asarray(o["images"][c], np.uint8) for o in observations]) for c in cams}
    arrays["state"] = np.stack([np.asarray(o["state"], np.float32) for o in observations])
    arrays["instruction"] = np.array([o["instruction"] for o in observations])
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_observations(path: str) -> list[dict]:
    """The inverse of save_observations."""
    with np.load(path, allow_pickle=False) as z:
        cams = [k[len("images_"):] for k in z.files if k.startswith("images_")]
        if not cams or "state" not in z.files or "instruction" not in z.files:
            raise ValueError(f"{path}: expected images_<camera>, state and instruction arrays, got {z.files}")
        images = {c: z[f"images_{c}"] for c in cams}
        state, instr = z["state"], z["instruction"]
    return [{"images": {c: images[c][i] for c in cams}, "state": state[i], "instruction": str(instr[i])}
            for i in range(len(state))]


def measure(policy, observations: list[dict], warmup: int = 5) -> dict:
    """Per-chunk wall time of policy.infer (prefix + decode + detokenize), batch 1."""
    for o in observations[:warmup]:
        policy.infer(o)
    lat, nfe, tokens = [], [], []
    for o in observations:
        policy.reset()
        t0 = time.perf_counter()
        r = policy.infer(o)
        lat.append((time.perf_counter() - t0) * 1e3)
        nfe.append(r["timing"]["nfe"])
        tokens.append(r["timing"]["tokens"])
    lat = np.array(lat)
    return {
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "latency_ms_mean": float(lat.mean()),
        "nfe": float(np.mean(nfe)),
        "tokens_per_chunk": float(np.mean(tokens)),
        "tokens_per_s": float(np.sum(tokens) / (lat.sum() / 1e3)),
        "n": len(lat),
        "threads": torch.get_num_threads(),
    }
