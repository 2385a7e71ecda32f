"""LIBERO end to end, traced: expert demos in LIBERO's native layout -> train the recipe on them -> ship the checkpoint
(fp16) -> score the shipped files on the suite's official init states -> benchmarks/results/libero.json.

    make libero && python benchmarks/libero.py                       # everything; each stage skips what is done
    python benchmarks/libero.py --stages eval --trials 50 --workers 2  # re-score the shipped checkpoint

Stages (each a `vla` command, recorded in the JSON): collect -> train -> ship -> eval. Collection writes
data/<suite>_expert{,_b,_c}/ (tasks 0-4, 5-8 and 9 side by side: one <task>_demo.hdf5 per task
and expert.json, the expert's success per task, from fresh placements, never the evaluation init states); evaluation
follows openpi's conventions (`vla libero eval`), its episodes, videos and bar chart under
benchmarks/results/libero_eval/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ROOT, VLA, add_stages, cmd_str, parse_stages, run, ship, train_record, train_run,  # noqa: E402
                    write_json)

SUITE = "libero_object"
CONFIG = "libero_object_tiny"
RUN = "runs/libero_object_tiny"
SHIPPED = "vla/pretrained/libero_object_tiny"
# expert demos in parts collected side by side (one env process each): (task ids, folder)
DATA = [("0,1,2,3,4", f"data/{SUITE}_expert"), ("5,6,7,8", f"data/{SUITE}_expert_b"), ("9", f"data/{SUITE}_expert_c")]
MERGED = f"data/{SUITE}_expert"  # what the recipe reads: every part's task files, linked by sim.libero.merge_demos
EVAL = "benchmarks/results/libero_eval"
OUT = "benchmarks/results/libero.json"
STAGES = ["collect", "train", "ship", "eval"]


def _collected(folder: str, tasks: str) -> bool:
    """Every task of this half has its file (an interrupted collection leaves only .tmp files)."""
    path = os.path.join(ROOT, folder, "expert.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        done = {v["index"] for v in json.load(f).get("tasks", {}).values()}
    return {int(t) for t in tasks.split(",")} <= done


def collect(log: list[str], attempts: int, image_size: int) -> None:
    """Every part at once, each in its own LIBERO process; a part already collected is skipped."""
    procs = []
    for tasks, folder in DATA:
        cmd = [VLA, "libero", "collect", "--suite", SUITE, "--tasks", tasks, "--attempts", str(attempts),
               "--image-size", str(image_size), "--seed", "100000", "--out", folder]
        if _collected(folder, tasks):
            run(cmd, log, done=f"{folder}/expert.json holds tasks {tasks}")
            continue
        log.append(cmd_str(cmd))
        print("+", log[-1], flush=True)
        procs.append(subprocess.Popen(cmd, cwd=ROOT))
    for p in procs:
        if p.wait() != 0:
            sys.exit(f"collection failed (exit {p.returncode})")


def merge(log: list[str]) -> None:
    """The parts' demos into one folder (sim.libero.merge_demos, in LIBERO's venv: it needs only the repository)."""
    py = os.path.join(ROOT, ".venv-libero", "bin", "python")
    cmd = [py, "-m", "sim.libero.merge_demos", "--out", MERGED, *[folder for _, folder in DATA]]
    log.append(" ".join(["python", *cmd[1:]]))
    want = {int(t) for tasks, _ in DATA for t in tasks.split(",")}
    if _collected(MERGED, ",".join(map(str, sorted(want)))):
        print(f"= {log[-1]}  ({MERGED}/expert.json holds every task)", flush=True)
        return
    print("+", log[-1], flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": ROOT})


def expert_record() -> dict:
    """Expert success per task (attempts, kept demos, mean steps) and the command of the run behind each task."""
    path = os.path.join(ROOT, MERGED, "expert.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        exp = json.load(f)
    per_task = {name: {"success": v["success_rate"], "attempts": v["attempts"], "kept_demos": v["kept_demos"],
                       "mean_steps": v["mean_steps"], "command": v.get("command")}
                for name, v in exp.get("tasks", {}).items()}
    return {"per_task": per_task, "overall": exp.get("overall"), "image_size": exp.get("image_size"),
            "seed_rule": exp.get("seed_rule")}


def evaluate(log: list[str], trials: int, workers: int, conventions: str, image_size: int | None) -> dict:
    out = f"{EVAL}/{conventions}" + (f"_{image_size}px" if image_size else "")
    cmd = [VLA, "libero", "eval", SUITE, "--policy", SHIPPED, "--trials", str(trials), "--workers", str(workers),
           "--conventions", conventions, "--out", out]
    run(cmd + (["--image-size", str(image_size)] if image_size else []), log)
    with open(os.path.join(ROOT, out, "results.json")) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_stages(ap, STAGES)
    ap.add_argument("--attempts", type=int, default=20, help="expert episodes per task (successful ones are kept)")
    ap.add_argument("--image-size", type=int, default=128, help="render size of the collected demos")
    ap.add_argument("--trials", type=int, default=10, help="trials per task (the suite's first init states)")
    ap.add_argument("--workers", type=int, default=2, help="parallel LIBERO env processes")
    ap.add_argument("--conventions", default="openpi")
    ap.add_argument("--eval-image-size", type=int, help="render size for evaluation (default the conventions' 256)")
    a = ap.parse_args()
    stages = parse_stages(a.stages, STAGES)
    logs: dict[str, list[str]] = {stage: [] for stage in stages}
    if "collect" in stages:
        collect(logs["collect"], a.attempts, a.image_size)
        merge(logs["collect"])
    if "train" in stages:
        train_run([VLA, "train", "--config", CONFIG, "--no-progress"], RUN, logs["train"])
    if "ship" in stages:
        shipped = os.path.join(ROOT, SHIPPED, "model.safetensors")
        trained = os.path.join(ROOT, RUN, "policy", "model.safetensors")
        if os.path.exists(shipped) and os.path.getmtime(shipped) >= os.path.getmtime(trained):
            logs["ship"].append(f"vla export --policy {RUN}/policy --out {SHIPPED} --dtype float16 "
                                f"--note reproduce='python benchmarks/libero.py'")
            print(f"= {logs['ship'][-1]}  ({SHIPPED} is newer than the run)", flush=True)
        else:
            ship(logs["ship"], f"{RUN}/policy", SHIPPED, reproduce="python benchmarks/libero.py")
    prev = {}
    if os.path.exists(os.path.join(ROOT, OUT)):
        with open(os.path.join(ROOT, OUT)) as f:
            prev = json.load(f)
    result = dict(prev)
    if "eval" in stages:
        summary = evaluate(logs["eval"], a.trials, a.workers, a.conventions, a.eval_image_size)
        result.update({k: summary[k] for k in ("suite", "trials_per_task", "per_task", "average", "env_step_ms",
                                                "infer_ms", "max_steps", "replan_every", "image_size")})
        result["conventions"] = summary["conventions_table"]
        result["policy"] = {"checkpoint": SHIPPED, **summary.get("policy", {})}
    exp = expert_record()
    if exp.get("per_task"):
        result["expert"] = {t: v["success"] for t, v in exp["per_task"].items()}
        result["expert_details"] = exp
    if os.path.exists(os.path.join(ROOT, RUN, "train_summary.json")):
        rec = train_record(RUN)
        result["train_minutes"] = rec["train_minutes"]
        result["train"] = rec
    # the commands behind the record, by stage (a stage not run this time keeps its earlier commands)
    result["commands"] = {**(prev["commands"] if isinstance(prev.get("commands"), dict) else {}), **logs}
    result["command"] = "python benchmarks/libero.py " + " ".join(sys.argv[1:])
    write_json(os.path.join(ROOT, OUT), result)
    print(json.dumps({k: result.get(k) for k in ("suite", "average", "trials_per_task", "train_minutes")}))


if __name__ == "__main__":
    main()
