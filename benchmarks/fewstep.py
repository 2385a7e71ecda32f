"""Few-step decoding of the five-task release: success against passes per chunk, and served chunk latency.

    python benchmarks/fewstep.py                   # every stage; each skips what is already there
    python benchmarks/fewstep.py --stages latency  # the latency only (the shipped checkpoints)

Stages:
  distill  `vla distill --few-step` from the shipped teacher (vla/pretrained/multitask_tiny) on its own five-task
           data (`python benchmarks/multitask.py --stages collect` makes it), shipped fp16 as
           vla/pretrained/multitask_tiny_1step
  eval     the five tasks x --episodes seeds, as benchmarks/multitask.py evaluates the release (replan every 4, 2
           workers), for the teacher at 1, 2 and its own 8 passes (the 8-pass folder is multitask.py's, reused when it
           holds this checkpoint's episodes) and the student at its 1 pass
  latency  each contender served by `vla serve --threads 1` (the default on <= 2 cores), chunk wall time over the same
           --latency-obs demo frames, interleaved (benchmarks/peers.py, measure_latency)
  default  the release's served decode (its config.json, what `vla serve` / `vla eval` use without flags) set to the
           fewest passes whose success on the four peer tasks is within --tolerance of 8 passes (`vla export
           --steps-k`, fp16 weights unchanged); every stage above names its passes, so the default changes none of them

Results: benchmarks/results/fewstep.json and fewstep.png (success and chunk latency against passes); per-episode
JSONL under benchmarks/results/multitask_eval/<name>/.

ACT-small is not served here (its checkpoints come from `python benchmarks/peers.py`, a 40-minute training run with
the peers venv). `act_ratio` chains two same-run ratios through the K-pass teacher, served in both runs:
(contender / teacher, this run) x (teacher / ACT-small, peers.json's run, 1 thread, no load), on the tasks where
peers.json served this teacher (Stack, PickPlaceCan, PickColor; its Lift row served lift_tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from common import (ROOT, VLA, VlaServe, add_stages, command, parse_stages, sample_observations, ship, train_record,
                    train_run, write_json)
from multitask import DATA, SHIPPED, TASKS, TEACHER_PASSES, evaluate
from peers import DEFAULT_TASKS as PEER_TASKS
from peers import measure_latency

STUDENT_RUN = "runs/multitask_tiny_1step"
STUDENT = "vla/pretrained/multitask_tiny_1step"
OUT = "benchmarks/results/fewstep.json"
PNG = "benchmarks/results/fewstep.png"
PEERS = "benchmarks/results/peers.json"
STAGES = ["distill", "eval", "latency", "default"]
# (name, policy, passes per chunk, the eval folder under multitask_eval/): the teacher's own 8 is its saved decode
CONTENDERS = [
    ("teacher_k8", SHIPPED, TEACHER_PASSES, "teacher"),
    ("teacher_k2", SHIPPED, 2, "teacher_k2"),
    ("student_k1", STUDENT, 1, "fewstep_k1"),
    ("teacher_k1", SHIPPED, 1, "teacher_k1"),
]


def distill(log: list[str], steps: int) -> dict:
    # the teacher decodes its targets at its trained passes, whatever its saved (served) decode
    train_run([VLA, "distill", "--few-step", "--teacher", SHIPPED, "--out", STUDENT_RUN, "--steps", str(steps),
               "--set", f"distill.teacher_steps={TEACHER_PASSES}", "--no-progress"], STUDENT_RUN, log)
    ship(log, f"{STUDENT_RUN}/policy", STUDENT, f"python benchmarks/fewstep.py --stages distill --steps {steps}")
    return train_record(STUDENT_RUN)


def latency(log: list[str], n_obs: int) -> dict:
    """Served chunk latency of every contender, 1 thread each, interleaved over the same demo frames (every task)."""
    obs = []
    first_file = {}
    for task, _, _, path in DATA:  # the release's data files: each task's first
        first_file.setdefault(task, path)
    for i, task in enumerate(TASKS):
        obs += sample_observations(os.path.join(ROOT, first_file[task]), max(1, n_obs // len(TASKS)), seed=i,
                                   task=task)
    servers = {}
    try:
        for name, policy, k, _ in CONTENDERS:
            extra = ["--steps-k", str(k)]
            log.append(f"vla serve --policy {policy} --threads 1 {' '.join(extra)}")
            servers[name] = VlaServe(policy, threads=1, extra=extra)
        lat = measure_latency({n: s.address for n, s in servers.items()}, obs)
    finally:
        for s in servers.values():
            s.stop()
    for name, policy, _, _ in CONTENDERS:  # the cost of one executed action: a chunk serves n_action_steps of them
        n = json.load(open(os.path.join(ROOT, policy, "config.json")))["n_action_steps"]
        lat[name].update(n_action_steps=n, action_ms_p50=round(lat[name]["chunk_ms_p50"] / n, 3))
    return lat


def choose_default(res: dict, tolerance: float) -> dict:
    """The fewest passes of the teacher whose average success on the peer tasks is at most `tolerance` below its
    8-pass figure (same seeds), from this file's eval results."""
    ev, diff = res["eval"], res["success_vs_teacher_k8"]
    rows = sorted((ev[n]["passes"], n) for n in ev if n.startswith("teacher_"))
    k, name = next((k, n) for k, n in rows if diff[n]["peer_tasks"] >= -tolerance)
    return {"passes": k, "contender": name, "rule": f"fewest passes with peer-task success >= 8 passes' - {tolerance}",
            "peer_tasks_vs_k8": diff[name]["peer_tasks"], "average": ev[name]["average"]}


