"""`vla distill`, `vla capvector ...` and `vla export` subcommands (registered in vla/cli/commands.py)."""

from __future__ import annotations

import json

from vla.cli.decode_args import add_decode_args, decode_overrides


def add_distill(sub) -> None:
    s = sub.add_parser("distill",
                       help="asymmetric distillation: bidirectional teacher -> block-causal student (Fast-dVLA); "
                            "with --few-step, a student that decodes a chunk in --passes passes")
    s.add_argument("--teacher", required=True, help="finetuned bidirectional policy checkpoint")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--config", default=None,
                   help="training config (configs/train/<name>.yaml); default distill_tiny "
                        "(fewstep_tiny with --few-step)")
    s.add_argument("--few-step", action="store_true",
                   help="few-step distillation: a bidirectional student learns to reach the teacher's decoded chunk "
                        "in --passes passes (the fewstep objective)")
    s.add_argument("--passes", type=int, default=1, help="--few-step: the student's passes per chunk (default 1)")
    s.add_argument("--data", action="append", help="dataset file(s); default: the teacher's training data")
    s.add_argument("--steps", type=int)
    s.add_argument("--lora-rank", type=int, default=None,
                   help="train LoRA adapters of this rank instead of all weights")
    s.add_argument("--set", action="append", metavar="KEY=VALUE")
    s.add_argument("--resume", action="store_true", help="continue the run in --out")
    s.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_distill)


def distill_config(args):
    """`vla distill`'s config, built directly: --config (distill_tiny; fewstep_tiny with --few-step), --set, then the
    student's own settings (from the teacher: init and teacher, its data and actions per chunk; the Fast-dVLA student
    block-causal attention and the pipelined decoder, the few-step student the teacher's attention and the parallel
    decoder with --passes passes; those win over --set, except the data fields and n_action_steps --set names)."""
    from vla.cli.commands import parse_overrides
    from vla.config import load_train_config, merge_overrides, upgrade_legacy
    from vla.policy import read_checkpoint_files

    config, _, _ = read_checkpoint_files(args.teacher)
    if config["model"].get("attention") != "bidirectional":
        raise ValueError(f"--teacher: {args.teacher} is not a bidirectional model "
                         f"(attention={config['model'].get('attention')})")
    user = upgrade_legacy(parse_overrides(args.set))
    user_data = user.get("data") if isinstance(user.get("data"), dict) else {}
    few = bool(getattr(args, "few_step", False))
    if few:
        passes = int(getattr(args, "passes", 1))
        if passes < 1:
            raise ValueError(f"--passes: expected >= 1, got {passes}")
        own = {"objective": "fewstep", "decode": {"decoder": "parallel", "steps": passes}}
    else:
        own = {"objective": "distill", "model": {"attention": "block_causal"}, "decode": {"decoder": "pipelined"}}
    own.update({"distill": {"teacher": args.teacher}, "init": args.teacher, "out_dir": args.out, "data": {}})
    if args.steps is not None:
        own["steps"] = args.steps
    # the student sees the data as the teacher was trained on it: the same files, task mix and image augmentation
    # (what --data / --set give instead wins); the mix only with the teacher's own files, whose tasks it names
    teacher_data = (config.get("train") or {}).get("data") or {}
    carried = ["augment_shift", "augment_color"]
    if args.data:
        own["data"]["paths"] = list(args.data)
    else:
        paths = teacher_data.get("paths")
        if not paths:
            raise ValueError("--data: the teacher records no training data; pass --data <file.hdf5>")
        own["data"]["paths"] = list(paths)
        carried += ["tasks", "max_demos_per_task", "task_sampling", "task_weights", "features", "frame_fit"]
    for key in carried:
        if key in teacher_data and key not in user_data:
            own["data"][key] = teacher_data[key]
    # and it runs as the teacher does: the same actions executed per chunk
    if config.get("n_action_steps") is not None and "n_action_steps" not in user:
        own["n_action_steps"] = config["n_action_steps"]
    if args.lora_rank:
        own["lora"] = {"rank": args.lora_rank}
    recipe = args.config or ("fewstep_tiny" if few else "distill_tiny")
    return load_train_config(recipe, merge_overrides(user, own))


