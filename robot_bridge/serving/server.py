"""`PolicyServer`: a ZeroMQ ROUTER front end over a `Batcher` (and, optionally, openpi's websocket protocol).

Threads: the socket thread owns the ROUTER socket (decode, validate, answer hello and errors); the worker thread
owns the policy (batched inference) and posts its replies to the socket thread through `robot_bridge.router`'s
outbox and wake-up pipe, so no ZeroMQ socket is ever touched by two threads. A malformed message costs an error
reply, never the server.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import zmq

from robot_bridge import protocol as P
from robot_bridge.lifecycle import serve_until_signal
from robot_bridge.router import BadSenders, RouterCore, split_envelope
from robot_bridge.serving.batcher import Batcher, Job

log = logging.getLogger("robot_bridge.serving.server")


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    max_batch: int = 8
    max_wait_ms: float = 2.0  # only spent waiting for clients active in the last batch_window_s (see batcher.py)
    batch_window_s: float = 1.0
    max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES
    max_queue: int = 256  # waiting requests before OVERLOADED
    suggested_rate_hz: float = 20.0
    name: str | None = None  # model name in the hello metadata
    timing_log: str | None = None  # JSON lines, one per answered infer request
    openpi_port: int | None = None  # also serve openpi's websocket protocol on this port
    openpi_host: str = "127.0.0.1"
    openpi_max_inflight_bytes: int | None = None  # request bytes held at once over all websocket connections (2x max)
    server_secret_key: str | None = None  # CurveZMQ (robot_bridge/security.py): the server's .key_secret
    authorized_keys: str | None = None  # CurveZMQ allow-list: a client .key file or a directory of them
    insecure: bool = False  # allow a non-loopback bind without keys
    # a client (ZeroMQ identity) with more invalid requests than this in one second is muted for mute_s: its
    # messages are dropped unread (no parsing, no reply), so a flood of bad requests costs the others nothing
    max_bad_requests_per_s: int = 50
    mute_s: float = 1.0

    def __post_init__(self):
        if not self.bind.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"bind: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {self.bind!r}")
        from robot_bridge.security import ServerKeys

        ServerKeys.from_args(self.server_secret_key, self.authorized_keys)  # both or neither
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes: expected >= 1024, got {self.max_message_bytes}")
        if self.max_bad_requests_per_s < 1 or self.mute_s < 0:
            raise ValueError(f"max_bad_requests_per_s: expected >= 1, mute_s >= 0; got {self.max_bad_requests_per_s}, "
                             f"{self.mute_s}")


class PolicyServer:
    """Serve `policy` (anything with infer_batch(list[obs]), reset(), metadata) over ZeroMQ.

    server = PolicyServer(policy, bind="tcp://127.0.0.1:0"); server.start(); server.address -> "tcp://127.0.0.1:41234"
    One start per instance: after stop(), serve again with a new PolicyServer (the same port is fine).
    """

    def __init__(self, policy, bind: str = "tcp://127.0.0.1:5555", max_batch: int = 8, max_wait_ms: float = 2.0,
                 max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES, config: ServerConfig | None = None, **kw):
        self.config = config or ServerConfig(bind=bind, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                             max_message_bytes=max_message_bytes, **kw)
        self.policy = policy
        meta = dict(policy.metadata)
        self.spec = P.ObsSpec.from_metadata(meta)
        self.metadata = {
            "protocol_version": P.PROTOCOL_VERSION,
            "model": self.config.name or meta.get("policy_type", type(policy).__name__),
            "action_dim": int(meta["action_dim"]),
            "chunk_size": int(meta["chunk_size"]),
            "n_action_steps": int(meta.get("n_action_steps", meta["chunk_size"])),
            "cameras": {c: list(s) for c, s in meta["cameras"].items()},
            "state_dim": int(meta["state_dim"]),
            # what the actions mean (a checkpoint records it; docs/PROTOCOL.md): clients check it against the robot
            "action_space": {k: v for k, v in (meta.get("action_space") or {"kind": "eef_delta"}).items()
                             if isinstance(v, (str, int, float, bool, list))},
            "prefix_actions": bool(meta.get("prefix_actions")),  # takes prefix_actions (real-time chunking)
            "suggested_rate_hz": self.config.suggested_rate_hz,
            "max_message_bytes": self.config.max_message_bytes,
            "max_batch": self.config.max_batch,
            "policy": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))
                       or (isinstance(v, list) and all(isinstance(x, str) for x in v))},  # + tasks, vocabulary
        }
        self.batcher = Batcher(policy, self.config.max_batch, self.config.max_wait_ms, self.config.max_queue,
                               self.config.batch_window_s)
        self.address: str | None = None
        self.openpi = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # stop requested: new requests get SHUTTING_DOWN
        self._exit = threading.Event()  # socket thread leaves (after the worker answered what it held)
        self._bound = threading.Event()
        self._start_error: BaseException | None = None
        self.router = RouterCore(log)  # the ROUTER socket, its outbox and wake-up pipe, the counters
        self._bad = BadSenders(self.router, self.config.max_bad_requests_per_s, self.config.mute_s)
        self.auth = None  # robot_bridge.security.ServerAuth once bound with CurveZMQ keys
        self._log_file = None
        self._lock = threading.Lock()  # the timing log file
        self._stop_lock = threading.Lock()
        self.counts: collections.Counter = self.router.counts  # received, replied, error:<code>, dropped, mutes
        self.request_log: collections.deque = collections.deque(maxlen=10_000)  # recent infer timings

    @property
    def batch_sizes(self) -> list[int]:
        return list(self.batcher.batch_sizes)

    # ----- lifecycle -----
    def start(self) -> "PolicyServer":
        """Bind and serve in background threads; returns once the socket is bound (raises if binding failed)."""
        if self._thread is not None:
            return self
        from robot_bridge.security import ServerKeys, check_bind

        keys = ServerKeys.from_args(self.config.server_secret_key, self.config.authorized_keys)
        check_bind(self.config.bind, keys is not None, self.config.insecure, "bind")  # refuses an open network bind
        if self.config.openpi_port is not None:  # websockets: no CurveZMQ there
            check_bind(f"tcp://{self.config.openpi_host}:0", False, self.config.insecure, "openpi_host", keyless=True)
        if self.config.timing_log:
            os.makedirs(os.path.dirname(os.path.abspath(self.config.timing_log)), exist_ok=True)
            self._log_file = open(self.config.timing_log, "a")
        self.batcher.start()
        self._thread = threading.Thread(target=self._serve, name="policy-server-socket", daemon=True)
        self._thread.start()
        self._bound.wait(10.0)
        if self._start_error is not None or not self._bound.is_set():
            err = self._start_error
            self.stop()
            raise RuntimeError(f"could not bind {self.config.bind}: {err}") from err
        if self.config.openpi_port is not None:
            from robot_bridge.serving.openpi import OpenPIServer

            openpi = OpenPIServer(self.batcher, self.metadata, self.spec, host=self.config.openpi_host,
                                  port=self.config.openpi_port, max_message_bytes=self.config.max_message_bytes,
                                  max_inflight_bytes=self.config.openpi_max_inflight_bytes)
            try:
                self.openpi = openpi.start()
            except Exception:
                self.stop()
                raise
        log.info("serving %s on %s (max_batch %d, max_wait %.1f ms)%s", self.metadata["model"], self.address,
                 self.config.max_batch, self.config.max_wait_ms,
                 f"; openpi websocket on port {self.openpi.port}" if self.openpi else "")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, answer queued ones with SHUTTING_DOWN, close sockets. Idempotent, thread-safe."""
        self._stop.set()
        with self._stop_lock:
            if self.openpi is not None:
                self.openpi.stop()
                self.openpi = None
            self.batcher.stop(timeout)
            self._exit.set()
            if self._thread is not None:
                self.router.wake()
                self._thread.join(timeout)
                self._thread = None
            if self._log_file is not None:
                with self._lock:
                    self._log_file.close()
                    self._log_file = None

    def serve_forever(self, install_signals: bool = True, on_start=None) -> None:
        """Start (if needed) and block until stop() or SIGINT/SIGTERM; then shut down gracefully. The signal handlers
        go in before the server starts, so a client answered at once can never race them; on_start(self) runs once
        the server is up (e.g. to print its address)."""
        try:
            serve_until_signal(self, self._stop, on_start, install_signals)
        finally:
            log.info("server stopped: %s", dict(self.counts))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ----- socket thread -----
    def _serve(self) -> None:
        try:
            from robot_bridge.security import ServerKeys

            keys = ServerKeys.from_args(self.config.server_secret_key, self.config.authorized_keys)
            self.address = self.router.open(self.config.bind, self.config.max_message_bytes, keys, hwm=1000)
            self.auth = self.router.auth
        except (zmq.ZMQError, ValueError) as e:  # ValueError: a missing or malformed key file
            self._start_error = e
            self._bound.set()
            return
        self._bound.set()
        try:
            while not self._exit.is_set():
                if self.router.poll(100):
                    for frames in self.router.incoming():
                        try:
                            self._handle(frames)
                        except Exception:  # noqa: BLE001 - no message may take the socket thread down
                            log.exception("failed to handle a message")
                            self.router.count("dropped")
            self.router.flush()  # SHUTTING_DOWN answers for queued requests
        finally:
            self.router.close()

    def _handle(self, frames: list[bytes]) -> None:
        t_recv = time.perf_counter()
        self.router.count("received")
        if len(frames) < 2:
            self.router.count("dropped")
            return
        envelope, payload, bad = split_envelope(frames)
        if bad:
            return self.router.error(envelope, P.ErrorCode.BAD_ENVELOPE, bad)
        who = envelope[0]
        if self._bad.muted(who):
            return self.router.count("dropped_muted")
        msg = None
        try:
            if self._stop.is_set():
                raise P.ProtocolError(P.ErrorCode.SHUTTING_DOWN, "server stopping")
            msg = P.unpack(payload, self.config.max_message_bytes)
            req = P.parse_request(msg, self.spec)
        except P.ProtocolError as e:
            if e.code != P.ErrorCode.SHUTTING_DOWN:
                self._bad.note(who)
            return self.router.error(envelope, e.code, e.message, P.request_id(msg))
        except Exception as e:  # noqa: BLE001 - never let a message kill the socket thread
            log.exception("unexpected error while parsing a request")
            return self.router.internal(envelope, e, P.request_id(msg))
        base = {"v": P.PROTOCOL_VERSION, "id": req.id, "episode_id": req.episode_id, "step": req.step,
                "client_time": req.client_time}
        if req.kind == "hello":
            return self.router.send(envelope, {**base, "kind": "hello", "metadata": self.metadata})
        job = Job(kind=req.kind, obs=req.obs or None, t_recv=t_recv,
                  on_done=lambda res, err: self._done(envelope, base, req.kind, t_recv, res, err),
                  tag={"id": req.id, "episode_id": req.episode_id, "step": req.step}, client=envelope[0])
        if not self.batcher.submit(job):
            code = P.ErrorCode.SHUTTING_DOWN if self._stop.is_set() else P.ErrorCode.OVERLOADED
            return self.router.error(envelope, code, f"inference queue full ({self.batcher.pending} waiting)", req.id)

    def _done(self, envelope, base: dict, kind: str, t_recv: float, result, error) -> None:
        """Worker thread: build the reply, hand it to the socket thread."""
        if error is not None:
            self.router.count(f"error:{error[0]}")
            reply = P.error_reply(error[0], error[1], base["id"])
        elif kind == "reset":
            reply = {**base, "kind": "reset", "ok": True}
        else:
            timing = dict(result["timing"])
            timing["server_ms"] = (time.perf_counter() - t_recv) * 1e3
            reply = {**base, "kind": "actions", "actions": result["actions"], "timing": timing}
            self._record(base, timing)
        self.router.post(envelope + [P.pack(reply)])

    def _record(self, base: dict, timing: dict) -> None:
        entry = {"t": time.time(), "id": base["id"], "episode_id": base["episode_id"], "step": base["step"], **timing}
        self.request_log.append(entry)
        log.debug("infer id=%s ep=%s step=%s batch=%d queue=%.1fms model=%.1fms server=%.1fms", base["id"],
                  base["episode_id"], base["step"], timing["batch"], timing["queue_ms"], timing["model_ms"],
                  timing["server_ms"])
        with self._lock:
            if self._log_file is not None:
                self._log_file.write(json.dumps(entry) + "\n")
                self._log_file.flush()
