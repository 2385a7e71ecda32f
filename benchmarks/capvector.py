"""CapVector reproduction at our scale (docs/CAPVECTOR.md).

The run in docs/CAPVECTOR.md (~1.7 h on a 2-core CPU, step-time measurements included; needs
`vla collect --task Stack --episodes 100 --out data/stack.hdf5`):

    .venv/bin/python benchmarks/capvector.py --pretrain data/pickcolor.hdf5 --pretrain data/stack.hdf5 \
        --extract data/pickcolor.hdf5 --downstream data/lift.hdf5 --downstream-task Lift --seeds 3 \
        --downstream-steps 450 --eval-every 150 --episodes 20 --out benchmarks/results/capvector.json

1. theta_pt: pretrain the tiny model on a multi-task mix (--pretrain files).
2. On the extraction set (--extract, `--extract-demos` demos), finetune twice from theta_pt with the same data, steps
   and seed: plain SFT -> theta_ft; SFT + spatial auxiliary head -> theta_ao. gamma = theta_ao - theta_ft.
   theta_meta = theta_pt + alpha * gamma.
3. Downstream task (held out of pretraining and extraction), `--downstream-demos` demos, four arms x seeds:
   (a) SFT from theta_pt, (b) auxiliary SFT from theta_pt, (c) SFT from theta_meta, (d) SFT + orthogonal penalty
   from theta_meta. Each arm saves checkpoints every `--eval-every` steps; each checkpoint is evaluated in closed
   loop (`--episodes` fixed seeds). Step time is measured per arm (train_summary.json).
Outputs: success-vs-steps PNG, steps to reach --threshold, step time and total compute, mean and spread.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from common import command, write_json

from sim.evaluate import evaluate_policy_dir
from vla.capvector import extract, merge
from vla.config import DataConfig, TrainConfig
from vla.train import Trainer, train


ARM_NAMES = {"a": "(a) SFT from theta_pt", "b": "(b) aux SFT from theta_pt", "c": "(c) SFT from theta_meta",
             "d": "(d) SFT + orth from theta_meta"}


def _at(curve: dict, step: int) -> float:
    """A curve's value at `step`: int keys in the running summary, str keys once it went through JSON."""
    return curve[step] if step in curve else curve[str(step)]


