"""Pipelined-decoder threshold sweep: NFE and latency per setting, then closed-loop success for the chosen ones.

    python benchmarks/pipeline_sweep.py --policy runs/lift_distill/policy --task Lift --episodes 50 \
        --out benchmarks/results/pipeline_sweep.json

On a CPU a pass costs about the same for 7 or 56 tokens, so the pipelined decoder beats the parallel one only by
running fewer passes. Fewer passes come from lower thresholds (reveal more per pass, start the next block earlier),
at some risk to success; this measures both, one setting per row, same model, same observations.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import torch
from common import command, measure, sample_observations, training_data, write_json

from sim.evaluate import evaluate_policy_dir
from vla.policy import Policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True, help="block-causal policy directory")
    ap.add_argument("--task", required=True)
    ap.add_argument("--tau-add", default="0.5,0.2")
    ap.add_argument("--tau-act", default="0.7,0.4")
    ap.add_argument("--tau-conf", default="0.5,0.3,0.1")
    ap.add_argument("--n", default="2,4")
    ap.add_argument("--latency-obs", type=int, default=60)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--evaluate", type=int, default=3, help="closed-loop success for this many lowest-NFE settings")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/pipeline_sweep.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    obs = sample_observations(training_data(args.policy), n=args.latency_obs, task=args.task)
    floats = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    rows = []
    grid = itertools.product(floats(args.tau_add), floats(args.tau_act), floats(args.tau_conf),
                             [int(x) for x in args.n.split(",")])
    for tau_add, tau_act, tau_conf, n in grid:
        dec = {"decoder": "pipelined", "tau_add": tau_add, "tau_act": tau_act, "tau_conf": tau_conf, "n": n}
        lat = measure(Policy.from_pretrained(args.policy, decode=dec), obs)
        rows.append({"decode": dec, **lat})
        print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: (r["nfe"], r["latency_ms_p50"]))
    default = {"tau_add": 0.5, "tau_act": 0.7, "tau_conf": 0.5, "n": 2}
    chosen = rows[: args.evaluate] + [r for r in rows if all(r["decode"][k] == v for k, v in default.items())]
    eval_root = os.path.join(os.path.dirname(os.path.abspath(args.out)), "pipeline_sweep_eval")
    for i, r in enumerate(chosen):
        if "success" in r:
            continue
        s = evaluate_policy_dir(args.policy, args.task, episodes=args.episodes, decode=r["decode"],
                                workers=args.workers, videos=0, out_dir=os.path.join(eval_root, f"setting{i}"))
        r["success"], r["episodes"] = s["success_rate"], s["episodes"]
        print(json.dumps(r), flush=True)
    res = {"command": command(__file__), "policy": args.policy,
           "task": args.task, "rows": rows}
    write_json(args.out, res)
    print(f"{'tau_add':>8}{'tau_act':>8}{'tau_conf':>9}{'n':>3}{'NFE':>6}{'p50 ms':>8}{'success':>9}")
    for r in rows:
        d = r["decode"]
        succ = f"{r['success']:.0%}" if "success" in r else "-"
        print(f"{d['tau_add']:>8}{d['tau_act']:>8}{d['tau_conf']:>9}{d['n']:>3}{r['nfe']:>6.1f}{r['latency_ms_p50']:>8.1f}{succ:>9}")


if __name__ == "__main__":
    main()
