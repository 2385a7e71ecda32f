"""Does pretraining on our tasks transfer to a task the policy never saw? The five-task release recipe trained on four
tasks (the fifth held out), then finetuned on the held-out task with 10, 20 and 50 demos, against the same recipe
from scratch on the same demos at the same steps; 50 evaluation episodes each, the same seeds.

    python benchmarks/transfer.py --stages base,train,eval                  # ~80 min base + 6 runs + evaluation
    python benchmarks/transfer.py --stages base,train,eval --text-encoder minilm   # the same with the MiniLM encoder

Only five tasks are registered (sim/tasks.py), and the shipped release saw all five, so the base here is the
release's recipe (configs/train/multitask_tiny_release.yaml: model, weights, steps, seeds) without the held-out task
(--held-out, default PickPlaceCan: the only task with another object, a can, and another goal, a bin).
Finetuning: `vla train --init <base>` (action and state processors refitted, words grown), the release config with
only the held-out task's demos (data.max_demos_per_task = n), --steps; from scratch: the same command without --init.
Every run lives under runs/transfer/ and is reused when finished (resumed when interrupted).
Writes benchmarks/results/transfer.json: success per demo count, from the base and from scratch, their difference
(the issue's figure: at 20 demos), the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from common import ROOT, VLA, add_stages, parse_stages, run, train_record, train_run, write_json

STAGES = ["base", "train", "eval"]

RELEASE = "multitask_tiny_release"
FILES = {"Lift": ["data/lift.hdf5"], "PickColor": ["data/pickcolor.hdf5"], "Stack": ["data/stack_release.hdf5"],
         "StackColor": ["data/stackcolor_release.hdf5"],
         "PickPlaceCan": ["data/pickplacecan_release_a.hdf5", "data/pickplacecan_release_b.hdf5"]}
WEIGHTS = {"Lift": 1.0, "PickColor": 1.5, "Stack": 2.5, "StackColor": 2.5, "PickPlaceCan": 2.5}  # the release's


def base_config(work: str, held: str) -> str:
    """The release's training config with the held-out task's data and weight removed (a merge cannot drop a key of
    data.task_weights) -> its path, written under `work` (to a temporary name, then renamed)."""
    import yaml

    from vla.config import resolve_config_path

    with open(resolve_config_path(RELEASE, "train")) as f:
        cfg = yaml.safe_load(f)
    seen = [t for t in FILES if t != held]
    cfg["data"]["paths"] = [p for t in seen for p in FILES[t]]
    cfg["data"]["task_weights"] = {t: WEIGHTS[t] for t in seen}
    path = os.path.join(work, f"release_without_{held}.yaml")
    os.makedirs(os.path.join(ROOT, work), exist_ok=True)
    tmp = os.path.join(ROOT, path + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"# {RELEASE}.yaml without {held} (written by benchmarks/transfer.py)\n")
        yaml.safe_dump(cfg, f, sort_keys=False)
    os.replace(tmp, os.path.join(ROOT, path))
    return path


def _summary(out: str, task: str) -> dict | None:
    p = os.path.join(ROOT, out, f"summary_{task}.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stages(ap, STAGES)
    ap.add_argument("--held-out", default="PickPlaceCan", choices=sorted(FILES))
    ap.add_argument("--demos", default="10,20,50")
    ap.add_argument("--steps", type=int, default=1200, help="finetuning / from-scratch steps (the same for both)")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--text-encoder", default="words", choices=["words", "minilm"])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/transfer.json"))
    args = ap.parse_args()
    stages = parse_stages(args.stages, STAGES)
    held = args.held_out
    demos = [int(n) for n in args.demos.split(",")]
    work = f"runs/transfer/{args.text_encoder}_without_{held}"
    base = f"{work}/base"
    enc = ["--set", "model_overrides.text_encoder=minilm", "--set", "model_overrides.max_text_len=16"] \
        if args.text_encoder == "minilm" else []
    log: dict[str, list[str]] = {"base": [], "train": [], "eval": []}
    rec: dict = {"held_out": held, "base": base, "steps": args.steps, "episodes": args.episodes,
                 "text_encoder": args.text_encoder}
    if "base" in stages:
        cfg_path = base_config(work, held)
        rec["base_config"] = cfg_path
        train_run([VLA, "train", "--config", cfg_path, "--out", base, "--no-progress", *enc], base, log["base"])
        rec["base_train"] = train_record(base)
    runs = {}
    for n in demos:
        for kind in ("init", "scratch"):
            out = f"{work}/{kind}_{n}"
            runs[(kind, n)] = out
            if "train" not in stages:
                continue
            cmd = [VLA, "train", "--config", RELEASE, "--out", out, "--steps", str(args.steps), "--no-progress", *enc,
                   *[a for p in FILES[held] for a in ("--data", p)],
                   "--set", f"data.max_demos_per_task={n}", "--set", "data.task_sampling=frames",
                   "--set", "data.task_weights=null", "--set", "save_every=0", "--set", "val_every=0",
                   *(["--init", f"{base}/policy"] if kind == "init" else [])]
            train_run(cmd, out, log["train"])
    if "eval" in stages:
        table = {}
        for (kind, n), out in runs.items():
            ev = f"{out}_eval"
            s = _summary(ev, held)
            done = s is not None and s.get("episodes") == args.episodes
            run([VLA, "eval", "--policy", out, "--task", held, "--episodes", str(args.episodes), "--workers", "2",
                 "--replan-every", "4", "--videos", "0", "--out", ev], log["eval"],
                done="evaluated already" if done else None)
            s = _summary(ev, held)
            table.setdefault(str(n), {})[kind] = {"success": s["success_rate"], "train": train_record(out),
                                                 "per_episode": f"{ev}/episodes_{held}.jsonl"}
        for n, row in table.items():
            row["init_minus_scratch"] = round(row["init"]["success"] - row["scratch"]["success"], 4)
        rec["results"] = table
        if "20" in table:
            rec["figure"] = {"init_minus_scratch_at_20_demos": table["20"]["init_minus_scratch"], "target": 0.20}
    rec["commands"] = log
    rec["command"] = "python benchmarks/transfer.py " + " ".join(sys.argv[1:])
    prev = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            prev = json.load(f)
    prev[args.text_encoder] = rec  # one block per instruction encoder
    write_json(args.out, prev)
    print(json.dumps(rec.get("results", {}), indent=1)[:3000])


if __name__ == "__main__":
    main()
