"""The five-task headline, end to end and traced: collect the demos, train the release recipe, ship the checkpoint
(fp16) and its Fast-dVLA student under vla/pretrained/, evaluate the shipped files, write the JSON.

    python benchmarks/multitask.py                       # everything; every stage skips what is already there
    python benchmarks/multitask.py --stages eval,student_eval --episodes 50   # re-evaluate the shipped checkpoints

Stages (each a `vla` command, recorded in the JSON): collect -> train -> ship -> eval -> distill -> student_eval.
Collection runs two tasks at a time (one per core); training resumes from its last checkpoint if interrupted.
Results: benchmarks/results/multitask.json, per-episode JSONL under benchmarks/results/multitask_eval/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import (ROOT, VLA, add_stages, cmd_str, command, parse_stages, run, ship, train_record, train_run,
                    write_json)

from vla.cli.decode_args import add_decode_args, decode_overrides

TASKS = ["Lift", "PickColor", "Stack", "StackColor", "PickPlaceCan"]
CONFIG = "multitask_tiny_release"
RUN = "runs/multitask_tiny_release"
SHIPPED = "vla/pretrained/multitask_tiny"
STUDENT_RUN = "runs/multitask_tiny_fast"
STUDENT = "vla/pretrained/multitask_tiny_fast"
EVAL_ROOT = "benchmarks/results/multitask_eval"
OUT = "benchmarks/results/multitask.json"
# (task, successful demos, seed or None, file): the data the release config reads, with the seeds it was made with.
DATA = [
    ("Lift", 200, None, "data/lift.hdf5"),
    ("PickColor", 200, None, "data/pickcolor.hdf5"),
    ("Stack", 150, None, "data/stack_release.hdf5"),
    ("StackColor", 200, None, "data/stackcolor_release.hdf5"),
    ("PickPlaceCan", 75, None, "data/pickplacecan_release_a.hdf5"),
    ("PickPlaceCan", 75, 50000, "data/pickplacecan_release_b.hdf5"),
]
STAGES = ["collect", "train", "ship", "eval", "distill", "student_eval"]
# The release is evaluated here at the passes its recipe trains and validates with, whatever its saved (served) decode:
# benchmarks/fewstep.py measures it at fewer passes and sets that default.
TEACHER_PASSES = 8
TEACHER_DECODE = ["--steps-k", str(TEACHER_PASSES)]


def collect(log: list[str]) -> None:
    """Missing demo files, two collections at a time (one per core); each written as <file>.part, renamed when done."""
    running: list[tuple[subprocess.Popen, str]] = []

    def finish(p: subprocess.Popen, path: str) -> None:
        if p.wait() != 0:
            sys.exit(f"collection for {path} failed (exit {p.returncode})")
        os.replace(os.path.join(ROOT, path + ".part"), os.path.join(ROOT, path))

    for task, n, seed, path in DATA:
        cmd = [VLA, "collect", "--task", task, "--episodes", str(n), "--noise", "0.1", "--out", path]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        log.append(cmd_str(cmd))
        if os.path.exists(os.path.join(ROOT, path)):
            continue
        part = os.path.join(ROOT, path + ".part")
        if os.path.exists(part):
            os.remove(part)  # an interrupted file: start it again with the same seeds
        cmd[cmd.index(path)] = path + ".part"
        print("+", cmd_str(cmd), flush=True)
        if len(running) == 2:
            finish(*running.pop(0))
        running.append((subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL), path))
    for p, path in running:
        finish(p, path)


def train(log: list[str]) -> None:
    train_run([VLA, "train", "--config", CONFIG, "--no-progress"], RUN, log)


def _evaluated(out: str, policy: str, episodes: int, decode: dict) -> bool:
    """Every task's summary is there, for this policy, episode count and decode flags (an earlier run of this
    stage)."""
    for task in TASKS:
        p = os.path.join(ROOT, out, f"summary_{task}.json")
        if not os.path.exists(p):
            return False
        with open(p) as f:
            s = json.load(f)
        if s.get("episodes") != episodes or os.path.normpath(str(s.get("policy"))) != os.path.normpath(policy):
            return False
        if (s.get("decode") or {}) != decode:
            return False
    return True


def decode_parser() -> argparse.ArgumentParser:
    """Parses the decode flags of an evaluation's extra arguments (what its summaries record)."""
    ap = argparse.ArgumentParser(add_help=False)
    add_decode_args(ap)
    return ap