def _cmd_distill(args) -> int:
    from vla.cli.commands import run_training

    out = run_training(distill_config(args), resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress)
    kind = "few-step" if getattr(args, "few_step", False) else "block-causal"
    print(f"[vla distill] {kind} student written to {out}")
    return 0


def add_capvector(sub) -> None:
    s = sub.add_parser("capvector", help="capability vectors: extract, merge, inspect")
    cs = s.add_subparsers(dest="capvector_command", metavar="action")
    e = cs.add_parser("extract", help="gamma = theta_aux - theta_sft")
    e.add_argument("--aux", required=True, help="checkpoint finetuned with the auxiliary objective")
    e.add_argument("--sft", required=True, help="checkpoint finetuned with plain SFT (same base, data, settings)")
    e.add_argument("--out", required=True, help="output .safetensors")
    e.set_defaults(func=_cmd_extract)
    m = cs.add_parser("merge", help="theta_meta = theta_base + alpha * gamma")
    m.add_argument("--base", required=True)
    m.add_argument("--vector", action="append", required=True, help="repeat to merge several vectors")
    m.add_argument("--alpha", action="append",
                   help="scalar, or 'pattern=value,...' (fnmatch on parameter names); one or one per vector")
    m.add_argument("--out", required=True)
    m.set_defaults(func=_cmd_merge)
    i = cs.add_parser("inspect", help="norms per layer, cosine with another vector, a PNG")
    i.add_argument("vector")
    i.add_argument("--other", help="another vector to compare with (cosine)")
    i.add_argument("--png", help="write a bar chart of where the vector lives")
    i.set_defaults(func=_cmd_inspect)
    s.set_defaults(func=lambda a: (s.print_help(), 2)[1])


def _cmd_extract(args) -> int:
    from vla.capvector import extract

    _, meta = extract(args.aux, args.sft, out=args.out)
    print(json.dumps({"out": args.out, "tensors": len(meta["norms"]), "total_norm": meta["total_norm"],
                      "skipped": meta["skipped"]}, indent=2))
    return 0


def _cmd_merge(args) -> int:
    from vla.capvector import merge

    report = merge(args.base, args.vector, args.alpha, args.out)
    print(json.dumps(report, indent=2))
    return 0


def _cmd_inspect(args) -> int:
    from vla.capvector import inspect

    print(json.dumps(inspect(args.vector, other=args.other, png=args.png), indent=2))
    return 0


def add_export(sub) -> None:
    s = sub.add_parser("export", help="copy a policy checkpoint, optionally with half-precision weights")
    s.add_argument("--policy", required=True,
                   help="a checkpoint directory, a training run's folder (its policy/), or a shipped policy's "
                        "name (lift_tiny, ...)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    add_decode_args(s)  # the copy's saved decode: what `vla serve` and `vla eval` use when given no flag
    s.add_argument("--note", action="append", default=[],
                   help="KEY=VALUE written into config.json (e.g. reproduce=...)")
    s.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    import os

    from vla.config import to_dict
    from vla.policy import Policy, read_checkpoint_files

    config, _, _ = read_checkpoint_files(args.policy)
    keep = {k: v for k, v in config.items() if k not in ("type", "format_version", "vla_stack_version", "model",
                                                         "decode", "n_action_steps")}
    for item in args.note:
        if "=" not in item:
            raise ValueError(f"--note: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        keep[k] = v
    summary = os.path.join(os.path.dirname(os.path.abspath(args.policy)), "train_summary.json")
    if "train_summary" not in keep and os.path.isfile(summary):  # a run's <out_dir>/policy: how long it trained
        with open(summary) as f:
            keep["train_summary"] = json.load(f)
    policy = Policy.from_pretrained(args.policy, decode=decode_overrides(args) or None)
    policy.save_pretrained(args.out, extra=keep, dtype=args.dtype)
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(json.dumps({"out": args.out, "dtype": args.dtype, "model_bytes": size,
                      "decode": to_dict(policy.decode_cfg)}, indent=2))
    return 0
