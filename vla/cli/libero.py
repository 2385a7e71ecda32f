"""`vla libero`: LIBERO's official suites against any policy server, LIBERO demos from our scripted expert.

    vla libero eval libero_object --policy vla/pretrained/<name>          # serves it here, 50 trials x 10 tasks
    vla libero eval libero_object --server tcp://GPU-BOX:5555 --shard 0/4 --workers 2   # a quarter, on this machine
    vla libero merge eval/libero/run-a eval/libero/run-b --out eval/libero/all         # shards -> one table
    vla libero collect --suite libero_object --demos 50 --out data/libero_object      # expert demos, LIBERO's layout

The env side runs in LIBERO's own venv (`make libero`); registered into `vla` by vla/cli/__init__.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time


def add_libero(sub) -> None:
    from sim.libero.conventions import CONVENTIONS, SUITES

    lib = sub.add_parser("libero", help="LIBERO suites: evaluate a served policy, merge shards, collect expert demos")
    lsub = lib.add_subparsers(dest="libero_command", metavar="libero_command")

    e = lsub.add_parser("eval", help="run a LIBERO suite against a policy server (openpi's conventions by default)")
    e.add_argument("suite", help=f"one of {', '.join(SUITES)}")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", help="a running policy server, e.g. tcp://127.0.0.1:5555")
    src.add_argument("--policy", help="a checkpoint to serve here for the run (`vla serve` on a free loopback port)")
    e.add_argument("--conventions", default="openpi", choices=sorted(CONVENTIONS),
                   help="openpi's examples/libero (default) or LeRobot's envs/libero: step limits differ on spatial")
    e.add_argument("--trials", type=int, help="trials per task; trial i uses init state i (default 50)")
    e.add_argument("--tasks", default="all", help="task ids, e.g. 0,3 (default all)")
    e.add_argument("--workers", type=int, default=1, help="parallel env processes on this machine (default 1)")
    e.add_argument("--shard", default="0/1",
                   help="K/N: this machine runs every N-th (task, trial) from K (default 0/1)")
    e.add_argument("--image-size", type=int, help="render size in px (default 256, as both peers)")
    e.add_argument("--replan-every", type=int, help="actions executed per chunk (default 5)")
    e.add_argument("--max-steps", type=int, help="override the suite's step limit (smoke runs only)")
    e.add_argument("--camera-map", default="", help="policy camera=LIBERO key, comma separated, where names differ")
    e.add_argument("--videos", type=int, default=1, help="MP4s kept per task and outcome (default 1)")
    e.add_argument("--timeout-ms", type=float, default=20_000.0,
                   help="longest wait for one chunk (x2 tries) before the run stops with exit 3 (default 20000)")
    e.add_argument("--threads", type=int, default=1, help="torch threads of the server --policy starts (default 1)")
    e.add_argument("--out", help="episodes, videos and results (default eval/libero/<suite>-<policy>-<conventions>); "
                                  "rerunning into the same folder resumes")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.set_defaults(func=_cmd_eval)

    m = lsub.add_parser("merge", help="merge the episodes of several runs/shards into one table")
    m.add_argument("dirs", nargs="+", help="folders holding episodes*.jsonl")
    m.add_argument("--out", required=True, help="folder for the merged episodes.jsonl, results.json and PNG")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_merge)

    # every argument goes on to `python -m sim.libero.collect` in LIBERO's venv ('+' prefix: none is parsed here)
    c = lsub.add_parser("collect", prefix_chars="+", add_help=False,
                        help="scripted-expert demos on a LIBERO suite, written in LIBERO's native HDF5 layout")
    c.add_argument("rest", nargs="*", help="arguments of `python -m sim.libero.collect` (its --help)")
    c.set_defaults(func=_cmd_collect)
    lib.set_defaults(func=lambda args: (lib.print_help(), 2)[1])


def _default_out(suite: str, name: str, conventions: str) -> str:
    return os.path.join("eval", "libero", f"{suite}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{conventions}")


def _policy_name(path: str) -> str:
    """A name that tells runs apart: `runs/x/policy` -> `x`."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    return parts[-2] if parts[-1] in ("policy", "checkpoint", "last") and len(parts) > 1 else parts[-1]


def _start_server(policy: str, threads: int, log_path: str) -> tuple[subprocess.Popen, str]:
    """`vla serve` on a free loopback port, its output in `log_path`; returns once it listens."""
    from robot_bridge.net import free_port
    from vla.policy import resolve_checkpoint

    path = resolve_checkpoint(policy)  # a clear error before any process starts
    addr = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "vla.cli", "serve", "--policy", path, "--bind", addr, "--threads", str(threads)]
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log_path) as f:
            if any(line.startswith("[vla serve]") for line in f):
                return proc, addr
        time.sleep(0.2)
    proc.kill()
    with open(log_path) as f:
        tail = [ln.strip() for ln in f if ln.strip()][-2:]
    raise RuntimeError(f"`vla serve --policy {policy}` did not start: {' | '.join(tail)} (log: {log_path})")


