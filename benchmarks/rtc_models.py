"""The policies of the real-time-chunking benchmark (issue 26), built end to end: a Lift teacher with chunks of 16
steps, its Fast-dVLA student, and a student distilled with training-time prefix conditioning (`prefix_prob`), both
shipped in fp16. Each stage skips what is already done.

    python benchmarks/rtc_models.py          # then: python benchmarks/rtc.py (see its docstring)

    teacher  vla train --config configs/train/lift_tiny_h16.yaml                          -> runs/lift_tiny_h16
    student  vla distill --teacher runs/lift_tiny_h16/policy --steps 400                 -> vla/pretrained/lift_h16_fast
    prefix   vla distill ... --set prefix_prob=0.5 (first d ~ U{0..8} steps given clean) -> .../lift_h16_fast_prefix
Writes benchmarks/results/rtc_models.json (commands, training records).
Why 16: with one request in flight, a round trip of d control steps leaves H - d fresh actions per chunk; the shipped
Lift models have H = 8, which starves every strategy at the issue's 4-6 steps of delay.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import ROOT, VLA, ship, train_record, train_run, write_json

CONFIG = "configs/train/lift_tiny_h16.yaml"
TEACHER = "runs/lift_tiny_h16"
STUDENTS = {"student": ("runs/lift_h16_fast", "vla/pretrained/lift_h16_fast", []),
            "prefix": ("runs/lift_h16_fast_prefix", "vla/pretrained/lift_h16_fast_prefix",
                       ["--set", "prefix_prob=0.5"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--distill-steps", type=int, default=400)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "rtc_models.json"))
    args = ap.parse_args(argv)
    cmds: dict[str, list[str]] = {"teacher": []}
    train_run([VLA, "train", "--config", CONFIG, "--no-progress"], TEACHER, cmds["teacher"])
    record = {"teacher": train_record(TEACHER)}
    for name, (run_dir, shipped, extra) in STUDENTS.items():
        cmds[name] = []
        train_run([VLA, "distill", "--teacher", f"{TEACHER}/policy", "--out", run_dir, "--steps",
                   str(args.distill_steps), "--no-progress", *extra], run_dir, cmds[name])
        ship(cmds[name], f"{run_dir}/policy", shipped,
             f"python benchmarks/rtc_models.py --distill-steps {args.distill_steps}")
        record[name] = {**train_record(run_dir), "shipped": shipped}
    write_json(args.out, {"command": "python benchmarks/rtc_models.py "
                                     + " ".join(sys.argv[1:] if argv is None else argv),
                          "commands": cmds, "runs": record, "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
