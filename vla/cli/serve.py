"""`vla serve`: registered into the `vla` command by vla/cli/commands.py (imports stay lazy: `vla --help` is fast)."""

from __future__ import annotations


def add_serve(sub) -> None:
    s = sub.add_parser("serve", help="serve a policy over ZeroMQ (and optionally openpi's websocket protocol)")
    s.add_argument("--policy", required=True, help="policy checkpoint directory")
    s.add_argument("--bind", default="tcp://127.0.0.1:5555",
                   help="ZeroMQ endpoint (default loopback only; another address needs --server-key or --insecure)")
    s.add_argument("--decoder", help="parallel | parallel-cached | block | pipelined")
    s.add_argument("--decode-steps", type=int, help="decode only the first m timesteps (block-causal models)")
    s.add_argument("--steps-k", type=int, dest="k", help="forward passes of the parallel decoder")
    s.add_argument("--start-blocks", type=int, help="pipelined decoder: blocks in flight at the first pass (default 1)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--max-batch", type=int, default=8, help="largest batch formed across clients")
    s.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits for requests of other recently active clients (a lone client never waits)")
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

    from robot_bridge.serving.server import PolicyServer, ServerConfig
    from vla.cli.commands import decode_overrides
    from vla.policy import Policy

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = Policy.from_pretrained(args.policy, device=args.device, decode=decode_overrides(args) or None)
    cfg = ServerConfig(bind=args.bind, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                       max_message_bytes=int(args.max_message_mb * 1024 * 1024), max_queue=args.max_queue,
                       suggested_rate_hz=args.rate, name=os.path.basename(os.path.normpath(args.policy)),
                       timing_log=args.timing_log, openpi_port=args.openpi_port, openpi_host=args.openpi_host,
                       server_secret_key=args.server_key, authorized_keys=args.authorized_keys, insecure=args.insecure)
    server = PolicyServer(policy, config=cfg)
    server.serve_forever(on_start=lambda srv: print(
        f"[vla serve] {cfg.name} ({policy.decode_cfg.decoder} decoder) on {srv.address}"
        + (f", openpi ws://{cfg.openpi_host}:{srv.openpi.port}" if srv.openpi else "") + "; Ctrl-C to stop", flush=True))
    return 0
