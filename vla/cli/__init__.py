"""`vla` command line: the app layer on top of everything (docs/ARCHITECTURE.md, "Layers"). Each subcommand imports what
it needs lazily, so `vla --help` is instant.

    vla/cli/__init__.py   main, `envs`, `collect`          commands.py   `train`, `eval` and their shared helpers
    vla/cli/extra.py      `distill`, `capvector`, `export`  serve.py      `serve` (a Policy behind robot_bridge.serving)
    vla/cli/demo.py       `make demo`                       robot_bridge.robot_cli: `robot-server`, `run`, `keys`
    vla/cli/data.py       `data info`, `data show`
"""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_envs(args) -> int:
    from sim.tasks import TASKS

    print(f"{'task':<14}{'horizon':>8}  instruction / description")
    for spec in TASKS.values():
        instr = spec.instruction or "(drawn per episode)"
        print(f"{spec.name:<14}{spec.horizon:>8}  {instr} - {spec.description}")
        if args.verbose:
            print(f"{'':<24}gymnasium id: sim/{spec.name}-v0; privileged objects: {', '.join(spec.object_names)}")
    return 0


def _cmd_collect(args) -> int:
    from sim.collect import collect

    tasks = [t for item in args.task for t in item.split(",") if t]
    res = collect(
        tasks,
        episodes=args.episodes,
        out=args.out,
        image_size=args.image_size,
        cameras=tuple(args.cameras.split(",")),
        noise=args.noise,
        seed=args.seed,
        append=args.append,
        overwrite=args.overwrite,
    )
    summary = {
        "out": res.path,
        "demos": res.demos,
        "attempts": res.attempts,
        "seconds": round(res.seconds, 1),
        "demos_per_min": round(res.demos_per_min, 2),
        "per_task": res.per_task,
        "interrupted": res.interrupted,
    }
    print(json.dumps(summary, indent=2))
    return 130 if res.interrupted else 0


def build_parser() -> argparse.ArgumentParser:
    from robot_bridge.robot_cli import Parser  # --help shows every default

    p = Parser(prog="vla", description="vla-stack: discrete-diffusion VLA policies for robot arms")
    sub = p.add_subparsers(dest="command", metavar="command")

    s = sub.add_parser("envs", help="list the simulated tasks")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=_cmd_envs)

    s = sub.add_parser("collect", help="collect scripted-expert demonstrations (robomimic HDF5)")
    s.add_argument("--task", action="append", required=True, help="task name; repeat or comma-separate to mix")
    s.add_argument("--episodes", type=int, default=200, help="successful demos per task")
    s.add_argument("--out", required=True, help="output .hdf5 path")
    s.add_argument("--image-size", type=int, default=128)
    s.add_argument("--cameras", default="agentview,wrist")
    s.add_argument("--noise", type=float, default=0.05, help="std of Gaussian noise on the expert's arm actions")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--append", action="store_true", help="add demos to an existing file")
    s.add_argument("--overwrite", action="store_true", help="replace an existing file")
    s.set_defaults(func=_cmd_collect)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


_EXTRA_COMMANDS: list = []  # registrars of the subcommands beyond envs/collect, filled by _load_extra_commands()


def _load_extra_commands() -> None:
    from robot_bridge import robot_cli
    from vla.cli import commands, data, extra, libero, serve

    _EXTRA_COMMANDS[:] = [data.add_data, commands.add_train, commands.add_eval, extra.add_distill,
                          extra.add_capvector, extra.add_export, serve.add_serve, robot_cli.add_robot_server,
                          robot_cli.add_run, robot_cli.add_keys, libero.add_libero]


def main(argv: list[str] | None = None) -> int:
    _load_extra_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vla {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
