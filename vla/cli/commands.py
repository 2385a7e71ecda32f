"""`vla train` and `vla eval`, and the helpers the other subcommands share (overrides, decoder options)."""

from __future__ import annotations

import json

from vla.cli.decode_args import add_decode_args, decode_overrides


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
    s.add_argument("--threads", type=int, help="torch CPU threads (the config's `threads`; default: torch's choice, "
                                               "which oversubscribes a loaded machine)")
    s.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_train)


def train_config_from_args(args):
    """`vla train`'s config: --config, then --set (nested or legacy flat keys), then the flags, merged by
    vla.config.merge_overrides (a later one wins)."""
    from vla.config import load_train_config, upgrade_legacy

    over = upgrade_legacy(parse_overrides(args.set))
    flags = {"out_dir": args.out, "steps": args.steps, "init": getattr(args, "init", None),
             "threads": getattr(args, "threads", None), "orth": {"capvector": getattr(args, "capvector", None),
                                                                 "weight": getattr(args, "orth_weight", None)}}
    for key, val in flags.items():
        if isinstance(val, dict):
            val = {k: v for k, v in val.items() if v is not None}
            if val:
                over.setdefault(key, {}).update(val)
        elif val is not None:
            over[key] = val
    if getattr(args, "data", None):
        over.setdefault("data", {})["paths"] = list(args.data)
    if getattr(args, "init", None) and not getattr(args, "keep_processors", False):
        over.setdefault("init_refit", True)  # `vla train --init`: finetune on new data
    return load_train_config(args.config, over)


def run_training(cfg, resume: bool = False, overwrite: bool = False, progress: bool = True,
                 stop_after: int | None = None) -> str:
    """The one way the commands train (`vla train`, `vla distill`): a config in, the final policy's folder out (or
    the run's folder, paused at stop_after). The run's --out is checked first (check_run_dir)."""
    from vla.train import train

    check_run_dir(cfg.out_dir, resume, overwrite)
    return train(cfg, resume=resume, progress=progress, stop_after=stop_after)


def check_run_dir(out_dir: str, resume: bool, overwrite: bool) -> None:
    """A training run's --out: refuse to train over an earlier run unless told to continue it or start over (then the
    old run goes first, so no checkpoint of it is ever resumed by mistake)."""
    import os
    import shutil

    if resume or not os.path.isdir(out_dir):
        return
    held = [n for n in ("policy", "checkpoints", "metrics.csv", "train_config.json")
            if os.path.exists(os.path.join(out_dir, n))]
    if not held:
        return
    if overwrite:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: one rank removes it
            print(f"[vla] --overwrite: removing the earlier run in {out_dir}", flush=True)
            shutil.rmtree(out_dir)
        return
    latest = os.path.join(out_dir, "checkpoints", "LATEST")
    step = open(latest).read().strip() if os.path.isfile(latest) else None
    raise FileExistsError(f"--out {out_dir}: holds a training run ({', '.join(held)}"
                          f"{f'; last checkpoint {step}' if step else ''}); --resume to continue it, --overwrite to "
                          f"start over, or choose another --out")


def _cmd_train(args) -> int:
    cfg = train_config_from_args(args)
    out = run_training(cfg, resume=args.resume, overwrite=getattr(args, "overwrite", False),
                       progress=not args.no_progress, stop_after=args.stop_after)
    if args.stop_after is None or args.stop_after >= cfg.steps:
        print(f"[vla train] policy written to {out}")
    else:
        print(f"[vla train] paused at step {args.stop_after}; continue with --resume")
    return 0