def train_cfg(out: str, paths: list[str], steps: int, seed: int, init: str | None = None, aux: str | None = None,
              capvector: str | None = None, orth_weight: float = 0.0, max_demos: int | None = None,
              save_every: int = 0, lr: float = 5e-4, tasks=None, augment_shift: int = 0) -> TrainConfig:
    # augment_shift 0: as the Lift configs (configs/train/lift_tiny_aux.yaml) train
    return TrainConfig.build(
        model="tiny", data=DataConfig(paths=tuple(paths), max_demos_per_task=max_demos, tasks=tasks,
                                      augment_shift=augment_shift), out_dir=out,
        init=init, aux=aux, aux_weight=0.5, capvector=capvector, orth_weight=orth_weight, steps=steps,
        batch_size=32, lr=lr, warmup_steps=min(50, steps // 10), log_every=25, val_every=0, save_every=save_every,
        keep_last=100, seed=seed,
    )


def run_train(out: str, paths: list[str], steps: int, seed: int, **kw) -> str:
    policy = os.path.join(out, "policy")
    if os.path.exists(os.path.join(policy, "config.json")):
        return policy  # resumable benchmark: finished runs are kept
    cfg = train_cfg(out, paths, steps, seed, **kw)
    train(cfg, progress=False)
    return policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain", action="append", default=[])
    ap.add_argument("--pt", help="use this existing policy as theta_pt instead of pretraining one")
    ap.add_argument("--extract", action="append", required=True)
    ap.add_argument("--downstream", action="append", required=True)
    ap.add_argument("--downstream-task", required=True)
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--extract-steps", type=int, default=400)
    ap.add_argument("--extract-demos", type=int, default=50)
    ap.add_argument("--downstream-steps", type=int, default=600)
    ap.add_argument("--downstream-demos", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--orth-weight", type=float, default=1.0)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--work", default="runs/capvector")
    ap.add_argument("--out", default="benchmarks/results/capvector.json")
    args = ap.parse_args()
    w = args.work
    os.makedirs(w, exist_ok=True)
    t0 = time.time()
    if args.pt:
        pt = args.pt
    elif args.pretrain:
        print("[capvector] 1/3 pretraining theta_pt", flush=True)
        pt = run_train(f"{w}/pt", args.pretrain, args.pretrain_steps, seed=0)
    else:
        ap.error("--pretrain FILE (one or more) or --pt POLICY_DIR is required")
    print("[capvector] 2/3 extraction finetunes (SFT and auxiliary), gamma, theta_meta", flush=True)
    ft = run_train(f"{w}/extract_sft", args.extract, args.extract_steps, seed=0, init=pt, max_demos=args.extract_demos)
    ao = run_train(f"{w}/extract_aux", args.extract, args.extract_steps, seed=0, init=pt, aux="spatial",
                   max_demos=args.extract_demos)
    vec = f"{w}/gamma.safetensors"
    _, meta = extract(ao, ft, out=vec)
    meta_dir = f"{w}/theta_meta"
    if not os.path.exists(os.path.join(meta_dir, "config.json")):
        merge(pt, [vec], [args.alpha], meta_dir)
    print("[capvector] 3/3 downstream arms", flush=True)
    arms = {
        "a": dict(init=pt),
        "b": dict(init=pt, aux="spatial"),
        "c": dict(init=meta_dir),
        "d": dict(init=meta_dir, capvector=vec, orth_weight=args.orth_weight),
    }
    results: dict = {k: {"seeds": {}} for k in arms}
    eval_steps = list(range(args.eval_every, args.downstream_steps + 1, args.eval_every))
    for seed in range(args.seeds):
        for arm, kw in arms.items():
            out = f"{w}/arm_{arm}/seed{seed}"
            run_train(out, args.downstream, args.downstream_steps, seed=seed, max_demos=args.downstream_demos,
                      save_every=args.eval_every, **kw)
            curve = {}
            for s in eval_steps:
                ck = f"{out}/checkpoints/step_{s:06d}"
                cache = f"{ck}/eval_{args.downstream_task}_{args.episodes}.json"
                if os.path.exists(cache):
                    sr = json.load(open(cache))["success_rate"]
                else:
                    r = evaluate_policy_dir(ck, args.downstream_task, episodes=args.episodes, workers=2, videos=0)
                    sr = r["success_rate"]
                    write_json(cache, r, indent=None)  # resume cache: never left half-written
                curve[s] = sr
            summ = json.load(open(f"{out}/train_summary.json"))
            results[arm]["seeds"][seed] = {"curve": curve, "step_time_s": summ["train_seconds"] / summ["steps"]}
            print(f"[capvector] arm {arm} seed {seed}: {curve} step {results[arm]['seeds'][seed]['step_time_s']:.3f}s",
                  flush=True)
    summary = {"command": command(__file__), "seeds": args.seeds,
               "gamma_total_norm": meta["total_norm"], "threshold": args.threshold, "arms": {},
               "downstream_task": args.downstream_task, "eval_steps": eval_steps, "episodes": args.episodes}
    for arm, r in results.items():
        finals = [v["curve"][eval_steps[-1]] for v in r["seeds"].values()]
        reach = []
        for v in r["seeds"].values():
            hit = [s for s in eval_steps if v["curve"][s] >= args.threshold]
            reach.append(hit[0] if hit else None)
        st = [v["step_time_s"] for v in r["seeds"].values()]
        summary["arms"][arm] = {
            "success_mean": float(np.mean(finals)), "success_std": float(np.std(finals)),
            "curve_mean": {s: float(np.mean([v["curve"][s] for v in r["seeds"].values()])) for s in eval_steps},
            # mean success over every evaluated checkpoint: one number for "converges faster and better"
            "success_over_curve_mean": float(np.mean([[v["curve"][s] for s in eval_steps]
                                                      for v in r["seeds"].values()])),
            "success_over_curve_std": float(np.std([np.mean([v["curve"][s] for s in eval_steps])
                                                    for v in r["seeds"].values()])),
            "steps_to_threshold": reach,  # per seed; None = not reached within the budget
            "seeds_reaching_threshold": sum(r is not None for r in reach),
            "steps_to_threshold_median": _median_steps(reach),
            "curve_std": {s: float(np.std([v["curve"][s] for v in r["seeds"].values()])) for s in eval_steps},
            "step_time_s": float(np.mean(st)),
            "total_compute_s": float(np.sum(st) * args.downstream_steps / len(st)),
        }
    st_path = f"{w}/steptime.json"
    if os.path.exists(st_path):
        st_int = json.load(open(st_path))
    else:
        print("[capvector] interleaved step-time measurement", flush=True)
        st_int = interleaved_step_times({a: arms[a] for a in ("a", "b", "d")}, args.downstream,
                                        args.downstream_demos, w)
        write_json(st_path, st_int, indent=None)
    summary["step_time_interleaved_s"] = st_int
    # the figure: SFT + orthogonal penalty against plain SFT, same process, interleaved
    summary["orth_step_time_ratio"] = st_int["d"] / st_int["a"]
    summary["aux_step_time_ratio"] = st_int["b"] / st_int["a"]
    wr_path = f"{w}/steprun.json"
    if os.path.exists(wr_path):
        wr = json.load(open(wr_path))
    else:
        print("[capvector] whole-run step times, (d) and (c) alternated", flush=True)
        wr = alternating_whole_runs(arms["c"], arms["d"], args.downstream, args.downstream_demos, w)
        write_json(wr_path, wr, indent=1)
    summary["whole_run_step_times"] = wr
    summary["orth_step_time_ratio_whole_runs"] = wr["ratio"]
    old_path = f"{w}/steptime_autograd.json"  # the same measurement before the closed-form gradient, if kept
    if os.path.exists(old_path):
        st_old = json.load(open(old_path))
        summary["step_time_interleaved_autograd_s"] = st_old
        summary["orth_step_time_ratio_autograd"] = st_old["d"] / st_old["a"]
    summary["orth_step_time_ratio_runs"] = summary["arms"]["d"]["step_time_s"] / summary["arms"]["c"]["step_time_s"]
    summary["wall_minutes"] = round((time.time() - t0) / 60, 1)
    plot(summary, os.path.join(os.path.dirname(os.path.abspath(args.out)), "capvector.png"))
    write_json(args.out, summary)
    print(json.dumps(summary, indent=2))
    print(markdown_table(summary))


def markdown_table(summary: dict) -> str:
    """The per-arm table of docs/CAPVECTOR.md, from the summary."""
    steps = summary["eval_steps"]
    head = ("| arm | " + " | ".join(f"success @ {s}" for s in steps)
            + f" | mean over the curve | seeds reaching {summary['threshold']:.0%} (steps) | s/step (run) |")
    rows = [head, "|" + "---|" * (len(steps) + 4)]
    for arm, r in summary["arms"].items():
        cells = [f"{_at(r['curve_mean'], s):.2f} ± {_at(r['curve_std'], s):.2f}" for s in steps]
        reach = ", ".join("-" if x is None else str(x) for x in r["steps_to_threshold"])
        rows.append(f"| {ARM_NAMES[arm]} | " + " | ".join(cells)
                    + f" | {r['success_over_curve_mean']:.2f} ± {r['success_over_curve_std']:.2f}"
                    + f" | {r['seeds_reaching_threshold']}/{summary['seeds']} ({reach}) | {r['step_time_s']:.3f} |")
    return "\n".join(rows)


def interleaved_step_times(arms: dict[str, dict], paths: list[str], max_demos: int | None, work: str,
                           rounds: int = 6, steps: int = 10) -> dict[str, float]:
    """Seconds per optimizer step of each arm's objective, measured in one process with the arms interleaved
    (`rounds` x `steps` steps each, after 3 warm-up steps), so that the machine's drift hits every arm alike.
    The arms' own train_summary.json times include checkpointing and whatever else ran in between."""
    import torch

    torch.manual_seed(0)
    trainers = {arm: Trainer(train_cfg(f"{work}/steptime_{arm}", paths, 10_000, 0, max_demos=max_demos, **kw),
                             progress=False) for arm, kw in arms.items()}
    for tr in trainers.values():
        for _ in range(3):
            tr.train_step()
    times: dict[str, list[float]] = {arm: [] for arm in trainers}
    for _ in range(rounds):
        for arm, tr in trainers.items():
            t = time.perf_counter()
            for _ in range(steps):
                tr.train_step()
            times[arm].append((time.perf_counter() - t) / steps)
    return {arm: float(np.median(v)) for arm, v in times.items()}


def alternating_whole_runs(meta_kw: dict, orth_kw: dict, paths: list[str], max_demos: int | None, work: str,
                           steps: int = 200, pairs: int = 2) -> dict:
    """Whole trainings (loop, logging, final save) of plain SFT and SFT + penalty from theta_meta, alternated
    d, c, d, c so drift hits both; seconds per step from each run's train_summary.json."""
    import shutil

    out: dict = {"steps": steps, "runs": []}
    for i in range(pairs):
        for arm, kw in (("d", orth_kw), ("c", meta_kw)):
            d = f"{work}/steprun_{arm}{i}"
            shutil.rmtree(d, ignore_errors=True)
            run_train(d, paths, steps, seed=1, max_demos=max_demos, **kw)
            s = json.load(open(f"{d}/train_summary.json"))
            out["runs"].append({"arm": arm, "s_per_step": s["train_seconds"] / s["steps"]})
    t = {a: sum(r["s_per_step"] for r in out["runs"] if r["arm"] == a) for a in ("c", "d")}
    out["ratio"] = t["d"] / t["c"]
    return out


def _median_steps(reach: list) -> float | None:
    """Median steps to the threshold over seeds, counting a seed that never got there as infinitely slow."""
    vals = [float("inf") if r is None else float(r) for r in reach]
    med = float(np.median(vals)) if vals else float("inf")
    return None if med == float("inf") else med


def plot(summary: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, r in summary["arms"].items():
        xs = [int(s) for s in r["curve_mean"]]
        mean = np.array(list(r["curve_mean"].values()))
        std = np.array([r.get("curve_std", {}).get(s, 0.0) for s in r["curve_mean"]])
        # step time: the interleaved measurement when there is one (c trains exactly like a)
        st = summary.get("step_time_interleaved_s", {}).get("a" if arm == "c" else arm, r["step_time_s"])
        ax.plot(xs, mean, "o-", label=f"{ARM_NAMES[arm]} ({st * 1000:.0f} ms/step)")
        ax.fill_between(xs, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), alpha=0.12)
    ax.set_xlabel("downstream finetuning steps")
    ax.set_ylabel(f"success ({summary['downstream_task']}, {summary['episodes']} episodes, "
                  f"mean of {summary['seeds']} seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
