"""`RobotServer`: runs beside the arm. Takes latest-wins commands, publishes state at a fixed rate, holds the arm
when commands stop (watchdog), e-stops on request; every action passes the robot's safety layer.

Threads: the control thread owns both sockets (ROUTER for requests, PUB for state) and the robot (SDKs are rarely
thread-safe). Camera frames for `observe` replies are read on a second thread, so a slow camera never delays a
command or the watchdog; its replies are posted to the control thread through `robot_bridge.router`'s outbox and
wake-up pipe, as PolicyServer's worker posts its replies.

Modes: idle (connected, no command yet; after reset/release) -> active (commands flowing) -> holding (watchdog:
no valid command for watchdog_ms) -> active again on the next valid command; homing (a reset's long move, polled
every tick: e-stop, watchdog and pose monitor keep their latency). estopped and fault latch until `release`. A
malformed message costs an error reply, never the server.

Faults: any exception an adapter raises, on any path (command, e-stop, state tick, watchdog hold, reset, observe),
stops the arm by the strongest means it has (Robot.stop, else Robot.hold), latches a fault naming the path and the
exception, is counted (`faults`, `adapter_exceptions`) and published; the server keeps answering state and e-stop.
An e-stop whose stop call raised is latched all the same (its reply carries `stop_failed`). The control loop runs
under a supervisor: an exception that escapes it is counted (`control_loop_restarts`), faults the arm, and the loop
starts again; the control thread does not die.

Pose monitor: every state tick the measured state is checked (Robot.pose_violation): a non-finite or impossible
measurement, the end effector against the workspace box per axis, every joint against its limits. Leaving them
stops the arm (Robot.stop) and latches a fault, logged and counted (`pose_faults`). After a release (or at start-up)
the arm may walk back in, never further out: the allowance is per axis and per joint, and shrinks as the arm comes
back.

Roles (with CurveZMQ keys): a key in `authorized_keys` commands; a key in `observer_keys` only reads (hello,
observe, status, state publications) and may e-stop; its command, reset and release are refused (`unauthorized`).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq

from robot_bridge import protocol as P
from robot_bridge import robot_protocol as RP
from robot_bridge.lifecycle import serve_until_signal
from robot_bridge.robots.base import RobotStopped
from robot_bridge.router import RouterCore, split_envelope
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
    observer_keys: str | None = None  # CurveZMQ: client .key file or directory that may read state, not command
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
        ServerKeys.from_args(self.server_secret_key, self.authorized_keys, self.observer_keys)  # both or neither

    @property
    def keys(self) -> ServerKeys | None:
        return ServerKeys.from_args(self.server_secret_key, self.authorized_keys, self.observer_keys)

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
        # the ROUTER socket, its outbox and wake-up pipe; its counters are the server's
        self.router = RouterCore(log, error_reply=RP.error, dropped_key="reply_dropped")
        self.counts: collections.Counter = self.router.counts
        self.applied_log: collections.deque = collections.deque(maxlen=100_000)  # one dict per applied command
        self.watchdog = {"ms": self.config.watchdog_ms, "events": 0, "last_reaction_ms": None,
                         "max_reaction_ms": None, "t_hold": None}
        self.pose_monitor = {"events": 0, "last": None, "last_reaction_ms": None}
        self._pose_allowance: dict = {}  # after a release outside the limits: "workspace" (3,) m, "joints" (n,) rad
        self.last_fault: dict | None = None  # {"path", "error", "t", "stop"}: the latest adapter exception
        self._pending_reset: tuple | None = None  # (envelope, request, poll function) while homing
        self._publishing = False
        self.last_applied: dict | None = None
        self.auth: ServerAuth | None = None
        self._last_valid: float | None = None  # time.monotonic() of the last applied command
        self._pub_seq = 0
        self._thread: threading.Thread | None = None
        self._observer: threading.Thread | None = None
        self._jobs: queue.Queue = queue.Queue(maxsize=64)
        self._exit = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # ----- lifecycle -----
    def start(self) -> "RobotServer":
        if self._thread is not None:
            return self
        self.robot.stop_horizon_s = self.config.watchdog_ms / 1e3 + 1.0 / self.config.rate_hz
        self._thread = threading.Thread(target=self._run, name="robot-server", daemon=True)
        self._thread.start()
        self._ready.wait(60.0)
        if self._start_error is not None or not self._ready.is_set():
            err = self._start_error
            self.stop()
            raise RuntimeError(f"robot server could not start on {self.config.bind}: {err}") from err
        self._observer = threading.Thread(target=self._observe_worker, name="robot-observer", daemon=True)
        self._observer.start()
        threading.Thread(target=self._guard, args=(self._thread,), name="robot-guard", daemon=True).start()
        log.info("robot server (%s) on %s, state on %s; watchdog %.0f ms, commands older than %.0f ms dropped%s",
                 self.robot.name, self.address, self.state_address, self.config.watchdog_ms,
                 self.config.max_command_age_ms, "; CurveZMQ" if self.auth else "")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._exit.set()
        self.router.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._observer is not None:
            self._jobs.put(None)
            self._observer.join(timeout)
            self._observer = None

    def _guard(self, thread: threading.Thread) -> None:
        """Last resort, should the control thread ever end without stop() (the supervisor makes that unlikely): stop
        the arm from here and end serve_forever, rather than leave a server that answers and stops nothing."""
        thread.join()
        if self._exit.is_set():
            return
        self.counts["control_thread_deaths"] += 1
        log.critical("the control thread died; stopping the arm and the server")
        try:
            self.robot.stop()
        except Exception:  # noqa: BLE001
            log.exception("stopping the arm after the control thread died failed")
        self._exit.set()

    @property
    def alive(self) -> bool:
        """The control thread runs (False before start and after stop)."""
        return self._thread is not None and self._thread.is_alive()

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

    # ----- control thread -----
    def _run(self) -> None:
        pub = None
        try:
            self.address = self.router.open(self.config.bind, self.config.max_message_bytes, self.config.keys)
            self.auth = self.router.auth
            pub = self.router.ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            self.router.secure(pub)
            pub.setsockopt(zmq.SNDHWM, 10)
            pub.bind(self.config.resolved_state_bind())
            self.state_address = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.robot.connect()
            self._allow_current_pose("started")
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._start_error = e
            if pub is not None:
                pub.close(0)
            self.router.close()
            self._ready.set()
            return
        self._pub = pub
        self._ready.set()
        self._next_pub = time.monotonic()
        try:
            while not self._exit.is_set():  # the supervisor: the loop never ends by an exception
                try:
                    self._loop()
                except Exception as e:  # noqa: BLE001 - whatever escaped: fault the arm, start the loop again
                    self.counts["control_loop_restarts"] += 1
                    log.exception("control loop raised; restarting it")
                    try:
                        self._fault(e, "control loop")
                    except Exception:  # noqa: BLE001 - the fault path itself failed: keep the thread alive
                        log.exception("faulting after a control loop error failed")
                    time.sleep(0.001)
        finally:
            try:
                self.robot.hold()
                self.robot.disconnect()
            except Exception:  # noqa: BLE001 - shutting down: report, keep closing
                log.exception("robot disconnect failed")
            pub.close(0)
            self.router.close()

    def _loop(self) -> None:
        period = 1.0 / self.config.rate_hz
        while not self._exit.is_set():
            now = time.monotonic()
            wait = self._next_pub - now
            if self.mode == "active" and self._last_valid is not None:
                wait = min(wait, self._last_valid + self.config.watchdog_ms / 1e3 - now)
            if self.router.poll(max(0, int(wait * 1e3 + 0.999))):
                self._process(list(self.router.incoming(copy=False)))
            self._check_watchdog()
            self._poll_reset()
            now = time.monotonic()
            if now >= self._next_pub:
                self._publish()
                self._next_pub += period
                if self._next_pub < now:  # fell behind (a slow robot call): re-anchor, don't burst
                    self._next_pub = now + period

    def _role(self, frames: list) -> str:
        """"commander" or "observer": the CurveZMQ User-Id (the client's public key, z85) of the message."""
        if self.auth is None or not self.auth.observers:
            return "commander"
        try:
            user = frames[-1].get("User-Id")
        except (zmq.ZMQError, AttributeError):
            return "observer"  # no authenticated identity: read-only
        return self.auth.role(user)

    def _process(self, batch: list[list]) -> None:
        """Parse a batch in arrival order; of its commands only the newest is applied (latest wins)."""
        parsed = []
        for raw in batch:
            self.router.count("received")
            role = self._role(raw)
            envelope, payload, bad = split_envelope([f.bytes if isinstance(f, zmq.Frame) else f for f in raw])
            if bad:
                self.router.error(envelope, P.ErrorCode.BAD_ENVELOPE, bad)
                continue
            msg = None
            try:
                msg = P.unpack(payload, self.config.max_message_bytes)
                req = RP.parse_robot_request(msg, self.robot.action_spec.dim)
                if role != "commander" and req.kind in RP.COMMANDER_KINDS:
                    self.router.error(envelope, RP.RobotErrorCode.UNAUTHORIZED,
                                      f"{req.kind}: this client's key is an observer key (it may hello, observe, "
                                      f"status, estop and read the state publications); {req.kind} needs a key in "
                                      f"authorized_keys", req.id)
                    continue
                parsed.append((envelope, req))
            except P.ProtocolError as e:
                self.router.error(envelope, e.code, e.message, P.request_id(msg))
            except Exception as e:  # noqa: BLE001 - never let a message kill the control thread
                log.exception("unexpected error while parsing a request")
                self.router.internal(envelope, e, P.request_id(msg))
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
                self.router.internal(envelope, e, req.id)

    # ----- commands -----
    def _drop(self, envelope, req, reason: str) -> None:
        self.counts[f"dropped_{reason}"] += 1
        if req.ack:
            self.router.send(envelope, RP.reply("dropped", req.id, seq=req.seq, reason=reason, status=self.status()))

    def _command(self, envelope, req: RP.RobotRequest) -> None:
        self.counts["commands"] += 1
        t_recv = time.time()
        age_ms = (t_recv - req.t_sent) * 1e3
        if self.mode in ("estopped", "fault", "homing"):
            return self._drop(envelope, req, self.mode)
        if age_ms > self.config.max_command_age_ms:
            return self._drop(envelope, req, "stale")
        if age_ms < -self.config.max_clock_skew_ms:
            return self._drop(envelope, req, "future")
        try:
            applied = self.robot.send_action(req.action)
        except UnsafeAction as e:
            self.counts["rejected_unsafe"] += 1
            return self.router.error(envelope, RP.RobotErrorCode.UNSAFE_ACTION, str(e), req.id)
        except RobotStopped:
            self.mode = "estopped"
            return self._drop(envelope, req, "estopped")
        except Exception as e:  # noqa: BLE001 - any adapter exception (ur-rtde: RuntimeError) is a fault
            self._fault(e, "apply")
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
            self.router.send(envelope, RP.reply("applied", req.id, seq=req.seq, action=applied, t_recv=t_recv,
                                                t_applied=t_applied, status=self.status()))

    def _check_watchdog(self) -> None:
        if self.mode != "active" or self._last_valid is None:
            return
        now = time.monotonic()
        if (now - self._last_valid) * 1e3 < self.config.watchdog_ms:
            return
        try:
            self.robot.hold()
        except Exception as e:  # noqa: BLE001
            return self._fault(e, "hold")
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

    def _stop_arm(self) -> str:
        """Stop the arm by the strongest means the adapter has: Robot.stop (e-stop), else Robot.hold. The e-stop flag
        is latched whatever the calls did. Returns what happened ("stopped", or the failures)."""
        try:
            self.robot.stop()
            return "stopped"
        except Exception as e:  # noqa: BLE001
            what = f"stop raised {type(e).__name__}: {e}"
        self.robot.stopped = True
        try:
            self.robot.hold()
            return f"{what}; held"[:300]
        except Exception as e:  # noqa: BLE001
            return f"{what}; hold raised {type(e).__name__}: {e}"[:300]

    def _fault(self, e: BaseException, path: str) -> None:
        """An adapter exception on `path`: stop the arm, latch the fault (the first one's text stays until release),
        count and publish it."""
        t = time.time()
        self.counts["adapter_exceptions"] += 1
        self.counts[f"adapter_exceptions:{path}"] += 1
        text = f"{path}: {type(e).__name__}: {e}"[:500]
        stop = self._stop_arm()
        self.last_fault = {"path": path, "error": text, "t": t, "t_stopped": time.time(), "stop": stop}
        if self.mode != "fault":
            self.counts["faults"] += 1
            self.fault = text
        self.mode, self.hold_reason = "fault", path
        self._cancel_reset(RP.RobotErrorCode.ROBOT_FAULT, f"reset interrupted by a fault: {text}")
        log.error("robot fault (%s): %s; arm: %s; latched until release", path, text, stop)
        if not self._publishing:
            self._publish()

    def _allowance_here(self) -> dict:
        state = self.robot.get_state()
        if self.robot.measurement_problem(state) is not None:
            return {}
        ex = self.robot.pose_excess(state)
        return {k: np.maximum(v, 0.0) for k, v in ex.items() if v is not None and np.any(v > 0)}

    def _allow_current_pose(self, why: str) -> None:
        """At start-up, on release and before homing, an arm outside its limits may walk back in (or be homed), not
        further out: per axis and per joint, what is out now is allowed, and the allowance shrinks as it comes back."""
        try:
            self._pose_allowance = self._allowance_here()
        except Exception:  # noqa: BLE001 - the next state tick reports a failing read as a fault
            self._pose_allowance = {}
        if self._pose_allowance:
            log.warning("%s outside the limits (%s): the arm may move back, not further out", why,
                        {k: np.round(v, 4).tolist() for k, v in self._pose_allowance.items()})

    def _monitor_pose(self, state: np.ndarray, t_read: float) -> None:
        """The pose monitor, on every state tick (see the module docstring)."""
        v = self.robot.pose_violation(state, self._pose_allowance)
        if v is None:
            if self._pose_allowance:  # a ratchet: walking back in tightens it, per axis and joint
                ex = self.robot.pose_excess(state)
                shrunk = {k: np.minimum(a, np.maximum(ex[k], 0.0)) for k, a in self._pose_allowance.items()
                          if ex.get(k) is not None}
                self._pose_allowance = {k: a for k, a in shrunk.items() if np.any(a > 0)}
            return
        t_detect = time.time()
        stop = self._stop_arm()
        reaction = (time.monotonic() - t_read) * 1e3
        text = f"pose monitor: {v['detail']}"[:500]
        self.mode, self.fault, self.hold_reason = "fault", text, "pose_monitor"
        self.counts["faults"] += 1
        self.counts["pose_faults"] += 1
        if v["kind"] == "measurement":
            self.counts["measurement_faults"] += 1
        self._cancel_reset(RP.RobotErrorCode.ROBOT_FAULT, f"reset interrupted by a fault: {text}")
        m = self.pose_monitor
        m["events"] += 1
        m["last"] = {"kind": v["kind"], "index": v.get("index"), "detail": v["detail"], "t_detect": t_detect,
                     "t": time.time(), "stop": stop}
        m["last_reaction_ms"] = reaction  # state read -> the arm's stop returned (for franka: braked to rest)
        log.error("POSE FAULT: %s; arm %s in %.1f ms; latched until release", v["detail"], stop, reaction)

    # ----- other requests -----
    def metadata(self) -> dict:
        r = self.robot
        return {"protocol_version": RP.ROBOT_PROTOCOL_VERSION, "robot": r.name, "name": self.config.name or r.name,
                "clock": r.clock, "action_spec": r.action_spec.to_dict(),
                "observation_spec": r.observation_spec.to_dict(), "safety": r.safety.config.to_dict(),
                "rate_hz": self.config.rate_hz,
                "watchdog_ms": self.config.watchdog_ms, "max_command_age_ms": self.config.max_command_age_ms,
                "state_endpoint": self.state_address, "horizon": r.horizon, "instruction": r.instruction,
                "secure": self.auth is not None}

    def status(self) -> dict:
        try:
            extra = self.robot.status()
        except Exception as e:  # noqa: BLE001 - the adapter's extra fields are not worth a dead reply
            extra = {"status_error": f"{type(e).__name__}: {e}"[:200]}
        return {"mode": self.mode, "hold_reason": self.hold_reason, "fault": self.fault, **extra}

    def _on_hello(self, envelope, req) -> None:
        self.router.send(envelope, RP.reply("hello", req.id, metadata=self.metadata()))

    def _on_status(self, envelope, req) -> None:
        self.router.send(envelope, RP.reply("status", req.id, status=self.status(), counters=dict(self.counts),
                                            safety=self.robot.safety.summary(), watchdog=dict(self.watchdog),
                                            pose_monitor=dict(self.pose_monitor), last_fault=self.last_fault))

    def _on_observe(self, envelope, req) -> None:
        try:
            snap = self.robot.snapshot()  # state (+ images a simulator already rendered), on this thread
        except Exception as e:  # noqa: BLE001
            if self.mode != "fault":
                self._fault(e, "observe")
            return self.router.error(envelope, RP.RobotErrorCode.ROBOT_FAULT, self.fault or str(e), req.id)
        self.counts["observations"] += 1
        try:
            self._jobs.put_nowait((envelope, req.id, snap, self.status()))
        except queue.Full:
            self.router.error(envelope, P.ErrorCode.OVERLOADED, "too many observe requests waiting", req.id)

    def _on_reset(self, envelope, req) -> None:
        if self.mode in ("estopped", "fault"):
            return self.router.error(envelope, RP.RobotErrorCode.ESTOPPED, f"robot is {self.mode}; release first",
                                     req.id)
        if self._pending_reset is not None:
            return self.router.error(envelope, RP.RobotErrorCode.BUSY, "a reset is already running (homing)", req.id)
        self._allow_current_pose("homing")
        try:
            poll = self.robot.start_reset(seed=req.seed)
        except NotImplementedError as e:
            return self.router.error(envelope, RP.RobotErrorCode.UNSUPPORTED, str(e), req.id)
        except Exception as e:  # noqa: BLE001
            self._fault(e, "reset")
            return self.router.error(envelope, RP.RobotErrorCode.ROBOT_FAULT, self.fault, req.id)
        if poll is None:
            return self._reset_done(envelope, req)
        self.mode, self.hold_reason, self._last_valid = "homing", "reset", None
        self._pending_reset = (envelope, req, poll)
        log.info("homing (polled every tick)")
        self._publish()

    def _poll_reset(self) -> None:
        if self._pending_reset is None:
            return
        envelope, req, poll = self._pending_reset
        try:
            done = poll()
        except Exception as e:  # noqa: BLE001 - the reset's move failed: a fault (its reply says so)
            self._pending_reset = None
            self.router.error(envelope, RP.RobotErrorCode.ROBOT_FAULT, f"reset: {type(e).__name__}: {e}"[:300], req.id)
            return self._fault(e, "reset")
        if done:
            self._pending_reset = None
            self._reset_done(envelope, req)

    def _cancel_reset(self, code: str, message: str) -> None:
        if self._pending_reset is not None:
            envelope, req, _ = self._pending_reset
            self._pending_reset = None
            self.router.error(envelope, code, message, req.id)

    def _reset_done(self, envelope, req) -> None:
        self.mode, self.hold_reason, self._last_valid = "idle", None, None
        self.counts["resets"] += 1
        self._on_observe(envelope, req)

    def _on_estop(self, envelope, req) -> None:
        t0, t_issued = time.monotonic(), time.time()
        try:
            self.robot.stop()
            stop_failed = None
        except Exception as e:  # noqa: BLE001 - still latched; the arm is held if it can be
            self.robot.stopped = True
            stop_failed = f"{type(e).__name__}: {e}"[:300]
            self.counts["estop_stop_failed"] += 1
            self.counts["adapter_exceptions"] += 1
            self.counts["adapter_exceptions:estop"] += 1
            try:
                self.robot.hold()
            except Exception as e2:  # noqa: BLE001
                stop_failed += f"; hold raised {type(e2).__name__}: {e2}"[:200]
            self.last_fault = {"path": "estop", "error": f"estop: {stop_failed}", "t": time.time(),
                               "t_stopped": time.time(), "stop": "latched; " + stop_failed}
            log.error("e-stop: the robot's stop raised %s (latched all the same)", stop_failed)
        self.mode, self.hold_reason = "estopped", req.reason or "estop request"
        self.counts["estops"] += 1
        self._cancel_reset(RP.RobotErrorCode.ESTOPPED, "reset interrupted by an e-stop")
        log.warning("E-STOP (%s) in %.1f ms", self.hold_reason, (time.monotonic() - t0) * 1e3)
        self.router.send(envelope, RP.reply("estop", req.id, status=self.status(), stop_failed=stop_failed,
                                            t_stop_issued=t_issued, t_stopped=time.time()))
        self._publish()

    def _on_release(self, envelope, req) -> None:
        if self._pending_reset is not None:
            return self.router.error(envelope, RP.RobotErrorCode.BUSY,
                                     "homing: wait for the reset's reply, or e-stop", req.id)
        try:
            self.robot.release()
        except Exception as e:  # noqa: BLE001 - stays latched
            self.counts["adapter_exceptions"] += 1
            self.counts["adapter_exceptions:release"] += 1
            return self.router.error(envelope, RP.RobotErrorCode.ROBOT_FAULT,
                                     f"release failed: {type(e).__name__}: {e}", req.id)
        self._allow_current_pose("released")
        self.mode, self.hold_reason, self.fault, self._last_valid = "idle", None, None, None
        self.counts["releases"] += 1
        log.warning("released: idle")
        self.router.send(envelope, RP.reply("release", req.id, status=self.status()))
        self._publish()

    # ----- state publication -----
    def _publish(self) -> None:
        self._publishing = True
        try:
            self._publish_once()
        finally:
            self._publishing = False

    def _publish_once(self) -> None:
        t_read = time.monotonic()
        try:
            state = self.robot.get_state()
        except Exception as e:  # noqa: BLE001 - any adapter exception: a fault (once), the publication goes on
            state = None
            if self.mode in ("fault", "estopped"):  # already stopped and latched: counted, not re-faulted
                self.counts["state_read_failures"] += 1
            else:
                self._fault(e, "get_state")
        if state is not None and self.mode not in ("fault", "estopped"):
            try:
                self._monitor_pose(state, t_read)
            except Exception as e:  # noqa: BLE001 - a monitor that cannot check is a fault, not "no violation"
                self._fault(e, "pose monitor")
        self._pub_seq += 1
        if state is not None:
            try:
                state = np.asarray(state, np.float32)
            except (TypeError, ValueError):
                state = None
        msg = {"v": RP.ROBOT_PROTOCOL_VERSION, "kind": "state", "pub_seq": self._pub_seq, "t": time.time(),
               "state": state, **self.status(), "last_applied": self.last_applied, "counters": dict(self.counts),
               "safety": self.robot.safety.summary(), "watchdog": dict(self.watchdog), "last_fault": self.last_fault}
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
            self.router.post(envelope + [P.pack(msg)])