# --------------------------------------------------------------------------------------------------------------
def add_eval(sub) -> None:
    s = sub.add_parser("eval", help="closed-loop evaluation in simulation (local policy or a policy server)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--policy", help="a checkpoint directory, a training run's folder (its policy/), or a shipped "
                                        "policy's name (lift_tiny, ...)")
    g.add_argument("--server", help="policy server address, e.g. tcp://127.0.0.1:5555")
    s.add_argument("--task", action="append", required=True, help="task name; repeat or comma-separate")
    s.add_argument("--episodes", type=int, default=50)
    s.add_argument("--replan-every", type=int, help="actions executed per chunk (default: the policy's n_action_steps)")
    add_decode_args(s)
    s.add_argument("--ensemble", type=float, default=None, metavar="COEFF",
                   help="temporal ensembling of overlapping chunks (ACT), weights exp(-COEFF * i), i = 0 the "
                        "oldest (with --server: the coefficient of --blend ensemble)")
    s.add_argument("--image-size", type=int, default=128)
    s.add_argument("--workers", type=int, default=1, help="parallel episode processes")
    s.add_argument("--videos", type=int, default=2, help="episodes per task to record as MP4 (the first ones)")
    s.add_argument("--failure-videos", type=int, default=0,
                   help="also record the first N failed episodes per task (to see how a policy fails)")
    s.add_argument("--out", default=None, help="directory for per-episode JSON, summaries and videos (default: "
                                              "eval/<policy or run name>, or eval/server, under the current "
                                              "directory, with -2, -3... when taken: never inside the checkpoint, "
                                              "never over an earlier evaluation)")
    s.add_argument("--seed-base", type=int, default=None)
    s.add_argument("--mode", choices=["sync", "async"], default="sync",
                   help="with --server: sync (exact, the same episodes as a local --policy) or async (the 20 Hz "
                        "control loop as on an arm)")
    s.add_argument("--timeout", type=float, default=10.0,
                   help="with --server: seconds to wait for the server (handshake, each request, an async episode "
                        "without chunks) before stopping with exit 3")
    s.add_argument("--rate", type=float, default=20.0, help="control rate in Hz (async mode)")
    s.add_argument("--blend", choices=["auto", "none", "linear", "ensemble", "inpaint"], default="auto",
                   help="async mode: how a new chunk takes over: none (switch), linear (cross-fade), ensemble (ACT "
                        "temporal ensembling, coefficient --ensemble, default 0.01), inpaint (real-time chunking: the "
                        "actions that run while it is decoded are sent and kept), auto (inpaint when the server's "
                        "model takes a prefix, else none)")
    s.add_argument("--inject-delay-ms", type=float, default=0.0,
                   help="async mode: add this latency to every chunk (study delays of several control steps)")
    s.add_argument("--json", action="store_true", help="also print the summaries as JSON")
    s.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    import os

    from sim.evaluate import format_table

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
    import sys

    from robot_bridge.client import PolicyServerLost, policy_warnings

    if args.policy:
        from vla.policy import checkpoint_name, read_checkpoint_files, resolve_checkpoint, vocabulary_of

        args.policy = resolve_checkpoint(args.policy)
        config, _, tok = read_checkpoint_files(args.policy)
        meta = {"tasks": config.get("tasks"), "vocabulary": vocabulary_of(tok)}
        for t in tasks:
            for w in policy_warnings(meta, task=t):
                print(f"vla eval: warning: {w}", file=sys.stderr, flush=True)
    out = args.out or fresh_dir(os.path.join("eval", checkpoint_name(args.policy) if args.policy else "server"))
    summaries: list[dict] = []
    try:
        _eval_tasks(args, tasks, out, summaries)
    except PolicyServerLost as e:
        print(f"vla eval: {e}" + (f"; the episodes finished so far are in {out}" if summaries else ""),
              file=sys.stderr, flush=True)
        return 3
    print(format_table(summaries))
    if args.json:
        print(json.dumps({"summaries": summaries, "out": out}, indent=2))
    else:
        print(f"per-episode results, summaries and videos: {out} (--json prints the summaries as JSON)")
    return 0


def fresh_dir(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ... : the first that does not exist yet (default output folders never collide)."""
    import os

    if not os.path.exists(path):
        return path
    k = 2
    while os.path.exists(f"{path}-{k}"):
        k += 1
    return f"{path}-{k}"


def _eval_tasks(args, tasks: list[str], out: str, summaries: list[dict]) -> None:
    """Evaluate each task in turn, appending its summary (those finished stay when a later one fails)."""
    import sys

    from sim.evaluate import EVAL_SEED_BASE, evaluate_policy_dir

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
                                seed_base=args.seed_base if args.seed_base is not None else EVAL_SEED_BASE,
                                timeout_ms=args.timeout * 1e3, warn=lambda w: print(f"vla eval: warning: {w}",
                                                                                      file=sys.stderr, flush=True))
        summaries.append(s)
