"""Does the auxiliary head localise objects on frames it never trained on, or has it memorised the layouts?

    .venv/bin/python benchmarks/aux_generalization.py --run runs/pickcolor_tiny_swap --steps 600,1200,3000

For each checkpoint of a run trained with `aux: spatial`: the head's squared error (in the dataset's normalised
units: 1.0 = predicting the mean) on 256 training frames and 256 held-out frames (`mask/valid`), for the target
row (the named object, first) and the other objects. With `model.vision_target`, also the target head's x, y error on
the named object (`*_mse_target_head`; the head has its own stem and never sees the backbone). Prints one JSON line per
checkpoint; --out appends them. `*_t0_*` fields: the same on each demo's first frame only (up to 64 demos), where
the arm is at home and says nothing about where the named cube is. --per-task: the same per task of a multi-task
run (`<task>/<split>_*` keys), and with `model.target_objects` > 1 the target head's error per object row
(`*_mse_target_head_row<i>`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vla.config import TrainConfig, from_dict, replace  # noqa: E402
from vla.objectives import masked_mse, target_columns  # noqa: E402
from vla.train import Trainer  # noqa: E402


def probe(trainer: Trainer, ckpt: str, frames: int = 256, per_task: bool = False) -> dict:
    trainer.model.load_state_dict(load_file(os.path.join(ckpt, "model.safetensors")))
    trainer.aux_head.load_state_dict(load_file(os.path.join(ckpt, "aux_head.safetensors")))
    trainer.model.eval()
    trainer.aux_head.eval()
    out = {"checkpoint": ckpt}
    for name, data in (("train", trainer.train_data), ("valid", trainer.valid_data)):
        if data is None:
            continue
        groups = [("", np.arange(len(data)))]
        if per_task:
            groups = [(f"{t}/", data.task_frames[i]) for i, t in enumerate(sorted(set(data.tasks)))]
        starts = np.nonzero(np.r_[True, data.demo_of[1:] != data.demo_of[:-1]])[0]  # each demo's t = 0
        for prefix, pool in groups:
            idx = np.random.default_rng(0).choice(pool, min(frames, len(pool)), replace=False)
            first = np.intersect1d(starts, pool)[:64]
            for tag, rows in (("", idx), ("_t0", first)):
                if len(rows):
                    out.update(_errors(trainer, data, rows, f"{prefix}{name}{tag}"))
    return out


def _errors(trainer: Trainer, data, idx: np.ndarray, name: str) -> dict:
    """Squared errors (normalised units) of the heads on frames `idx` of `data`, keys prefixed with `name`."""
    out = {}
    b = data.batch(idx, 0, torch.Generator().manual_seed(0), trainer.cfg.aux_future_steps)
    with torch.no_grad():
        _, vis = trainer.model(b["images"], b["text_ids"], b["text_valid"], b["state"], b["action_tokens"],
                               capture_layer=trainer.cfg.aux_layer)  # the prefix never sees action tokens
        pred, obj, valid = trainer.aux_head(vis), b["object_pos"], b["object_valid"]  # (B, 9) each
    if trainer.mcfg.vision_target:
        xy = target_columns(trainer.mcfg.target_objects)
        out[f"{name}_mse_target_head"] = float(masked_mse(trainer.model.last_target, obj[:, xy], valid[:, xy]))
        if trainer.mcfg.target_objects > 1:
            for i in range(trainer.mcfg.target_objects):
                cols, o = xy[2 * i: 2 * i + 2], slice(2 * i, 2 * i + 2)
                if valid[:, cols].any():
                    out[f"{name}_mse_target_head_row{i}"] = float(
                        masked_mse(trainer.model.last_target[:, o], obj[:, cols], valid[:, cols]))
    out[f"{name}_mse_target"] = float(masked_mse(pred[:, :3], obj[:, :3], valid[:, :3]))
    out[f"{name}_mse_others"] = float(masked_mse(pred[:, 3:], obj[:, 3:], valid[:, 3:]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="training run directory (train_config.json, checkpoints/)")
    ap.add_argument("--steps", required=True, help="comma-separated checkpoint steps")
    ap.add_argument("--out", help="append the JSON lines to this file")
    ap.add_argument("--per-task", action="store_true", help="errors per task of a multi-task run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    raw = json.load(open(os.path.join(args.run, "train_config.json")))
    cfg = replace(from_dict(TrainConfig, raw), out_dir=tempfile.mkdtemp(prefix="aux_probe_"))  # writes nothing to the run
    if not cfg.aux or cfg.aux != "spatial":
        raise SystemExit(f"{args.run}: trained with aux={cfg.aux!r}; this probe needs aux: spatial")
    trainer = Trainer(cfg, resume=False, progress=False)
    for step in [int(s) for s in args.steps.split(",") if s]:
        row = probe(trainer, os.path.join(args.run, "checkpoints", f"step_{step:06d}"), per_task=args.per_task)
        row["step"] = step
        row["command"] = "python benchmarks/aux_generalization.py " + " ".join(sys.argv[1:] if argv is None else argv)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
