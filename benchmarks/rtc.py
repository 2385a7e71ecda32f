"""Real-time chunking under inference delay (issue 26): success and smoothness of the async control loop when each
chunk arrives d control steps late, for each way of taking the new chunk over.

    python benchmarks/rtc.py --policy Lift=vla/pretrained/lift_h16_fast \
        --prefix-policy Lift=vla/pretrained/lift_h16_fast_prefix --episodes 50 --delays 2 4 6
        # writes benchmarks/results/rtc.json and rtc.png; cells already there (same task, strategy, delay, episodes,
        # policy) are kept: an interrupted run resumes (--fresh starts over)

Each cell's policy runs behind its own `vla serve` process on loopback (--workers cells at a time, each with its own
server and simulator process);
the async loop runs it in MuJoCo at 20 Hz with `--inject-delay-ms` = d x 50 ms added to every chunk, on top of the
model's own latency (reported: `latency_ms_p50`, and the loop's own delay estimate `rtc_delay_steps_mean`). With
chunks of H steps and one request in flight, a round trip of d steps yields H - d new actions, so a total delay
beyond H/2 starves every strategy. Strategies, same seeds for all:

  naive      blend none: switch to the new chunk when it arrives (its first steps, already past, dropped)
  linear     cross-fade old and new chunk over their overlap
  ensemble   ACT temporal ensembling: each step the weighted mean of every chunk that predicted it
  rtc        token inpainting: the d actions that will run meanwhile are sent as prefix_actions and kept
  rtc_train  rtc with a student trained with prefix conditioning (--prefix-policy)
  sync       pause: the simulator waits for every chunk (no clock; the delay costs time, not success): one cell per task

Smoothness: |a_t - a_(t-1)| (mean over the translation dims) of the executed actions, at chunk switches (the step
where a new chunk's first action runs) and within chunks; jump_ratio = switch mean / within mean (1 = seamless).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from common import ROOT, VlaServe, command, write_json

STRATEGIES = ["sync", "naive", "linear", "ensemble", "rtc", "rtc_train"]
BLEND = {"naive": "none", "linear": "linear", "ensemble": "ensemble", "rtc": "inpaint", "rtc_train": "inpaint"}


def smoothness(out_dir: str, task: str) -> dict:
    """From the per-episode JSONL (actions, sources): mean |delta a| (dims 0..2) at chunk switches, within chunks."""
    allj, sw, within = [], [], []
    with open(os.path.join(out_dir, f"episodes_{task}.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            a = np.asarray(r.get("actions") or [], np.float64)
            src = r.get("sources") or []
            if len(a) < 2:
                continue
            d = np.abs(np.diff(a[:, :3], axis=0)).mean(axis=1)  # (T-1,): d[i - 1] is the jump into step i
            allj.extend(d.tolist())
            for i in range(1, min(len(src), len(a))):
                if src[i] < 0 or src[i - 1] < 0:
                    continue  # a hold: neither a switch nor a step of one chunk
                (sw if src[i] != src[i - 1] else within).append(d[i - 1])
    sw_m = float(np.mean(sw)) if sw else None
    in_m = float(np.mean(within)) if within else None
    return {"jerk_mean": float(np.mean(allj)) if allj else None, "jerk_at_switch_mean": sw_m,
            "jerk_within_mean": in_m, "switches": len(sw),
            "jump_ratio": round(sw_m / in_m, 3) if sw_m is not None and in_m else None}


def _pairs(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise SystemExit(f"{flag} {item!r}: expected TASK=DIR")
        out[task] = path
    return out


def run_cell(task: str, d: int, strat: str, pol: str, episodes: int, rate: float, threads: int, work: str,
             replan: int | None = None) -> dict:
    """One cell: serve `pol`, run `episodes` episodes of `task` in the loop with `strat` at `d` injected steps
    (sync: a chunk every `replan` steps, default the server's n_action_steps)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from sim.remote_eval import evaluate_server

    out = os.path.join(work, task, f"{strat}_d{d}")
    mode = "sync" if strat == "sync" else "async"
    t0 = time.time()
    with VlaServe(pol, threads) as srv:
        s = evaluate_server(srv.address, task, episodes=episodes, videos=0, out_dir=out, mode=mode, rate_hz=rate,
                            replan_every=replan if mode == "sync" else None,
                            keep_actions=True, progress=False, blend=BLEND.get(strat, "none"),
                            inject_delay_ms=d * 1e3 / rate if mode == "async" else 0.0)
        chunk = srv.metadata["chunk_size"]
    cell = {"task": task, "strategy": strat, "delay_steps": d, "policy": pol, "episodes": s["episodes"],
            "success": s["success_rate"], "mean_len": s["mean_length"], "chunk_size": chunk,
            **({"replan_every": s.get("replan_every"), "replan_arg": replan} if mode == "sync" else {}),
            "seconds": round(time.time() - t0, 1), **smoothness(out, task)}
    if mode == "async":
        loop = s.get("loop", {})
        cell.update({"blend_used": s.get("blend_used"),
                     **{k: loop.get(k) for k in ("latency_ms_p50", "starvation_events", "stale_dropped", "overruns",
                                                 "rtc_delay_steps_mean", "tick_hz")}})
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", action="append", default=[], metavar="TASK=DIR",
                    help="the policy per task (default Lift=vla/pretrained/lift_tiny_fast); its tasks are the cells'")
    ap.add_argument("--prefix-policy", action="append", default=[], metavar="TASK=DIR",
                    help="a student trained with prefix conditioning, for the rtc_train cells of that task")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--delays", type=int, nargs="+", default=[2, 4, 6], help="injected delay in control steps")
    ap.add_argument("--threads", type=int, default=1, help="the policy servers' torch threads")
    ap.add_argument("--workers", type=int, default=2,
                    help="cells run at once, each with its own server and simulator process (the loop is paced by "
                         "the 20 Hz clock, so two share the two cores)")
    ap.add_argument("--strategies", nargs="+", default=["naive", "ensemble", "rtc", "rtc_train"],
                    choices=sorted(BLEND))
    ap.add_argument("--sync-replan", action="append", default=[], metavar="TASK=N",
                    help="actions executed per chunk in a task's sync cell (default: the server's n_action_steps)")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--fresh", action="store_true", help="ignore the cells already in --out")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/rtc.json"))
    args = ap.parse_args()

    policies = _pairs(args.policy, "--policy") or {"Lift": "vla/pretrained/lift_tiny_fast"}
    prefix_policies = _pairs(args.prefix_policy, "--prefix-policy")
    sync_replan = {t: int(n) for t, n in _pairs(args.sync_replan, "--sync-replan").items()}
    prev, old = {}, {}
    if os.path.exists(args.out) and not args.fresh:
        with open(args.out) as f:
            old = json.load(f)
        prev = {(c.get("task"), c["strategy"], c["delay_steps"], c.get("episodes"), c.get("policy"),
                 c.get("replan_arg")): c for c in old.get("cells", [])}
    cmd_line = command(__file__)
    # several invocations may fill one file (a task per run): each one's command is kept, and so are the cells of tasks
    # this one does not run
    res: dict = {"command": cmd_line, "commands": [c for c in old.get("commands", []) if c != cmd_line] + [cmd_line],
                 "rate_hz": args.rate, "delays": args.delays, "workers": args.workers,
                 "cells": [c for c in old.get("cells", []) if c.get("task") not in policies]}
    work = os.path.join(ROOT, "eval", "rtc")
    todo = []
    for task, policy in policies.items():
        cells = [(0, "sync", policy)]
        for d in args.delays:
            for strat in args.strategies:
                if strat == "rtc_train":
                    if task in prefix_policies:
                        cells.append((d, strat, prefix_policies[task]))
                else:
                    cells.append((d, strat, policy))
        for d, strat, pol in cells:
            key = (task, strat, d, args.episodes, pol, sync_replan.get(task) if strat == "sync" else None)
            if key in prev:
                res["cells"].append(prev[key])
            else:
                todo.append((task, d, strat, pol))
    t_all = time.time()
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(run_cell, task, d, strat, pol, args.episodes, args.rate, args.threads, work,
                            sync_replan.get(task) if strat == "sync" else None):
                (task, strat, d) for task, d, strat, pol in todo}
        print(f"[rtc] {len(todo)} cells to run ({len(res['cells'])} kept), {args.workers} at a time", flush=True)
        for fut in as_completed(futs):
            task, strat, d = futs[fut]
            try:
                cell = fut.result()
            except Exception as e:  # noqa: BLE001 - one failed cell keeps the others
                print(f"[rtc] {task} {strat} d={d} FAILED: {type(e).__name__}: {e}", flush=True)
                continue
            res["cells"].append(cell)
            print(f"[rtc] {time.time() - t_all:.0f} s " + json.dumps(cell), flush=True)
            write_json(args.out, res)  # after every cell: an interrupted run resumes from here
    tasks = list(dict.fromkeys([c["task"] for c in old.get("cells", [])] + list(policies)))
    res["cells"].sort(key=lambda c: (tasks.index(c["task"]),
                                     c["delay_steps"], STRATEGIES.index(c["strategy"])))
    res["seconds"] = round(time.time() - t_all, 1)
    write_json(args.out, res)
    plot(res, args.out.replace(".json", ".png"))


