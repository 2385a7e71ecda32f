"""`PolicyServer`: a ZeroMQ ROUTER front end over a `Batcher` (and, optionally, openpi's websocket protocol).

Threads: the socket thread owns the ROUTER socket (decode, validate, answer hello and errors); the worker thread
owns the policy (batched inference). Replies travel back through a queue plus a wake-up pipe polled next to
the socket, so no ZeroMQ socket is ever touched by two threads. A malformed message costs an error reply,
never the server.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

import zmq

from robot_bridge import protocol as P
from robot_bridge.lifecycle import serve_until_signal
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
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._log_file = None
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()  # received, replied, error:<code>, dropped
        self._bad: dict[bytes, collections.deque] = {}  # identity -> times of its recent invalid requests
        self._muted: dict[bytes, float] = {}  # identity -> time.monotonic() until which it is muted
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
                self._wake()
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

    def __del__(self):
        for fd in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # ----- socket thread -----
    def _serve(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        self.auth = None
        try:
            from robot_bridge.security import ServerAuth, ServerKeys

            keys = ServerKeys.from_args(self.config.server_secret_key, self.config.authorized_keys)
            if keys is not None:  # CurveZMQ: encryption, and only allow-listed client keys get through
                self.auth = ServerAuth(ctx, keys)
                self.auth.secure(sock)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)  # larger frames drop the peer
            sock.setsockopt(zmq.RCVHWM, 1000)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.bind(self.config.bind)
            self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except (zmq.ZMQError, ValueError) as e:  # ValueError: a missing or malformed key file
            self._start_error = e
            sock.close(0)
            if self.auth is not None:
                self.auth.stop()
            ctx.term()
            self._bound.set()
            return
        self._bound.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._exit.is_set():
                events = dict(poller.poll(100))
                if events.get(self._wake_r):
                    try:
                        os.read(self._wake_r, 65536)
                    except BlockingIOError:
                        pass
                self._flush(sock)
                if events.get(sock):
                    for _ in range(256):  # bounded, so replies interleave with a flood of requests
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            self._handle(sock, frames)
                        except Exception:  # noqa: BLE001 - no message may take the socket thread down
                            log.exception("failed to handle a message")
                            self._count("dropped")
            self._flush(sock)  # SHUTTING_DOWN answers for queued requests
        finally:
            sock.close(0)
            if self.auth is not None:
                self.auth.stop()
            ctx.term()

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _flush(self, sock) -> None:
        while True:
            try:
                frames = self._outbox.get_nowait()
            except queue.Empty:
                return
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
                self._count("replied")
            except zmq.ZMQError:
                self._count("dropped")  # peer gone or its queue full: the client times out and retries

    def _send(self, sock, envelope: list[bytes], reply: dict) -> None:
        try:
            sock.send_multipart(envelope + [P.pack(reply)], zmq.NOBLOCK)
            self._count("replied")
        except zmq.ZMQError:
            self._count("dropped")

    def _error(self, sock, envelope, code: str, message: str, rid=None) -> None:
        self._count(f"error:{code}")
        log.debug("error %s: %s", code, message)
        self._send(sock, envelope, P.error_reply(code, message, rid))

    def _handle(self, sock, frames: list[bytes]) -> None:
        t_recv = time.perf_counter()
        self._count("received")
        if len(frames) < 2:
            self._count("dropped")
            return
        if len(frames) == 2:
            envelope, payload = frames[:1], frames[1]
        elif len(frames) == 3 and frames[1] == b"":
            envelope, payload = frames[:2], frames[2]  # REQ client: identity, empty delimiter, payload
        else:
            env = frames[:2] if frames[1] == b"" else frames[:1]
            return self._error(sock, env, P.ErrorCode.BAD_ENVELOPE,
                               f"expected one payload frame, got {len(frames) - len(env)}")
        who = envelope[0]
        if who in self._muted:
            if time.monotonic() < self._muted[who]:
                return self._count("dropped_muted")
            del self._muted[who]
        msg = None
        try:
            if self._stop.is_set():
                raise P.ProtocolError(P.ErrorCode.SHUTTING_DOWN, "server stopping")
            msg = P.unpack(payload, self.config.max_message_bytes)
            req = P.parse_request(msg, self.spec)
        except P.ProtocolError as e:
            if e.code != P.ErrorCode.SHUTTING_DOWN:
                self._note_bad(who)
            return self._error(sock, envelope, e.code, e.message, P.request_id(msg))
        except Exception as e:  # noqa: BLE001 - never let a message kill the socket thread
            log.exception("unexpected error while parsing a request")
            return self._error(sock, envelope, P.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"[:300],
                               P.request_id(msg))
        base = {"v": P.PROTOCOL_VERSION, "id": req.id, "episode_id": req.episode_id, "step": req.step,
                "client_time": req.client_time}
        if req.kind == "hello":
            return self._send(sock, envelope, {**base, "kind": "hello", "metadata": self.metadata})
        job = Job(kind=req.kind, obs=req.obs or None, t_recv=t_recv,
                  on_done=lambda res, err: self._done(envelope, base, req.kind, t_recv, res, err),
                  tag={"id": req.id, "episode_id": req.episode_id, "step": req.step}, client=envelope[0])
        if not self.batcher.submit(job):
            code = P.ErrorCode.SHUTTING_DOWN if self._stop.is_set() else P.ErrorCode.OVERLOADED
            return self._error(sock, envelope, code, f"inference queue full ({self.batcher.pending} waiting)", req.id)

    def _note_bad(self, who: bytes) -> None:
        now = time.monotonic()
        if len(self._bad) > 4096:
            self._bad.clear()
        q = self._bad.setdefault(who, collections.deque())
        q.append(now)
        while q and now - q[0] > 1.0:
            q.popleft()
        if len(q) > self.config.max_bad_requests_per_s:
            self._muted[who] = now + self.config.mute_s
            q.clear()
            self._count("mutes")
            log.warning("client %s: more than %d invalid requests in 1 s: its messages are dropped unread for %.1f s",
                        who.hex()[:16], self.config.max_bad_requests_per_s, self.config.mute_s)

    def _done(self, envelope, base: dict, kind: str, t_recv: float, result, error) -> None:
        """Worker thread: build the reply, hand it to the socket thread."""
        if error is not None:
            self._count(f"error:{error[0]}")
            reply = P.error_reply(error[0], error[1], base["id"])
        elif kind == "reset":
            reply = {**base, "kind": "reset", "ok": True}
        else:
            timing = dict(result["timing"])
            timing["server_ms"] = (time.perf_counter() - t_recv) * 1e3
            reply = {**base, "kind": "actions", "actions": result["actions"], "timing": timing}
            self._record(base, timing)
        self._outbox.put(envelope + [P.pack(reply)])
        self._wake()

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