def _server_meta(address: str) -> dict:
    from robot_bridge.client import PolicyClient

    with PolicyClient(address, timeout_ms=5000, retries=1) as c:
        try:
            return c.hello()
        except TimeoutError:
            raise ConnectionError(f"the policy server at {address} did not answer (2 x 5 s); "
                                  f"is `vla serve` running there?") from None


def _cmd_eval(args) -> int:
    from sim.libero import results as R
    from sim.libero.runner import LiberoError, libero_venv, run_suite

    from sim.libero.conventions import episode_settings
    from sim.libero.runner import check_out_dir
    from sim.libero.worker import PolicyMismatch, camera_mapping, check_policy, parse_camera_map, weights_of

    libero_venv()  # says `make libero` before anything starts
    settings = episode_settings(args.suite, args.conventions, args.image_size, args.replan_every, args.max_steps)
    if args.out:
        check_out_dir(args.out, settings)  # a folder of other settings is refused before a server starts
    server_proc = None
    try:
        if args.policy:
            name = _policy_name(args.policy)
            out = args.out or _default_out(args.suite, name, args.conventions)
            server_proc, address = _start_server(args.policy, args.threads, os.path.join(out, "serve.log"))
        else:
            address = args.server
        try:
            meta = _server_meta(address)
        except ConnectionError as e:
            print(f"vla libero eval: error: {e}", file=sys.stderr)
            return 3
        try:
            check_policy(meta)
            camera_mapping(list(meta.get("cameras") or ()), parse_camera_map(args.camera_map))
        except PolicyMismatch as e:
            print(f"vla libero eval: error: the policy does not fit LIBERO: {e}", file=sys.stderr)
            return 4
        if not args.policy:
            name = str(meta.get("model") or "server")
            out = args.out or _default_out(args.suite, name, args.conventions)
        print(f"[vla libero] {args.suite} with {name} ({address}), {args.conventions} conventions -> {out}",
              file=sys.stderr, flush=True)
        try:
            summary = run_suite(args.suite, address, out, conventions=args.conventions, trials=args.trials,
                                tasks=args.tasks, workers=args.workers, shard=args.shard, image_size=args.image_size,
                                replan_every=args.replan_every, max_steps=args.max_steps, camera_map=args.camera_map,
                                videos=args.videos, timeout_ms=args.timeout_ms,
                                policy_weights=weights_of(meta))
        except LiberoError as e:
            print(f"vla libero eval: error: {e}", file=sys.stderr)
            return e.code
    finally:
        if server_proc is not None:
            server_proc.terminate()
            try:
                server_proc.wait(10)
            except subprocess.TimeoutExpired:
                server_proc.kill()
    extra = {"policy": {"name": name, "parameters": meta.get("parameters"), "chunk_size": meta.get("chunk_size"),
                        "cameras": meta.get("cameras")},
             "command": "vla " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    summary.update(extra)
    _write(summary, out)
    print(json.dumps(summary, indent=1) if args.json else R.format_table(summary))
    return 0


def _write(summary: dict, out: str) -> None:
    from sim.libero import results as R
    from sim.libero.conventions import get_conventions
    from vla.atomic import write_json_atomic

    summary["conventions_table"] = get_conventions(summary["conventions"]).to_dict()
    write_json_atomic(os.path.join(out, "results.json"), summary)
    if summary.get("per_task"):
        R.bar_chart(summary, os.path.join(out, "success.png"))


def _cmd_merge(args) -> int:
    from sim.libero import results as R

    records = R.read_episodes(args.dirs)
    if not records:
        print(f"vla libero merge: error: no episodes*.jsonl records under {', '.join(args.dirs)}", file=sys.stderr)
        return 2
    summary = R.summarize(records, {"merged_from": [os.path.abspath(d) for d in args.dirs]})
    os.makedirs(args.out, exist_ok=True)
    tmp = os.path.join(args.out, "episodes.merged.jsonl.tmp")
    with open(tmp, "w") as f:
        for r in sorted(records, key=lambda r: (r["task_id"], r["trial"])):
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, os.path.join(args.out, "episodes.merged.jsonl"))
    _write(summary, args.out)
    print(json.dumps(summary, indent=1) if args.json else R.format_table(summary))
    return 0


def _cmd_collect(args) -> int:
    from sim.libero.runner import ROOT, libero_venv, worker_env

    venv = libero_venv()
    cmd = [os.path.join(venv, "bin", "python"), "-m", "sim.libero.collect", *args.rest]
    return subprocess.call(cmd, cwd=ROOT, env=worker_env(venv))