def set_default(log: list[str], choice: dict) -> None:
    """Re-export the release with its saved decode at the chosen passes (fp16 to fp16: the weights stay bit for bit)."""
    ship(log, SHIPPED, SHIPPED, "python benchmarks/multitask.py --stages collect,train,ship",
         extra=["--steps-k", str(choice["passes"]), "--note",
                "served_decode=python benchmarks/fewstep.py --stages default (benchmarks/results/fewstep.json)"])


def act_ratio(res: dict) -> dict | None:
    """(contender / teacher_k8, this run) x (ours / ACT-small in peers.json, 1 thread, no load), per peer task; and
    ACT-small's cost per executed action there (its chunk runs 100 actions open loop)."""
    if not os.path.exists(os.path.join(ROOT, PEERS)) or "latency" not in res:
        return None
    peers = json.load(open(os.path.join(ROOT, PEERS)))
    lat = res["latency"]
    out = {}
    for task, d in (peers.get("per_task") or {}).items():
        ours = next((x for x in peers["rows"] if x["task"] == task and x["policy"] == "ours"), None)
        if ours is None or not str(ours.get("checkpoint", "")).endswith(SHIPPED):
            continue  # that run served another policy on this task (Lift: lift_tiny): no common anchor
        r = next((x for x in d.get("latency_vs_act", []) if x["threads"] == 1 and x["load"] == 0), None)
        if r is None:
            continue
        out[task] = {n: round(lat[n]["chunk_ms_p50"] / lat["teacher_k8"]["chunk_ms_p50"] * r["chunk_ms_p50_ratio"], 3)
                     for n in lat}
        act = next((x for x in peers["rows"] if x["task"] == task and x["policy"] == "ACT-small"), None)
        if act is not None:
            one = next(x for x in act["latency"] if x["threads"] == 1 and x["load"] == 0)
            out[task]["act_action_ms_p50"] = round(one["action_ms_p50"], 3)
            out[task]["act_n_action_steps"] = act["n_action_steps"]
    return out


def plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for who, marker in (("teacher", "o"), ("student", "s")):
        rows = sorted((c[2], c[0]) for c in CONTENDERS if c[0].startswith(who) and c[0] in res.get("eval", {}))
        if rows:
            ax[0].plot([k for k, _ in rows], [res["eval"][n]["average"] for _, n in rows], marker=marker,
                       label={"teacher": "teacher (multitask_tiny)", "student": "few-step student"}[who])
        lat = res.get("latency", {})
        rows = [(k, n) for k, n in rows if n in lat] or sorted(
            (c[2], c[0]) for c in CONTENDERS if c[0].startswith(who) and c[0] in lat)
        if rows:
            ax[1].plot([k for k, _ in rows], [lat[n]["chunk_ms_p50"] for _, n in rows], marker=marker, label=who)
    ax[0].set_xlabel("passes per chunk")
    ax[0].set_ylabel("success, 5 tasks x 50 episodes")
    ax[0].set_title("success against passes")
    ax[1].set_xlabel("passes per chunk")
    ax[1].set_ylabel("served chunk p50 (ms), 1 thread")
    ax[1].set_title("latency against passes")
    for a in ax:
        a.set_xticks([1, 2, 8])
        if a.get_legend_handles_labels()[0]:
            a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, PNG), dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stages(ap, STAGES)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--steps", type=int, default=1000, help="few-step distillation steps")
    ap.add_argument("--latency-obs", type=int, default=100)
    ap.add_argument("--fresh-eval", action="store_true", help="evaluate again even where the summaries exist")
    ap.add_argument("--tolerance", type=float, default=0.03,
                    help="default stage: how far below 8 passes the peer-task success may fall")
    args = ap.parse_args()
    stages = parse_stages(args.stages, STAGES)
    res = json.load(open(os.path.join(ROOT, OUT))) if os.path.exists(os.path.join(ROOT, OUT)) else {}
    cmds = res.setdefault("commands", {})
    t0 = time.time()
    if "distill" in stages:
        cmds["distill"] = []
        res["student_training"] = distill(cmds["distill"], args.steps)
        write_json(os.path.join(ROOT, OUT), res)
    if "eval" in stages:
        cmds["eval"] = []
        ev = res.setdefault("eval", {})
        for name, policy, k, folder in CONTENDERS:
            extra = ["--steps-k", str(k)]
            ev[name] = {**evaluate(cmds["eval"], policy, folder, args.episodes, extra, args.fresh_eval), "passes": k}
            write_json(os.path.join(ROOT, OUT), res)
        t8 = ev["teacher_k8"]
        res["success_vs_teacher_k8"] = {
            n: {"average": round(e["average"] - t8["average"], 4),
                "peer_tasks": round(float(np.mean([e["success"][t] - t8["success"][t]
                                                   for t in PEER_TASKS])), 4)}
            for n, e in ev.items()}
    if "latency" in stages:
        cmds["latency"] = []
        res["latency"] = latency(cmds["latency"], args.latency_obs)
        res["latency_vs_teacher_k8"] = {n: round(v["chunk_ms_p50"] / res["latency"]["teacher_k8"]["chunk_ms_p50"], 3)
                                        for n, v in res["latency"].items()}
        res["cpu_count"] = os.cpu_count()
    if "default" in stages:
        cmds["default"] = []
        res["served_default"] = choose_default(res, args.tolerance)
        set_default(cmds["default"], res["served_default"])
    res["ours_over_act_latency_chained"] = act_ratio(res)
    res["command"] = "python benchmarks/fewstep.py"
    res.setdefault("invocations", []).append({"command": command(__file__), "stages": stages,
                                              "seconds": round(time.time() - t0, 1),
                                              "finished": time.strftime("%Y-%m-%d %H:%M")})
    write_json(os.path.join(ROOT, OUT), res)
    plot(res)
    for n, e in res.get("eval", {}).items():
        print(n, e["success"], "average", e["average"], flush=True)
    for n, v in res.get("latency", {}).items():
        print(n, "chunk p50", round(v["chunk_ms_p50"], 1), "ms", flush=True)


if __name__ == "__main__":
    main()
