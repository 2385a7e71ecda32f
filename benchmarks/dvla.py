"""Discrete-diffusion VLA benchmarks: closed-loop success, chunk decode latency for K = 4, 8, 12, training samples/s.

    .venv/bin/python benchmarks/dvla.py --policy Lift=runs/lift/policy --policy PickColor=runs/pickcolor/policy \
        --episodes 50 --out benchmarks/results/dvla.json

The five-task policy has its own script, end to end: benchmarks/multitask.py.

Success comes from `vla eval` semantics (fixed seeds, replan every n_action_steps). Decode latency is measured on
observations from the demo files, batch 1, one process, all cores. Training throughput and minutes come from the
runs' train_summary.json (written by `vla train`).
"""

from __future__ import annotations

import argparse
import json
import os

from common import command, measure, sample_observations, training_data, write_json

from sim.evaluate import evaluate_policy_dir
from vla.policy import Policy


def _summary(policy_dir: str) -> dict:
    """The run's train_summary.json next to its policy dir, or the copy `vla export` keeps in config.json."""
    p = os.path.join(os.path.dirname(policy_dir.rstrip("/")), "train_summary.json")
    if os.path.exists(p):
        return json.load(open(p))
    return json.load(open(os.path.join(policy_dir, "config.json"))).get("train_summary") or {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", action="append", default=[], help="Task=policy_dir (single-task models)")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency-obs", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/dvla.json")
    ap.add_argument("--latency-only", action="store_true",
                    help="re-measure decode latency only; keep the success figures already in --out")
    ap.add_argument("--threads", type=int, help="torch threads for the latency measurement")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res: dict = {"command": command(__file__), "preset": "tiny", "tasks": {}}
    if args.latency_only:
        prev = json.load(open(args.out))
        res = {**prev, "latency_command": res["command"]}
    eval_root = os.path.join(os.path.dirname(os.path.abspath(args.out)), "dvla_eval")
    first_policy = None
    train_minutes = []
    for item in args.policy:
        task, pdir = item.split("=", 1)
        first_policy = first_policy or pdir
        if args.latency_only:
            continue
        s = evaluate_policy_dir(pdir, task, episodes=args.episodes, workers=args.workers, videos=1,
                                out_dir=os.path.join(eval_root, task))
        summ = _summary(pdir)
        res["tasks"][task] = {"success": s["success_rate"], "episodes": s["episodes"], "mean_length": s["mean_length"],
                              "policy": pdir, "train_minutes": round(summ.get("train_seconds", 0) / 60, 1),
                              "train_steps": summ.get("steps")}
        train_minutes.append(summ.get("train_seconds", 0) / 60)
        print(task, res["tasks"][task], flush=True)
    if train_minutes:  # empty with --latency-only: the earlier figure stays
        res["train_minutes"] = round(max(train_minutes), 1)
    # decode latency for K = 4, 8, 12 (parallel decoder, batch 1)
    if first_policy:
        data = training_data(first_policy)
        obs = sample_observations(data, n=args.latency_obs)
        res["decode_ms_p50"], res["decode_ms_p99"], res["tokens_per_s"] = {}, {}, {}
        for k in (4, 8, 12):
            pol = Policy.from_pretrained(first_policy, decode={"decoder": "parallel", "steps": k})
            m = measure(pol, obs)
            res["decode_ms_p50"][f"K{k}"] = m["latency_ms_p50"]
            res["decode_ms_p99"][f"K{k}"] = m["latency_ms_p99"]
            res["tokens_per_s"][f"K{k}"] = m["tokens_per_s"]
            print("K", k, m, flush=True)
        summ = _summary(first_policy)
        res["train_samples_per_s"] = summ.get("samples_per_s")
        res["demos_per_task"] = None
        try:
            import h5py

            with h5py.File(data) as f:
                res["demos_per_task"] = len(f["data"].keys())
        except Exception:
            pass
    write_json(args.out, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