def evaluate(log: list[str], policy: str, name: str, episodes: int, extra: list[str], fresh: bool = False) -> dict:
    out = f"{EVAL_ROOT}/{name}"
    cmd = [VLA, "eval", "--policy", policy, "--task", ",".join(TASKS), "--episodes", str(episodes), "--workers", "2",
           "--replan-every", "4", "--videos", "1", "--failure-videos", "1", "--out", out, *extra]
    args, _ = decode_parser().parse_known_args(extra)
    done = not fresh and _evaluated(out, policy, episodes, decode_overrides(args))
    run(cmd, log, done=f"evaluated already, {episodes} episodes per task; --fresh-eval to run again" if done else None)
    per, length, seconds, chunk_ms = {}, {}, {}, {}
    for task in TASKS:
        with open(os.path.join(ROOT, out, f"summary_{task}.json")) as f:
            s = json.load(f)
        per[task] = s["success_rate"]
        length[task] = s.get("mean_length")
        seconds[task] = s.get("seconds")
        chunk_ms[task] = round(s["chunk_ms_p50"], 1) if s.get("chunk_ms_p50") is not None else None
    return {"policy": policy, "episodes": episodes, "replan_every": 4, "success": per,
            "average": round(sum(per.values()) / len(per), 4), "mean_length": length, "eval_seconds": seconds,
            "chunk_ms_p50_during_eval": chunk_ms,  # two evaluation workers sharing the 2 cores: not a latency figure
            "per_episode": [f"{out}/episodes_{t}.jsonl" for t in TASKS]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stages(ap, STAGES)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--distill-steps", type=int, default=1200)
    ap.add_argument("--fresh-eval", action="store_true", help="evaluate again even where the summaries exist")
    args = ap.parse_args()
    stages = parse_stages(args.stages, STAGES)
    res = {}
    if os.path.exists(os.path.join(ROOT, OUT)):
        with open(os.path.join(ROOT, OUT)) as f:
            res = json.load(f)
    cmds = res.setdefault("commands", {})
    t0 = time.time()
    if "collect" in stages:
        cmds["collect"] = []
        collect(cmds["collect"])
        res["demos_per_task"] = {}
        for task, n, _, _ in DATA:
            res["demos_per_task"][task] = res["demos_per_task"].get(task, 0) + n
    if "train" in stages:
        cmds["train"] = []
        train(cmds["train"])
        res["teacher_training"] = train_record(RUN)
    if "ship" in stages:
        cmds["ship"] = []
        ship(cmds["ship"], f"{RUN}/policy", SHIPPED, "python benchmarks/multitask.py --stages collect,train,ship")
    if "eval" in stages:
        cmds["eval"] = []
        res["teacher"] = evaluate(cmds["eval"], SHIPPED, "teacher", args.episodes, TEACHER_DECODE, args.fresh_eval)
        write_json(os.path.join(ROOT, OUT), res)
    if "distill" in stages:
        cmds["distill"] = []
        train_run([VLA, "distill", "--teacher", SHIPPED, "--out", STUDENT_RUN, "--steps", str(args.distill_steps),
                   "--no-progress"], STUDENT_RUN, cmds["distill"])
        res["student_training"] = train_record(STUDENT_RUN)
        ship(cmds["distill"], f"{STUDENT_RUN}/policy", STUDENT,
             f"python benchmarks/multitask.py --stages collect,train,ship,distill --distill-steps {args.distill_steps}")
    if "student_eval" in stages:
        cmds["student_eval"] = []
        res["student"] = evaluate(cmds["student_eval"], STUDENT, "student", args.episodes,
                                  ["--decoder", "pipelined"], args.fresh_eval)
    # every stage skips what is done, so the plain command reproduces the whole file; each invocation is listed
    res["command"] = "python benchmarks/multitask.py" + ("" if args.episodes == 50 else f" --episodes {args.episodes}")
    res.setdefault("invocations", []).append({
        "command": command(__file__),
        "stages": stages, "seconds": round(time.time() - t0, 1), "finished": time.strftime("%Y-%m-%d %H:%M")})
    res.pop("seconds_this_run", None)
    write_json(os.path.join(ROOT, OUT), res)
    for key in ("teacher", "student"):
        if key in res:
            print(key, res[key]["success"], "average", res[key]["average"], flush=True)


if __name__ == "__main__":
    main()
