"""`RobotServer`: runs beside the arm. Takes latest-wins commands, publishes state at a fixed rate, holds the arm
when commands stop (watchdog), e-stops on request; every action passes the robot's safety layer.

Threads: the control thread owns both sockets (ROUTER for requests, PUB for state) and the robot (SDKs are rarely
thread-safe). Camera frames for `observe` replies are read on a second thread, so a slow camera never delays a
command or the watchdog; its replies return through a queue plus a wake-up pipe, like PolicyServer's.

Modes: idle (connected, no command yet; after reset/release) -> active (commands flowing) -> holding (watchdog:
no valid command for watchdog_ms) -> active again on the next valid command. estopped and fault latch until
`release`. A malformed message costs an error reply, never the server.

Pose monitor: every state tick the measured pose is checked (Robot.pose_violation: the end effector against the
workspace box, the joints against their limits). Leaving them stops the arm (Robot.stop) and latches a fault, logged
and counted (`pose_faults`). After a release the arm may walk back in, never further out: the monitor faults again
as soon as the violation grows past what it was at the release.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq

from robot_bridge import protocol as P
from robot_bridge import robot_protocol as RP
from robot_bridge.lifecycle import serve_until_signal
from robot_bridge.robots.base import RobotError, RobotStopped
from robot_bridge.safety import UnsafeAction
from robot_bridge.security import ServerAuth, ServerKeys, check_bind

log = logging.getLogger("robot_bridge.robot_server")


@dataclass(frozen=True)
class RobotServerConfig:
    bind: str = "tcp://127.0.0.1:5560"
    state_bind: str | None = None  # state publications; default: bind's port + 1 (port 0: any free port)
    rate_hz: float = 50.0  # state publication rate; also the control thread's longest sleep
    watchdog_ms: float = 100.0  # no valid command for this long while active -> hold
    max_command_age_ms: float = 100.0  # commands older than this (client stamp vs. server clock) are dropped
    max_clock_skew_ms: float = 50.0  # commands stamped further in the future are dropped (clocks disagree)
    max_message_bytes: int = 1 << 20
    server_secret_key: str | None = None  # CurveZMQ: the server's .key_secret
    authorized_keys: str | None = None  # CurveZMQ: client .key file or directory (the allow-list)
    insecure: bool = False  # allow a non-loopback bind without keys
    name: str | None = None

    def __post_init__(self):
        for f in ("bind", "state_bind"):
            v = getattr(self, f)
            if v is not None and not v.startswith(("tcp://", "ipc://", "inproc://")):
                raise ValueError(f"{f}: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {v!r}")
        if not 1 <= self.rate_hz <= 1000:
            raise ValueError(f"rate_hz: expected 1..1000, got {self.rate_hz}")
        if not 5 <= self.watchdog_ms <= 10_000:
            raise ValueError(f"watchdog_ms: expected 5..10000, got {self.watchdog_ms}")
        if not self.max_command_age_ms > 0 or self.max_clock_skew_ms < 0:
            raise ValueError("max_command_age_ms: expected > 0; max_clock_skew_ms: expected >= 0")
        ServerKeys.from_args(self.server_secret_key, self.authorized_keys)  # both or neither

    @property
    def keys(self) -> ServerKeys | None:
        return ServerKeys.from_args(self.server_secret_key, self.authorized_keys)

    def resolved_state_bind(self) -> str:
        if self.state_bind:
            return self.state_bind
        if self.bind.startswith("tcp://"):
            host, port = self.bind[len("tcp://"):].rsplit(":", 1)
            return f"tcp://{host}:{0 if port in ('0', '*') else int(port) + 1}"
        return self.bind + "-state"


class RobotServer:
    """server = RobotServer(robot, RobotServerConfig(bind="tcp://127.0.0.1:0")).start(); server.address"""

    def __init__(self, robot, config: RobotServerConfig | None = None, **kw):
        self.config = config or RobotServerConfig(**kw)
        self.robot = robot
        check_bind(self.config.bind, self.config.keys is not None, self.config.insecure, "bind")
        check_bind(self.config.resolved_state_bind(), self.config.keys is not None, self.config.insecure, "state_bind")
        self.address: str | None = None
        self.state_address: str | None = None
        self.mode = "idle"
        self.hold_reason: str | None = None
        self.fault: str | None = None
        self.counts: collections.Counter = collections.Counter()
        self.applied_log: collections.deque = collections.deque(maxlen=100_000)  # one dict per applied command
        self.watchdog = {"ms": self.config.watchdog_ms, "events": 0, "last_reaction_ms": None,
                         "max_reaction_ms": None, "t_hold": None}
        self.pose_monitor = {"events": 0, "last": None, "last_reaction_ms": None}
        self._pose_allowance: dict[str, float] = {}  # after a release outside the limits: kind -> excess allowed
        self.last_applied: dict | None = None
        self.auth: ServerAuth | None = None
        self._last_valid: float | None = None  # time.monotonic() of the last applied command
        self._pub_seq = 0
        self._thread: threading.Thread | None = None
        self._observer: threading.Thread | None = None
        self._jobs: queue.Queue = queue.Queue(maxsize=64)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._exit = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # ----- lifecycle -----
    def start(self) -> "RobotServer":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="robot-server", daemon=True)
        self._thread.start()
        self._ready.wait(60.0)
        if self._start_error is not None or not self._ready.is_set():
            err = self._start_error
            self.stop()
            raise RuntimeError(f"robot server could not start on {self.config.bind}: {err}") from err
        self._observer = threading.Thread(target=self._observe_worker, name="robot-observer", daemon=True)
        self._observer.start()
        log.info("robot server (%s) on %s, state on %s; watchdog %.0f ms, commands older than %.0f ms dropped%s",
                 self.robot.name, self.address, self.state_address, self.config.watchdog_ms,
                 self.config.max_command_age_ms, "; CurveZMQ" if self.auth else "")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._exit.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._observer is not None:
            self._jobs.put(None)
            self._observer.join(timeout)
            self._observer = None

    def serve_forever(self, on_start=None) -> None:
        """Block until SIGINT/SIGTERM (handlers installed before the start: no window) or stop()."""
        try:
            serve_until_signal(self, self._exit, on_start)
        finally:
            log.info("robot server stopped: %s", dict(self.counts))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # ----- control thread -----
    def _run(self) -> None:
        ctx = zmq.Context()
        router = pub = None
        try:
            if self.config.keys is not None:
                self.auth = ServerAuth(ctx, self.config.keys)
            router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
            for s in (router, pub):
                s.setsockopt(zmq.LINGER, 0)
                if self.auth:
                    self.auth.secure(s)
            router.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
            pub.setsockopt(zmq.SNDHWM, 10)
            router.bind(self.config.bind)
            pub.bind(self.config.resolved_state_bind())
            self.address = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self.state_address = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.robot.connect()
            self._allow_current_pose("started")
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._start_error = e
            for s in (router, pub):
                if s is not None:
                    s.close(0)
            if self.auth:
                self.auth.stop()
            ctx.term()
            self._ready.set()
            return
        self._router, self._pub = router, pub
        self._ready.set()
        period = 1.0 / self.config.rate_hz
        next_pub = time.monotonic()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._exit.is_set():
                now = time.monotonic()
                wait = next_pub - now
                if self.mode == "active" and self._last_valid is not None:
                    wait = min(wait, self._last_valid + self.config.watchdog_ms / 1e3 - now)
                events = dict(poller.poll(max(0, int(wait * 1e3 + 0.999))))
                if events.get(self._wake_r):
                    try:
                        os.read(self._wake_r, 65536)
                    except BlockingIOError:
                        pass
                self._flush()
                if events.get(router):
                    batch = []
                    for _ in range(256):
                        try:
                            batch.append(router.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                    self._process(batch)
                self._check_watchdog()
                now = time.monotonic()
                if now >= next_pub:
                    self._publish()
                    next_pub += period
                    if next_pub < now:  # fell behind (a slow robot call): re-anchor, don't burst
                        next_pub = now + period
        finally:
            try:
                self.robot.hold()
                self.robot.disconnect()
            except Exception:  # noqa: BLE001 - shutting down: report, keep closing
                log.exception("robot disconnect failed")
            router.close(0)
            pub.close(0)
            if self.auth:
                self.auth.stop()
            ctx.term()

    def _flush(self) -> None:
        while True:
            try:
                frames = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send_frames(frames)

    def _send_frames(self, frames: list[bytes]) -> None:
        try:
            self._router.send_multipart(frames, zmq.NOBLOCK)
            self.counts["replied"] += 1
        except zmq.ZMQError:
            self.counts["reply_dropped"] += 1

    def _send(self, envelope: list[bytes], msg: dict) -> None:
        self._send_frames(envelope + [P.pack(msg)])

    def _error(self, envelope, code: str, message: str, rid=None) -> None:
        self.counts[f"error:{code}"] += 1
        log.debug("error %s: %s", code, message)
        self._send(envelope, RP.error(code, message, rid))

    def _process(self, batch: list[list[bytes]]) -> None:
        """Parse a batch in arrival order; of its commands only the newest is applied (latest wins)."""
        parsed = []
        for frames in batch:
            self.counts["received"] += 1
            if len(frames) == 2:
                envelope, payload = frames[:1], frames[1]
            elif len(frames) == 3 and frames[1] == b"":
                envelope, payload = frames[:2], frames[2]
            else:
                env = frames[:2] if len(frames) > 1 and frames[1] == b"" else frames[:1]
                self._error(env, P.ErrorCode.BAD_ENVELOPE, f"expected one payload frame, got {len(frames) - len(env)}")
                continue
            msg = None
            try:
                msg = P.unpack(payload, self.config.max_message_bytes)
                parsed.append((envelope, RP.parse_robot_request(msg, self.robot.action_spec.dim)))
            except P.ProtocolError as e:
                self._error(envelope, e.code, e.message, P.request_id(msg))
            except Exception as e:  # noqa: BLE001 - never let a message kill the control thread
                log.exception("unexpected error while parsing a request")
                self._error(envelope, P.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"[:300], P.request_id(msg))
        last_cmd = max((i for i, (_, r) in enumerate(parsed) if r.kind == "command"), default=-1)
        for i, (envelope, req) in enumerate(parsed):
            try:
                if req.kind == "command":
                    if i != last_cmd:
                        self._drop(envelope, req, "superseded")
                    else:
                        self._command(envelope, req)
                else:
                    getattr(self, f"_on_{req.kind}")(envelope, req)
            except Exception as e:  # noqa: BLE001
                log.exception("unexpected error while handling %s", req.kind)
                self._error(envelope, P.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"[:300], req.id)

    # ----- commands -----
    def _drop(self, envelope, req, reason: str) -> None:
        self.counts[f"dropped_{reason}"] += 1
        if req.ack:
            self._send(envelope, RP.reply("dropped", req.id, seq=req.seq, reason=reason, status=self.status()))

    def _command(self, envelope, req: RP.RobotRequest) -> None:
        self.counts["commands"] += 1
        t_recv = time.time()
        age_ms = (t_recv - req.t_sent) * 1e3
        if self.mode in ("estopped", "fault"):
            return self._drop(envelope, req, self.mode)
        if age_ms > self.config.max_command_age_ms:
            return self._drop(envelope, req, "stale")
        if age_ms < -self.config.max_clock_skew_ms:
            return self._drop(envelope, req, "future")
        try:
            applied = self.robot.send_action(req.action)
        except UnsafeAction as e:
            self.counts["rejected_unsafe"] += 1
            return self._error(envelope, RP.RobotErrorCode.UNSAFE_ACTION, str(e), req.id)
        except RobotStopped:
            self.mode = "estopped"
            return self._drop(envelope, req, "estopped")
        except RobotError as e:
            self._set_fault(e)
            return self._drop(envelope, req, "fault")
        t_applied = time.time()
        self._last_valid = time.monotonic()
        if self.mode != "active":
            log.info("active (was %s)", self.mode)
        self.mode, self.hold_reason = "active", None
        self.counts["applied"] += 1
        self.last_applied = {"seq": req.seq, "t_sent": req.t_sent, "t_recv": t_recv, "t_applied": t_applied}
        self.applied_log.append({**self.last_applied, "requested": req.action.astype(np.float32),
                                 "applied": applied})
        if req.ack:
            self._send(envelope, RP.reply("applied", req.id, seq=req.seq, action=applied, t_recv=t_recv,
                                          t_applied=t_applied, status=self.status()))

    def _check_watchdog(self) -> None:
        if self.mode != "active" or self._last_valid is None:
            return
        now = time.monotonic()
        if (now - self._last_valid) * 1e3 < self.config.watchdog_ms:
            return
        try:
            self.robot.hold()
        except RobotError as e:
            return self._set_fault(e)
        reaction = (time.monotonic() - self._last_valid) * 1e3
        self.mode, self.hold_reason = "holding", "watchdog"
        w = self.watchdog
        w["events"] += 1
        w["last_reaction_ms"] = reaction
        w["max_reaction_ms"] = max(reaction, w["max_reaction_ms"] or 0.0)
        w["t_hold"] = time.time()
        self.counts["watchdog_holds"] += 1
        log.warning("watchdog: no valid command for %.1f ms (limit %.0f ms): holding", reaction,
                    self.config.watchdog_ms)
        self._publish()  # report at once, not at the next tick

    def _set_fault(self, e: BaseException) -> None:
        self.mode, self.fault = "fault", f"{type(e).__name__}: {e}"[:500]
        self.counts["faults"] += 1
        log.error("robot fault: %s; holding until release", self.fault)
        try:
            self.robot.hold()
        except Exception:  # noqa: BLE001 - already faulted
            pass
        self._publish()

    def _allow_current_pose(self, why: str) -> None:
        """At start-up and on release, an arm outside its limits may walk back in (or be homed), not further out."""
        try:
            v = self.robot.pose_violation(self.robot.get_state())
        except RobotError:
            v = None
        self._pose_allowance = {} if v is None else {v["kind"]: v["excess"]}
        if v is not None:
            log.warning("%s outside the limits (%s): commands may move the arm back, not further out", why, v["detail"])

    def _monitor_pose(self, state: np.ndarray, t_read: float) -> None:
        """The pose monitor, on every state tick (see the module docstring)."""
        v = self.robot.pose_violation(state)
        if v is None:
            self._pose_allowance = {}
            return
        allowed = self._pose_allowance.get(v["kind"])
        if allowed is not None and v["excess"] <= allowed + 1e-3:
            self._pose_allowance[v["kind"]] = min(allowed, v["excess"])  # a ratchet: walking back in tightens it
            return
        t_detect = time.time()
        try:
            self.robot.stop()
        except RobotError as e:
            log.error("pose monitor: stopping the arm raised %s", e)
        reaction = (time.monotonic() - t_read) * 1e3
        self.mode, self.fault, self.hold_reason = "fault", f"pose monitor: {v['detail']}"[:500], "pose_monitor"
        self.counts["faults"] += 1
        self.counts["pose_faults"] += 1
        m = self.pose_monitor
        m["events"] += 1
        m["last"] = {"kind": v["kind"], "detail": v["detail"], "t_detect": t_detect, "t": time.time()}
        m["last_reaction_ms"] = reaction  # state read -> the arm's stop returned (for franka: braked to rest)
        log.error("POSE FAULT: %s; arm stopped in %.1f ms; latched until release", v["detail"], reaction)

    # ----- other requests -----
    def metadata(self) -> dict:
        r = self.robot
        return {"protocol_version": RP.ROBOT_PROTOCOL_VERSION, "robot": r.name, "name": self.config.name or r.name,
                "clock": r.clock, "action_spec": r.action_spec.to_dict(), "observation_spec": r.observation_spec.to_dict(),
                "safety": r.safety.config.to_dict(), "rate_hz": self.config.rate_hz,
                "watchdog_ms": self.config.watchdog_ms, "max_command_age_ms": self.config.max_command_age_ms,
                "state_endpoint": self.state_address, "horizon": r.horizon, "instruction": r.instruction,
                "secure": self.auth is not None}

    def status(self) -> dict:
        return {"mode": self.mode, "hold_reason": self.hold_reason, "fault": self.fault, **self.robot.status()}

    def _on_hello(self, envelope, req) -> None:
        self._send(envelope, RP.reply("hello", req.id, metadata=self.metadata()))

    def _on_status(self, envelope, req) -> None:
        self._send(envelope, RP.reply("status", req.id, status=self.status(), counters=dict(self.counts),
                                      safety=self.robot.safety.summary(), watchdog=dict(self.watchdog),
                                      pose_monitor=dict(self.pose_monitor)))

    def _on_observe(self, envelope, req) -> None:
        try:
            snap = self.robot.snapshot()  # state (+ images a simulator already rendered), on this thread
        except RobotError as e:
            self._set_fault(e)
            return self._error(envelope, RP.RobotErrorCode.ROBOT_FAULT, self.fault, req.id)
        self.counts["observations"] += 1
        try:
            self._jobs.put_nowait((envelope, req.id, snap, self.status()))
        except queue.Full:
            self._error(envelope, P.ErrorCode.OVERLOADED, "too many observe requests waiting", req.id)

    def _on_reset(self, envelope, req) -> None:
        if self.mode in ("estopped", "fault"):
            return self._error(envelope, RP.RobotErrorCode.ESTOPPED, f"robot is {self.mode}; release first", req.id)
        try:
            self.robot.reset(seed=req.seed)
        except NotImplementedError as e:
            return self._error(envelope, RP.RobotErrorCode.UNSUPPORTED, str(e), req.id)
        except RobotError as e:
            self._set_fault(e)
            return self._error(envelope, RP.RobotErrorCode.ROBOT_FAULT, self.fault, req.id)
        self.mode, self.hold_reason, self._last_valid = "idle", None, None
        self.counts["resets"] += 1
        self._on_observe(envelope, req)

    def _on_estop(self, envelope, req) -> None:
        t0 = time.monotonic()
        try:
            self.robot.stop()
        except RobotError as e:
            log.error("e-stop: the robot raised %s (still latched)", e)
        self.mode, self.hold_reason = "estopped", req.reason or "estop request"
        self.counts["estops"] += 1
        log.warning("E-STOP (%s) in %.1f ms", self.hold_reason, (time.monotonic() - t0) * 1e3)
        self._send(envelope, RP.reply("estop", req.id, status=self.status()))
        self._publish()

    def _on_release(self, envelope, req) -> None:
        try:
            self.robot.release()
        except RobotError as e:
            return self._error(envelope, RP.RobotErrorCode.ROBOT_FAULT, f"release failed: {e}", req.id)
        self._allow_current_pose("released")
        self.mode, self.hold_reason, self.fault, self._last_valid = "idle", None, None, None
        self.counts["releases"] += 1
        log.warning("released: idle")
        self._send(envelope, RP.reply("release", req.id, status=self.status()))
        self._publish()

    # ----- state publication -----
    def _publish(self) -> None:
        try:
            state = self.robot.get_state()
        except RobotError as e:
            if self.mode != "fault":
                return self._set_fault(e)
            state = None
        if state is not None and self.mode not in ("fault", "estopped"):
            self._monitor_pose(state, time.monotonic())
        self._pub_seq += 1
        msg = {"v": RP.ROBOT_PROTOCOL_VERSION, "kind": "state", "pub_seq": self._pub_seq, "t": time.time(),
               "state": state, **self.status(), "last_applied": self.last_applied, "counters": dict(self.counts),
               "safety": self.robot.safety.summary(), "watchdog": dict(self.watchdog)}
        try:
            self._pub.send(P.pack(msg), zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counts["pub_dropped"] += 1

    # ----- observer thread -----
    def _observe_worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            envelope, rid, snap, status = job
            try:
                images = {**snap.get("images", {}), **self.robot.read_cameras()}
                msg = RP.reply("observation", rid, images=images, state=snap["state"], t_state=snap["t"],
                               instruction=self.robot.instruction, status=status)
            except Exception as e:  # noqa: BLE001 - a camera failing is an error reply
                log.exception("observation failed")
                msg = RP.error(RP.RobotErrorCode.ROBOT_FAULT, f"camera read failed: {type(e).__name__}: {e}"[:300], rid)
            self._outbox.put(envelope + [P.pack(msg)])
            self._wake()
