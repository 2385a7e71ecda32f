"""Fast-dVLA decode benchmark, like the paper's Table 1: every decoder on the same tasks, one run, one machine.

    .venv/bin/python benchmarks/decode.py --teacher Lift=runs/lift/policy --student Lift=runs/lift_distill/policy \
        --teacher PickColor=... --student PickColor=... --episodes 50 --out benchmarks/results/decode.json

Rows per task: parallel (bidirectional teacher, K passes), parallel-cached (teacher, stale action KV),
block and pipelined (distilled block-causal student), pipelined with --start-blocks k (k blocks in flight from the
first pass), pipelined with --decode-steps m (m = the executed steps), and both together.
Latency/tokens/NFE: batch 1 over observations from the task's demos; success: closed-loop episodes (fixed seeds).
On a machine without the simulator or the demo files (a lent GPU): --skip-success --obs Task=file.npz (written by
`benchmarks/gpu_card.py prepare`) --device cuda.
distill_steps_fraction = the student's distillation steps / the teacher's training steps (read from the checkpoints'
training records); distill_reaches_teacher says whether, at that many steps, the student's pipelined success is
within 2 points of the teacher's.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from common import command, load_observations, measure, sample_observations, training_data, write_json

from vla.policy import Policy


def _kv(items: list[str]) -> dict[str, str]:
    return dict(i.split("=", 1) for i in items)


def _train_info(policy_dir: str) -> dict:
    cfg = json.load(open(os.path.join(policy_dir, "config.json")))
    return cfg.get("train") or {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", action="append", required=True, help="Task=bidirectional policy dir")
    ap.add_argument("--student", action="append", required=True, help="Task=distilled block-causal policy dir")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--k", type=int, default=None, help="parallel decoder passes (default: the teacher's config)")
    ap.add_argument("--decode-steps", type=int, default=None,
                    help="m for the decode-only-what-runs row (default: replan)")
    ap.add_argument("--start-blocks", type=int, default=None,
                    help="also a pipelined row with this many blocks in flight at the first pass")
    ap.add_argument("--latency-obs", type=int, default=100)
    ap.add_argument("--skip-success", action="store_true", help="latency rows only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the latency rows")
    ap.add_argument("--device", default="cpu", help="torch device of the policies (cuda on a GPU machine)")
    ap.add_argument("--obs", action="append", default=[],
                    help="Task=observations .npz (benchmarks/gpu_card.py prepare) instead of the training demos")
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teachers, students, obs_files = _kv(args.teacher), _kv(args.student), _kv(args.obs)
    if not args.skip_success:
        from sim.evaluate import evaluate_policy_dir  # the simulator: not needed for latency rows
    rows = []
    eval_root = os.path.splitext(os.path.abspath(args.out))[0] + "_eval"  # decode.json -> decode_eval/
    for task, tdir in teachers.items():
        sdir = students[task]
        if task in obs_files:
            obs = load_observations(obs_files[task])[: args.latency_obs]
        else:
            obs = sample_observations(training_data(tdir), n=args.latency_obs, task=task)
        tpol = Policy.from_pretrained(tdir)
        k = args.k or tpol.decode_cfg.steps
        replan = tpol.n_action_steps
        m = args.decode_steps or replan
        variants = [
            ("parallel", tdir, {"decoder": "parallel", "steps": k}),
            ("parallel-cached", tdir, {"decoder": "parallel-cached", "steps": k}),
            ("block", sdir, {"decoder": "block"}),
            ("pipelined", sdir, {"decoder": "pipelined"}),
        ]
        sb = args.start_blocks
        if sb:
            variants.append((f"pipelined+start_blocks{sb}", sdir, {"decoder": "pipelined", "start_blocks": sb}))
        if m < tpol.cfg.chunk_size:
            variants.append((f"pipelined+decode_steps{m}", sdir, {"decoder": "pipelined", "decode_steps": m}))
            if sb:
                variants.append((f"pipelined+start_blocks{sb}+decode_steps{m}", sdir,
                                 {"decoder": "pipelined", "start_blocks": sb, "decode_steps": m}))
        for name, pdir, dec in variants:
            pol = Policy.from_pretrained(pdir, decode=dec, device=args.device)
            lat = measure(pol, obs)
            row = {"decoder": name, "task": task, "policy": pdir, "decode": dec, **lat}
            if not args.skip_success:
                s = evaluate_policy_dir(pdir, task, episodes=args.episodes, decode=dec, workers=args.workers,
                                        videos=1, out_dir=os.path.join(eval_root, name.replace("+", "_")),
                                        replan_every=replan)
                row["success"] = s["success_rate"]
                row["episodes"] = s["episodes"]
            rows.append(row)
            print(json.dumps({k2: row[k2] for k2 in row if k2 not in ("policy",)}), flush=True)
    base = {r["task"]: r for r in rows if r["decoder"] == "parallel"}
    for r in rows:
        r["speedup_tokens_per_s"] = r["tokens_per_s"] / base[r["task"]]["tokens_per_s"]
        r["speedup_latency"] = base[r["task"]]["latency_ms_p50"] / r["latency_ms_p50"]
    pip = [r for r in rows if r["decoder"] == "pipelined"]
    res = {
        "command": command(__file__),
        "rows": rows,
        "speedup_pipelined_vs_parallel": sum(r["speedup_tokens_per_s"] for r in pip) / len(pip),
        "pipelined_latency_ms_p50": max(r["latency_ms_p50"] for r in pip),
    }
    fractions = []
    for task, tdir in teachers.items():
        t_steps, s_steps = _train_info(tdir).get("steps"), _train_info(students[task]).get("steps")
        if t_steps and s_steps:
            fractions.append(s_steps / t_steps)
    if fractions:
        res["distill_steps_fraction"] = max(fractions)
    if not args.skip_success:
        gaps = [100 * (base[r["task"]]["success"] - r["success"]) for r in pip]
        res["success_gap_points"] = max(gaps)
        res["distill_reaches_teacher"] = bool(max(gaps) <= 2.0)
    if args.device != "cpu":
        res["device"] = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    write_json(args.out, res)
    print(format_table(rows))


def format_table(rows: list[dict]) -> str:
    head = f"{'task':<10}{'decoder':<26}{'success':>8}{'tok/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'NFE':>6}{'speedup':>8}"
    lines = [head]
    for r in rows:
        succ = f"{r['success']:.0%}" if "success" in r else "-"
        lines.append(f"{r['task']:<10}{r['decoder']:<26}{succ:>8}{r['tokens_per_s']:>9.0f}{r['latency_ms_p50']:>8.1f}"
                     f"{r['latency_ms_p99']:>8.1f}{r['nfe']:>6.1f}{r['speedup_tokens_per_s']:>7.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
