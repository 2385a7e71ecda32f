"""`vla train` and `vla eval`, and the helpers the other subcommands share (overrides, decoder options)."""

from __future__ import annotations

import json


def parse_overrides(items: list[str] | None) -> dict:
    """["steps=100", "data.paths=[a.hdf5]"] -> nested dict, values parsed as YAML."""
    import yaml

    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, val = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out


# --------------------------------------------------------------------------------------------------------------
def add_train(sub) -> None:
    s = sub.add_parser("train", help="finetune a policy on demonstrations (masked discrete diffusion)")
    s.add_argument("--config", required=True, help="configs/train/<name>.yaml or a preset name")
    s.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/LATEST")
    s.add_argument("--out", help="output directory (overrides out_dir)")
    s.add_argument("--steps", type=int)
    s.add_argument("--init", help="finetune this checkpoint on the data: processors refitted, vocabulary grown, "
                                  "modules whose shapes change re-initialised (listed)")
    s.add_argument("--keep-processors", action="store_true",
                   help="with --init: keep the base checkpoint's action tokenizer, state normaliser and vocabulary")
    s.add_argument("--capvector", help="capability vector (.safetensors) for the orthogonal penalty")
    s.add_argument("--orth-weight", type=float)
    s.add_argument("--data", action="append", help="dataset file(s), replacing data.paths")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (YAML value)")
    s.add_argument("--stop-after", type=int, help="pause at this step (checkpoint written; continue with --resume)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_train)


def train_config_from_args(args, extra: dict | None = None):
    """--config + --set + the flags + `extra` (a subcommand's own settings), merged by vla.config.merge_overrides."""
    from vla.config import load_train_config, merge_overrides

    over = parse_overrides(args.set)
    for key, val in (("out_dir", args.out), ("steps", args.steps), ("init", getattr(args, "init", None)),
                     ("capvector", getattr(args, "capvector", None)), ("orth_weight", getattr(args, "orth_weight", None))):
        if val is not None:
            over[key] = val
    if getattr(args, "data", None):
        over.setdefault("data", {})["paths"] = list(args.data)
    if getattr(args, "init", None) and not getattr(args, "keep_processors", False) and extra is None:
        over.setdefault("init_refit", True)  # `vla train --init`: finetune on new data (distill passes `extra`)
    return load_train_config(args.config, merge_overrides(over, extra or {}))


def _cmd_train(args) -> int:
    from vla.train import train

    cfg = train_config_from_args(args)
    out = train(cfg, resume=args.resume, progress=not args.no_progress, stop_after=args.stop_after)
    if args.stop_after is None or args.stop_after >= cfg.steps:
        print(f"[vla train] policy written to {out}")
    else:
        print(f"[vla train] paused at step {args.stop_after}; continue with --resume")
    return 0


# --------------------------------------------------------------------------------------------------------------
def add_eval(sub) -> None:
    s = sub.add_parser("eval", help="closed-loop evaluation in simulation (local policy or a policy server)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--policy", help="policy checkpoint directory")
    g.add_argument("--server", help="policy server address, e.g. tcp://127.0.0.1:5555")
    s.add_argument("--task", action="append", required=True, help="task name; repeat or comma-separate")
    s.add_argument("--episodes", type=int, default=50)
    s.add_argument("--replan-every", type=int, help="actions executed per chunk (default: the policy's n_action_steps)")
    s.add_argument("--decoder", help="parallel | parallel-cached | block | pipelined")
    s.add_argument("--decode-steps", type=int, help="decode only the first m timesteps (block-causal models)")
    s.add_argument("--steps-k", type=int, dest="k", help="forward passes of the parallel decoder")
    s.add_argument("--start-blocks", type=int, help="pipelined decoder: blocks in flight at the first pass (default 1)")
    s.add_argument("--ensemble", type=float, default=None, metavar="COEFF",
                   help="temporal ensembling of overlapping chunks (ACT), weights exp(-COEFF * i), i = 0 the "
                        "oldest (with --server: the coefficient of --blend ensemble)")
    s.add_argument("--image-size", type=int, default=128)
    s.add_argument("--workers", type=int, default=1, help="parallel episode processes")
    s.add_argument("--videos", type=int, default=2, help="episodes per task to record as MP4 (the first ones)")
    s.add_argument("--failure-videos", type=int, default=0,
                   help="also record the first N failed episodes per task (to see how a policy fails)")
    s.add_argument("--out", default=None, help="directory for per-episode JSON, summaries and videos (default: "
                                              "eval/<policy directory name>, or eval/server, under the current "
                                              "directory: never inside the checkpoint)")
    s.add_argument("--seed-base", type=int, default=None)
    s.add_argument("--mode", choices=["sync", "async"], default="sync", help="control loop mode (with --server)")
    s.add_argument("--rate", type=float, default=20.0, help="control rate in Hz (async mode)")
    s.add_argument("--blend", choices=["auto", "none", "linear", "ensemble", "inpaint"], default="auto",
                   help="async mode: how a new chunk takes over: none (switch), linear (cross-fade), ensemble (ACT "
                        "temporal ensembling, coefficient --ensemble, default 0.01), inpaint (real-time chunking: the "
                        "actions that run while it is decoded are sent and kept), auto (inpaint when the server's "
                        "model takes a prefix, else none)")
    s.add_argument("--inject-delay-ms", type=float, default=0.0,
                   help="async mode: add this latency to every chunk (study delays of several control steps)")
    s.set_defaults(func=_cmd_eval)


def decode_overrides(args) -> dict:
    d = {}
    if getattr(args, "decoder", None):
        d["decoder"] = args.decoder
    if getattr(args, "decode_steps", None):
        d["decode_steps"] = args.decode_steps
    if getattr(args, "k", None):
        d["steps"] = args.k
    if getattr(args, "start_blocks", None):
        d["start_blocks"] = args.start_blocks
    return d


def _cmd_eval(args) -> int:
    from sim.evaluate import EVAL_SEED_BASE, evaluate_policy_dir, format_table

    tasks = [t for item in args.task for t in item.split(",") if t]
    from sim.tasks import get_task

    for t in tasks:
        get_task(t)
    if (args.blend != "auto" or args.inject_delay_ms) and not (args.server and args.mode == "async"):
        raise SystemExit("--blend and --inject-delay-ms: for the async control loop (--server ... --mode async); a "
                         "local policy is evaluated synchronously")
    if args.server and args.ensemble is not None and args.blend != "ensemble":
        raise SystemExit("--ensemble with --server: the coefficient of --blend ensemble (the async loop's temporal "
                         "ensembling); pass --blend ensemble")
    import os

    out = args.out or os.path.join("eval", os.path.basename(os.path.normpath(args.policy)) if args.policy else "server")
    summaries = []
    for task in tasks:
        if args.policy:
            s = evaluate_policy_dir(args.policy, task, episodes=args.episodes, replan_every=args.replan_every,
                                    decode=decode_overrides(args) or None, image_size=args.image_size,
                                    workers=args.workers, videos=args.videos, out_dir=out,
                                    failure_videos=args.failure_videos, ensemble=args.ensemble,
                                    seed_base=args.seed_base if args.seed_base is not None else EVAL_SEED_BASE)
        else:
            from sim.remote_eval import evaluate_server

            s = evaluate_server(args.server, task, episodes=args.episodes, replan_every=args.replan_every,
                                image_size=args.image_size, videos=args.videos, out_dir=out, mode=args.mode,
                                failure_videos=args.failure_videos,
                                rate_hz=args.rate, blend=args.blend, inject_delay_ms=args.inject_delay_ms,
                                ensemble_coeff=args.ensemble if args.ensemble is not None else 0.01,
                                seed_base=args.seed_base if args.seed_base is not None else EVAL_SEED_BASE)
        summaries.append(s)
    print(format_table(summaries))
    print(json.dumps({"summaries": summaries, "out": out}, indent=2))
    return 0