def plot(res: dict, path: str) -> None:
    """Per task: success and jump_ratio against the injected delay, one line per strategy (sync: dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(c["task"] for c in res["cells"]))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.6 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        cells = [c for c in res["cells"] if c["task"] == task]
        for s in sorted({c["strategy"] for c in cells if c["strategy"] != "sync"}):
            cs = sorted((c for c in cells if c["strategy"] == s), key=lambda c: c["delay_steps"])
            x = [c["delay_steps"] for c in cs]
            row[0].plot(x, [c["success"] for c in cs], "o-", label=s)
            row[1].plot(x, [c["jump_ratio"] or 0 for c in cs], "o-", label=s)
        for c in cells:
            if c["strategy"] == "sync":
                row[0].axhline(c["success"], color="gray", ls="--", label="sync (pause)")
                if c["jump_ratio"]:
                    row[1].axhline(c["jump_ratio"], color="gray", ls="--", label="sync (pause)")
        eps = sorted({c["episodes"] for c in cells})
        row[0].set(xlabel="injected delay (control steps at 20 Hz)", ylabel="success", ylim=(0, 1.05),
                   title=f"{task}, {'/'.join(map(str, eps))} episodes per point")
        row[1].set(xlabel="injected delay (control steps)", ylabel="jump at switches / within chunks",
                   title="smoothness (1 = seamless)")
        row[0].legend(fontsize=8)
        row[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    os.replace(path + ".tmp.png", path)


if __name__ == "__main__":
    main()
