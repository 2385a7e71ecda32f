"""Interleaved A/B of decode-path variants in one process: each observation is decoded by every variant in turn
(rotating the order), so drift of a shared VM hits all variants alike.

    python benchmarks/decode_ab.py --policy Lift=runs/lift_distill/policy \\
        --old-fast-layers /path/to/old/vla/fast_layers.py

Variants: `old` (the same policy run through an earlier vla/fast_layers.py, loaded from a file) and `new` (this
tree's). Writes p50 per variant, the per-observation median ratio old/new and whether the actions are identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import numpy as np
import torch
from common import command, sample_observations, training_data, write_json

from vla.policy import Policy


def _load_fast_layers(path: str):
    spec = importlib.util.spec_from_file_location("old_fast_layers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _variant(pdir: str, decode: dict, fast_cls=None) -> Policy:
    pol = Policy.from_pretrained(pdir, decode=decode)
    if fast_cls is not None:  # DVLA.fast_stack() keeps its FastStack here
        pol.model.__dict__["_fast"] = fast_cls(pol.model.backbone)
    return pol


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", action="append", required=True, help="Task=policy dir")
    ap.add_argument("--decoder", action="append", default=None, help="decode config as JSON (repeatable)")
    ap.add_argument("--old-fast-layers", required=True, help="path of the earlier vla/fast_layers.py")
    ap.add_argument("--obs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/decode_ab.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old_fl = _load_fast_layers(args.old_fast_layers)
    decoders = [json.loads(d) for d in (args.decoder or ['{"decoder": "pipelined"}'])]
    rows = []
    for item in args.policy:
        task, pdir = item.split("=", 1)
        obs = sample_observations(training_data(pdir), n=args.obs, task=task)
        for dec in decoders:
            pols = {"old": _variant(pdir, dec, old_fl.FastStack), "new": _variant(pdir, dec)}
            names = list(pols)
            for p in pols.values():
                for o in obs[:5]:
                    p.infer(o)
            lat = {n: [] for n in names}
            same = True
            for i, o in enumerate(obs):
                order = names if i % 2 == 0 else names[::-1]
                acts = {}
                for n in order:
                    pols[n].reset()
                    t0 = time.perf_counter()
                    acts[n] = pols[n].infer(o)["actions"]
                    lat[n].append((time.perf_counter() - t0) * 1e3)
                same &= all(np.array_equal(acts[n], acts["old"]) for n in names)
            row = {"task": task, "decode": dec, "obs": len(obs), "threads": args.threads,
                   "p50_ms": {n: float(np.median(v)) for n, v in lat.items()},
                   "median_ratio_old_over_new": float(np.median(np.array(lat["old"]) / np.array(lat["new"]))),
                   "actions_identical": bool(same)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = {"command": command(__file__), "rows": rows}
    write_json(args.out, res)


if __name__ == "__main__":
    main()
