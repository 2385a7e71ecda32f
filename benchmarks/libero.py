"""LIBERO end to end, traced: expert demos in LIBERO's native layout -> train the recipe on them -> ship the checkpoint
(fp16) -> score the shipped files on the suite's official init states -> benchmarks/results/libero.json.

    make libero && python benchmarks/libero.py                       # everything; each stage skips what is done
    python benchmarks/libero.py --stages eval --trials 50 --workers 2  # re-score the shipped checkpoint

Stages (each a `vla` command, recorded in the JSON): collect -> train -> ship -> eval. Collection writes
data/<suite>_expert/ (one <task>_demo.hdf5 per task and expert.json, the expert's success per task); evaluation
follows openpi's conventions (`vla libero eval`), its episodes, videos and bar chart under
benchmarks/results/libero_eval/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_io import write_json  # noqa: E402
from vla_runs import ROOT, VLA, run, ship, train_record, train_run  # noqa: E402

SUITE = "libero_object"
CONFIG = "libero_object_tiny"
RUN = "runs/libero_object_tiny"
SHIPPED = "vla/pretrained/libero_object_tiny"
DATA = f"data/{SUITE}_expert"
EVAL = "benchmarks/results/libero_eval"
OUT = "benchmarks/results/libero.json"
STAGES = ["collect", "train", "ship", "eval"]


def collect(log: list[str], demos: int, image_size: int) -> None:
    done = os.path.exists(os.path.join(ROOT, DATA, "expert.json"))
    run([VLA, "libero", "collect", "--suite", SUITE, "--tasks", "all", "--demos", str(demos), "--image-size",
         str(image_size), "--out", DATA], log, done=f"{DATA}/expert.json exists" if done else None)


def evaluate(log: list[str], trials: int, workers: int, conventions: str) -> dict:
    out = f"{EVAL}/{conventions}"
    run([VLA, "libero", "eval", SUITE, "--policy", SHIPPED, "--trials", str(trials), "--workers", str(workers),
         "--conventions", conventions, "--out", out], log)
    with open(os.path.join(ROOT, out, "results.json")) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--demos", type=int, default=50, help="expert demos per task")
    ap.add_argument("--image-size", type=int, default=128, help="render size of the collected demos")
    ap.add_argument("--trials", type=int, default=10, help="trials per task (the suite's first init states)")
    ap.add_argument("--workers", type=int, default=2, help="parallel LIBERO env processes")
    ap.add_argument("--conventions", default="openpi")
    a = ap.parse_args()
    stages = a.stages.split(",")
    for s in stages:
        if s not in STAGES:
            sys.exit(f"--stages: unknown stage {s!r} (expected some of {STAGES})")
    log: list[str] = []
    if "collect" in stages:
        collect(log, a.demos, a.image_size)
    if "train" in stages:
        train_run([VLA, "train", "--config", CONFIG, "--no-progress"], RUN, log)
    if "ship" in stages:
        ship(log, f"{RUN}/policy", SHIPPED, reproduce="python benchmarks/libero.py")
    prev = {}
    if os.path.exists(os.path.join(ROOT, OUT)):
        with open(os.path.join(ROOT, OUT)) as f:
            prev = json.load(f)
    result = dict(prev)
    if "eval" in stages:
        summary = evaluate(log, a.trials, a.workers, a.conventions)
        result.update({k: summary[k] for k in ("suite", "trials_per_task", "per_task", "average", "env_step_ms",
                                                "infer_ms", "max_steps", "replan_every", "image_size")})
        result["conventions"] = summary["conventions_table"]
        result["policy"] = {"checkpoint": SHIPPED, **summary.get("policy", {})}
    expert_path = os.path.join(ROOT, DATA, "expert.json")
    if os.path.exists(expert_path):
        with open(expert_path) as f:
            exp = json.load(f)
        result["expert"] = {t: v["success_rate"] for t, v in exp.get("per_task", {}).items()}
        result["expert_command"] = exp.get("command")
    if os.path.exists(os.path.join(ROOT, RUN, "train_summary.json")):
        rec = train_record(RUN)
        result["train_minutes"] = rec["train_minutes"]
        result["train"] = rec
    result["commands"] = prev.get("commands", []) if not log else log
    result["command"] = "python benchmarks/libero.py " + " ".join(sys.argv[1:])
    write_json(os.path.join(ROOT, OUT), result)
    print(json.dumps({k: result.get(k) for k in ("suite", "average", "trials_per_task", "train_minutes")}))


if __name__ == "__main__":
    main()
