"""Does `vla train --init` help on a user's data? Finetune the shipped Lift policy on PickColor demos exported to
LeRobot v3 and read back, against the same recipe from scratch: same data, steps, seeds and evaluation.

    python benchmarks/init_finetune.py --steps 1200 --episodes 50

Stages (each a `vla` command, recorded): export data/pickcolor.hdf5 -> LeRobot v3 (AV1), train from scratch
(`configs/train/pickcolor_tiny.yaml`, the plain recipe: no auxiliary head, which a LeRobot dataset has no object
positions for), train with `--init vla/pretrained/lift_tiny` (tokenizer and normaliser refitted, words grown),
evaluate both on PickColor (50 episodes, the same seeds). Runs under runs/init_finetune/ are reused when finished.
Writes the `init_finetune` block of benchmarks/results/data.json (the rest of that file is benchmarks/data.py's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from common import ROOT, VLA, command, run, train_record, write_json

WORK = "runs/init_finetune"
BASE = "vla/pretrained/lift_tiny"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hdf5", default="data/pickcolor.hdf5")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/data.json"))
    args = ap.parse_args()
    if not os.path.exists(os.path.join(ROOT, args.hdf5)):
        sys.exit(f"--hdf5: {args.hdf5} does not exist (vla collect --task PickColor --episodes 200 --noise 0.1 "
                 f"--out {args.hdf5})")
    log: list[str] = []
    lerobot = f"{WORK}/pickcolor_lerobot"
    done = os.path.exists(os.path.join(ROOT, lerobot, "meta", "info.json"))
    run([VLA, "data", "export", args.hdf5, "--to", "lerobot", "--out", lerobot, "--overwrite"], log,
        done="exported already" if done else None)
    out = {}
    for name, extra in (("scratch", []), ("init", ["--init", BASE])):
        run_dir = f"{WORK}/{name}_{args.steps}"
        done = os.path.exists(os.path.join(ROOT, run_dir, "policy", "model.safetensors"))
        run([VLA, "train", "--config", "pickcolor_tiny", "--data", lerobot, "--steps", str(args.steps),
             "--out", run_dir, "--no-progress", "--set", "save_every=0", *extra], log,
            done=f"{run_dir}/policy exists" if done else None)
        eval_dir = f"{run_dir}/eval"
        run([VLA, "eval", "--policy", f"{run_dir}/policy", "--task", "PickColor", "--episodes", str(args.episodes),
             "--workers", "2", "--out", eval_dir], log)
        with open(os.path.join(ROOT, eval_dir, "summary_PickColor.json")) as f:
            s = json.load(f)
        t = train_record(run_dir)
        out[name] = {"success": s["success_rate"], "mean_length": s["mean_length"], "episodes": s["episodes"],
                     "train_minutes": t["train_minutes"], "steps": t["steps"]}
        print(name, out[name], flush=True)
    res = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            res = json.load(f)
    res["init_finetune"] = {
        "success": out["init"]["success"], "scratch_success": out["scratch"]["success"],
        "init_minus_scratch": round(out["init"]["success"] - out["scratch"]["success"], 3),
        "runs": out, "base": BASE, "data": f"{args.hdf5} exported to LeRobot v3 (AV1) and read back",
        "recipe": "configs/train/pickcolor_tiny.yaml", "commands": log,
        "command": command(__file__)}
    res.pop("init_finetune_note", None)
    write_json(args.out, res)


if __name__ == "__main__":
    main()
