"""`vla serve`: registered into the `vla` command by vla/cli/commands.py (imports stay lazy: `vla --help` is fast)."""

from __future__ import annotations

import sys

from vla.cli.decode_args import add_decode_args, decode_overrides


def add_serve(sub) -> None:
    s = sub.add_parser("serve", help="serve a policy over ZeroMQ (and optionally openpi's websocket protocol)")
    s.add_argument("--policy", required=True,
                   help="a checkpoint directory, a training run's folder (its policy/), or a shipped policy's "
                        "name (lift_tiny, ...)")
    s.add_argument("--bind", default="tcp://127.0.0.1:5555",
                   help="ZeroMQ endpoint (default loopback only; another address needs --server-key or --insecure)")
    add_decode_args(s)
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the model's prefix and layers before serving (compiles at start-up, "
                        "seconds to a minute; benchmarks/profile_decode.py --compare-compile measures the gain)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int,
                   help="torch CPU threads (default: 1 on a machine with <= 2 cores, where the server's socket and "
                        "batching threads need the other core; torch's choice elsewhere)")
    s.add_argument("--max-batch", type=int, default=8, help="largest batch formed across clients")
    s.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long a batch waits for requests of other recently active clients "
                        "(a lone client never waits)")
    s.add_argument("--max-message-mb", type=float, default=32.0, help="largest accepted request")
    s.add_argument("--max-queue", type=int, default=256, help="waiting requests before 'overloaded' replies")
    s.add_argument("--rate", type=float, default=20.0, help="suggested control rate sent in the handshake (Hz)")
    s.add_argument("--timing-log", help="append one JSON line of timings per answered request to this file")
    s.add_argument("--openpi-port", type=int, help="also serve openpi's websocket protocol on this port")
    s.add_argument("--openpi-host", default="127.0.0.1")
    s.add_argument("-v", "--verbose", action="store_true", help="log every request's timings")
    s.add_argument("--server-key", help="CurveZMQ: this server's .key_secret (`vla keys generate`)")
    s.add_argument("--authorized-keys", help="CurveZMQ: client public .key file or directory allowed to connect")
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback --bind without keys")
    s.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    import logging
    import os

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    from robot_bridge.robot_cli import start_error
    from robot_bridge.security import ServerKeys, check_bind
    from robot_bridge.serving.server import PolicyServer, ServerConfig
    from vla.policy import Policy, checkpoint_name, read_checkpoint_files, resolve_checkpoint

    path = resolve_checkpoint(args.policy)
    read_checkpoint_files(path)  # a missing or broken checkpoint is reported before anything else, and so are
    keys = ServerKeys.from_args(args.server_key, args.authorized_keys)  # key files and an open bind without keys
    check_bind(args.bind, keys is not None, args.insecure, "--bind")
    if args.openpi_port is not None:
        check_bind(f"tcp://{args.openpi_host}:0", False, args.insecure, "--openpi-host", keyless=True)
    busy = port_in_use(args.bind)  # ... and a busy port, before the model loads
    if busy is not None:
        print(f"vla serve: error: could not start: {start_error(busy, {'--bind': args.bind})}", file=sys.stderr)
        return 2
    threads = args.threads or (1 if (os.cpu_count() or 1) <= 2 else None)
    if threads:
        torch.set_num_threads(threads)
    policy = Policy.from_pretrained(path, device=args.device, decode=decode_overrides(args) or None)
    if args.compile:
        print("[vla serve] compiling the model (torch.compile; seconds to a minute the first time)", flush=True)
        print(f"[vla serve] compiled in {policy.compile_model():.1f} s", flush=True)
    cfg = ServerConfig(bind=args.bind, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                       max_message_bytes=int(args.max_message_mb * 1024 * 1024), max_queue=args.max_queue,
                       suggested_rate_hz=args.rate, name=checkpoint_name(path),
                       timing_log=args.timing_log, openpi_port=args.openpi_port, openpi_host=args.openpi_host,
                       server_secret_key=args.server_key, authorized_keys=args.authorized_keys, insecure=args.insecure)
    server = PolicyServer(policy, config=cfg)
    started: list = []  # a server that never started has nothing to report when it stops: the error line says it
    logging.getLogger("robot_bridge.serving.server").addFilter(
        lambda r: bool(started) or not r.getMessage().startswith("server stopped"))
    tasks = f"; trained on {', '.join(policy.tasks)}" if policy.tasks else ""
    try:
        server.serve_forever(on_start=lambda srv: started.append(print(
            f"[vla serve] {cfg.name} ({policy.decode_cfg.decoder} decoder, chunks of {policy.cfg.chunk_size}{tasks}) "
            f"on {srv.address}" + (f", openpi ws://{cfg.openpi_host}:{srv.openpi.port}" if srv.openpi else "")
            + "; Ctrl-C to stop", flush=True)))
    except (RuntimeError, OSError) as e:  # the start failed (a port taken since the check above, openpi's port)
        endpoints = {"--bind": args.bind, "--openpi-port": f"{args.openpi_host}:{args.openpi_port}"}
        print(f"vla serve: error: could not start: {start_error(e, endpoints)}", file=sys.stderr)
        return 2
    return 0


def port_in_use(bind: str):
    """The zmq error if `bind` (tcp://HOST:PORT) cannot be bound now, else None (the socket is closed at once)."""
    import zmq

    if not bind.startswith("tcp://") or bind.endswith(":0") or bind.endswith(":*"):
        return None
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(bind)
        sock.unbind(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        return None
    except zmq.ZMQError as e:
        if e.errno != zmq.EADDRINUSE:
            return None  # a malformed address or a host that is not ours: the server's own start reports it
        err = RuntimeError(f"could not bind {bind}")
        err.__cause__ = e
        return err
    finally:
        sock.close(0)
        ctx.term()
