"""Fault figures for benchmarks/robot.py (issue: arm safety under faults), each against franky-sim or real sockets:

  orientation_overrun_rad          1.5 s of rz = +0.1 commands then 3 s of zeros, default dynamics (0.3) and safety:
                                   how far the arm turned after the rotation commands stopped (target <= 0.05);
                                   also with the previous defaults (no orientation lead bound, 0.05 rad per step)
  pose_fault_reaction_ms           a measured pose pushed outside the box (injected into the adapter's state) ->
                                   the stop issued and the fault latched (same machine clock; at most one state
                                   tick, 20 ms at 50 Hz, plus the check); pose_fault_stopped_ms: -> the adapter's
                                   stop returned (franka: braked to rest)
  policy_loss_to_hold_ms           policy server killed mid-episode: the control loop's first tick without an
                                   action -> the robot server's watchdog hold (target <= watchdog + 1 period)
  honest_throughput_ratio_under_overflow_attack
                                   answers to 4 honest clients while a fifth sends float64 1e300 states, over the
                                   answers while the fifth sends valid requests (target >= 0.9); `vla serve`
                                   subprocess with an untrained tiny policy, clients in their own processes
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import threading
import time

import numpy as np

from common import VlaServe

from robot_bridge import protocol as P
from robot_bridge.client import PolicyClient
from robot_bridge.control_loop import ControlLoop, LoopConfig
from robot_bridge.robot_client import RemoteRobot, RobotClient
from robot_bridge.robot_server import RobotServer
from robot_bridge.robots.franka import FrankaConfig, FrankaRobot
from robot_bridge.serving.server import PolicyServer

HOME = (0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785)


def _stream(client: RobotClient, action, steps: int, rate_hz: float = 20.0) -> None:
    t0 = time.perf_counter()
    for i in range(steps):
        client.send_command(action)
        time.sleep(max(0.0, t0 + (i + 1) / rate_hz - time.perf_counter()))


def _rest(client: RobotClient, timeout_s: float = 10.0) -> None:
    end, prev = time.monotonic() + timeout_s, None
    while time.monotonic() < end:
        time.sleep(0.3)
        pos = np.asarray(client.latest_state(100)["state"][:3])
        if prev is not None and np.linalg.norm(pos - prev) < 3e-4:
            return
        prev = pos


class _Injected(FrankaRobot):
    offset = np.zeros(3)
    t_inject: float | None = None

    def get_state(self) -> np.ndarray:
        s = super().get_state()
        s[:3] += self.offset
        return s


def _rig(cls=FrankaRobot, safety=None, **cfg):
    robot = cls(FrankaConfig(host="127.0.0.1", realtime=False, auto_recover=True, home_joints=HOME, **cfg),
                safety=safety)
    srv = RobotServer(robot, bind="tcp://127.0.0.1:0", watchdog_ms=100.0).start()
    client = RobotClient(srv.address, timeout_ms=20_000)
    client.hello()
    client.reset()
    _rest(client)
    return robot, srv, client


def _angle(qa, qb) -> float:
    return float(2 * np.arccos(min(1.0, abs(float(np.dot(qa, qb))))))


def orientation_overrun(previous_defaults: bool = False) -> dict:
    """previous_defaults: no orientation lead bound (10 rad) and 0.05 rad per step, as before the fix."""
    from dataclasses import replace

    if previous_defaults:
        safety = replace(FrankaRobot.default_safety(), max_step_rotation_rad=0.05)
        robot, srv, client = _rig(safety=safety, max_lead_rad=10.0)
    else:
        robot, srv, client = _rig()
    try:
        a = np.zeros(7, np.float32)
        a[5] = 0.1
        q0 = np.asarray(client.latest_state(200)["state"][3:7], np.float64)
        _stream(client, a, 30)
        q1 = np.asarray(client.latest_state(200)["state"][3:7], np.float64)
        _stream(client, np.zeros(7, np.float32), 60)
        q2 = np.asarray(client.latest_state(200)["state"][3:7], np.float64)
    finally:
        client.close()
        srv.stop()
    return {"turned_rad": _angle(q0, q1), "overrun_rad": _angle(q1, q2), "max_lead_rad": robot.config.max_lead_rad,
            "max_step_rotation_rad": robot.safety.config.max_step_rotation_rad,
            "dynamics": robot.config.relative_dynamics_factor}


def pose_fault_reaction(trials: int) -> dict:
    robot, srv, client = _rig(cls=_Injected)
    out, stopped = [], []
    try:
        a = np.zeros(7, np.float32)
        for i in range(trials):
            a[0] = 0.05 if i % 2 == 0 else -0.05
            _stream(client, a, 3)
            t_inject = time.time()
            _Injected.offset = np.array([0.0, 0.0, 0.5])
            st = client.wait_state(lambda s: s["mode"] == "fault", 3.0)
            if st is None:
                raise RuntimeError("the pose monitor did not fire within 3 s")
            last = client.status()["pose_monitor"]["last"]
            out.append((last["t_detect"] - t_inject) * 1e3)
            stopped.append((last["t"] - t_inject) * 1e3)
            _Injected.offset = np.zeros(3)
            client.release()
            _rest(client)
    finally:
        _Injected.offset = np.zeros(3)
        client.close()
        srv.stop()
    return {"ms": out, "max": float(max(out)), "p50": float(np.median(out)), "stopped_ms": stopped,
            "stopped_max": float(max(stopped)), "state_rate_hz": srv.config.rate_hz}


class _Chunks:
    """A policy that answers a fixed small motion at once (no cameras): the loop's side of the measurement."""

    metadata = {"policy_type": "scripted", "action_dim": 7, "chunk_size": 8, "n_action_steps": 8, "cameras": {},
                "state_dim": 9}

    def __init__(self):
        self.calls = 0

    def reset(self) -> None:
        pass

    def infer_batch(self, obs_list):
        self.calls += len(obs_list)
        a = np.zeros((8, 7), np.float32)
        a[:, 0] = 0.02 * (1 if (self.calls // 10) % 2 == 0 else -1)
        return [{"actions": a.copy(), "timing": {}} for _ in obs_list]


def policy_loss_to_hold(trials: int, period_ms: float = 50.0) -> dict:
    robot, srv, client = _rig()
    out = []
    try:
        for _ in range(trials):
            policy = _Chunks()
            psrv = PolicyServer(policy, bind="tcp://127.0.0.1:0").start()
            pclient = PolicyClient(psrv.address, timeout_ms=1000)
            remote = RemoteRobot(client, instruction="hold still")
            loop = ControlLoop(pclient, remote, LoopConfig(mode="async", rate_hz=1e3 / period_ms,
                                                            starvation_hold_s=0.0, policy_lost_s=0.5))
            logs = []
            th = threading.Thread(target=lambda: logs.append(loop.run_episode(max_steps=60)))
            th.start()
            end = time.monotonic() + 20
            while policy.calls < 3 and time.monotonic() < end:
                time.sleep(0.01)
            psrv.stop()
            held = client.wait_state(lambda s: s["mode"] == "holding", 5.0)
            th.join(30)
            loop.close()
            pclient.close()
            if held is None or not logs or logs[0].stats.t_first_silent is None:
                raise RuntimeError("no watchdog hold after the policy server was killed")
            out.append((held["watchdog"]["t_hold"] - logs[0].stats.t_first_silent) * 1e3)
            _rest(client)
    finally:
        client.close()
        srv.stop()
    return {"ms": out, "max": float(max(out)), "p50": float(np.median(out))}


# ----- throughput under an overflow attacker -----
def _honest(address: str, seconds: float, q) -> None:
    c = PolicyClient(address, timeout_ms=10_000)
    meta = c.hello()
    rng = np.random.default_rng(os.getpid())
    obs = {"images": {k: rng.integers(0, 256, tuple(v), dtype=np.uint8) for k, v in meta["cameras"].items()},
           "state": np.zeros(meta["state_dim"], np.float32), "instruction": "lift the cube"}
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        c.infer(obs)
        n += 1
    c.close()
    q.put(n)


def _attacker(address: str, seconds: float, overflow: bool, q) -> None:
    import zmq

    c = PolicyClient(address, timeout_ms=10_000)
    meta = c.hello()
    c.close()
    rng = np.random.default_rng(1)
    fields = P.obs_fields({"images": {k: rng.integers(0, 256, tuple(v), dtype=np.uint8)
                                      for k, v in meta["cameras"].items()},
                           "state": np.zeros(meta["state_dim"], np.float32), "instruction": "lift the cube"})
    if overflow:
        fields["state"] = P.encode_array(np.full(meta["state_dim"], 1e300, np.float64))
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(address)
    n, errors, end, rid = 0, 0, time.monotonic() + seconds, 0
    while time.monotonic() < end:
        rid += 1
        s.send(P.pack(P.make_request("infer", rid, **fields)))
        if s.poll(10_000):
            r = P.unpack(s.recv())
            n += 1
            errors += r.get("kind") == "error"
    s.close(0)
    ctx.term()
    q.put(("attacker", n, errors))


def overflow_attack(seconds: float, honest: int = 4) -> dict:
    from vla.policy import Policy

    tmp = tempfile.mkdtemp(prefix="vla_faults_")
    Policy.untrained("tiny").save_pretrained(tmp)
    ctx = mp.get_context("spawn")
    res = {}
    with VlaServe(tmp) as server:
        address = server.address
        for name, overflow in (("valid_attacker", False), ("overflow_attacker", True)):
            q = ctx.Queue()
            procs = [ctx.Process(target=_honest, args=(address, seconds, q)) for _ in range(honest)]
            procs.append(ctx.Process(target=_attacker, args=(address, seconds, overflow, q)))
            for p in procs:
                p.start()
            got = [q.get(timeout=seconds + 120) for _ in procs]
            for p in procs:
                p.join(30)
            att = next(g for g in got if isinstance(g, tuple))
            res[name] = {"honest_answers": int(sum(g for g in got if not isinstance(g, tuple))),
                         "attacker_replies": att[1], "attacker_errors": att[2]}
    res["ratio"] = res["overflow_attacker"]["honest_answers"] / max(1, res["valid_attacker"]["honest_answers"])
    res["seconds"] = seconds
    return res


# ----- adapter exceptions, NaN measurements, homing, joint-mode end-effector steps (issue: never die quietly) -----
class _Raising(FrankaRobot):
    """The franka adapter with a RuntimeError injected on one path ("apply", "get_state", "hold", "reset", "estop":
    the adapter's own call raises, as ur-rtde's do), and the times the server's stop / hold calls were issued."""

    path: str | None = None
    nan = False
    t_raise: float | None = None
    t_stop: float | None = None

    def _raise(self, path: str) -> None:
        if type(self).path == path:
            type(self).path = None  # once: the fault path then runs on a working adapter
            type(self).t_raise = time.time()
            raise RuntimeError(f"injected failure on the {path} path")

    def _apply(self, action):
        self._raise("apply")
        return super()._apply(action)

    def get_state(self):
        self._raise("get_state")
        s = super().get_state()
        if type(self).nan:
            s[:3] = np.nan
        return s

    def _hold(self):
        self._raise("hold")
        return super()._hold()

    def start_reset(self, seed=None):
        self._raise("reset")
        return super().start_reset(seed)

    def _stop(self):
        self._raise("estop")
        return super()._stop()

    def stop(self):
        if type(self).t_raise is not None and type(self).t_stop is None:
            type(self).t_stop = time.time()
        return super().stop()

    def hold(self):
        if type(self).t_raise is not None and type(self).t_stop is None:
            type(self).t_stop = time.time()
        return super().hold()


def _release_and_rest(client: RobotClient) -> None:
    client.release()
    _rest(client)


def adapter_exception_to_stop(trials: int) -> dict:
    """Per path, a RuntimeError raised in the adapter -> the server's strongest stop issued (Robot.stop; for the
    e-stop path, whose stop raised, the fallback hold). Also whether the control thread survived each."""
    robot, srv, client = _rig(cls=_Raising)
    out: dict = {p: [] for p in ("apply", "get_state", "hold", "reset", "estop")}
    deaths = 0
    a = np.zeros(7, np.float32)
    try:
        for i in range(trials):
            for path in out:
                _Raising.t_raise = _Raising.t_stop = None
                a[0] = 0.05 if i % 2 == 0 else -0.05
                _stream(client, a, 3)
                if path == "hold":
                    _Raising.path = "hold"  # the watchdog's hold, 100 ms after the last command
                    st = client.wait_state(lambda s: s["mode"] == "fault", 3.0)
                elif path == "apply":
                    _Raising.path = "apply"
                    client.command(a)
                    st = client.wait_state(lambda s: s["mode"] == "fault", 3.0)
                elif path == "get_state":
                    _Raising.path = "get_state"
                    st = client.wait_state(lambda s: s["mode"] == "fault", 3.0)
                elif path == "reset":
                    _rest(client)
                    _Raising.path = "reset"
                    try:
                        client.reset()
                    except Exception:  # noqa: BLE001 - the expected robot_fault reply
                        pass
                    st = client.wait_state(lambda s: s["mode"] == "fault", 3.0)
                else:
                    _Raising.path = "estop"
                    r = client.estop("benchmark")
                    st = r["status"] if r.get("stop_failed") else None
                _Raising.path = None
                if st is None or _Raising.t_stop is None or _Raising.t_raise is None:
                    raise RuntimeError(f"{path}: no fault / stop after the injected RuntimeError")
                out[path].append((_Raising.t_stop - _Raising.t_raise) * 1e3)
                deaths += not srv.alive
                _release_and_rest(client)
        restarts = srv.counts["control_loop_restarts"]
    finally:
        _Raising.path = None
        client.close()
        srv.stop()
    mx = {p: float(max(v)) for p, v in out.items()}
    return {"ms": out, "max_per_path": mx, "max": float(max(mx.values())), "control_thread_deaths": deaths,
            "control_loop_restarts": restarts, "state_rate_hz": srv.config.rate_hz}


def nan_measurement_to_fault(trials: int) -> dict:
    """NaN injected into the measured position -> the pose monitor's fault (same machine clock)."""
    robot, srv, client = _rig(cls=_Raising)
    out, deaths = [], 0
    a = np.zeros(7, np.float32)
    try:
        for i in range(trials):
            a[0] = 0.05 if i % 2 == 0 else -0.05
            _stream(client, a, 3)
            t_inject = time.time()
            _Raising.nan = True
            st = client.wait_state(lambda s: s["mode"] == "fault", 3.0)
            _Raising.nan = False
            if st is None:
                raise RuntimeError("no fault after a NaN measurement")
            last = client.status()["pose_monitor"]["last"]
            if last["kind"] != "measurement":
                raise RuntimeError(f"the fault was {last}, not a measurement fault")
            out.append((last["t_detect"] - t_inject) * 1e3)
            deaths += not srv.alive
            _release_and_rest(client)
    finally:
        _Raising.nan = False
        client.close()
        srv.stop()
    return {"ms": out, "max": float(max(out)), "p50": float(np.median(out)), "control_thread_deaths": deaths,
            "state_rate_hz": srv.config.rate_hz}


def estop_during_homing(trials: int) -> dict:
    """The arm 12 cm from home, a reset (homing JointMotion, default dynamics 0.3) from a second client, an e-stop
    0.1 s after the arm is seen moving: e-stop sent -> the server's stop issued (ms), -> its reply (franka's stop
    returns once braked), and how far from home the arm stopped."""
    from robot_bridge import robot_protocol as RP

    robot, srv, client = _rig()
    issued, braked, short = [], [], []
    deaths = 0
    try:
        a = np.zeros(7, np.float32)
        for _ in range(trials):
            home = np.asarray(client.latest_state(200)["state"][:3])
            a[0], a[2] = 0.2, -0.2
            _stream(client, a, 12)
            _rest(client)
            away = np.asarray(client.latest_state(200)["state"][:3])
            homer = RobotClient(srv.address, timeout_ms=20_000)
            rid = homer._new_id()
            homer._sock.send(P.pack(RP.request("reset", rid)))
            end = time.monotonic() + 10
            while time.monotonic() < end:
                st = client.latest_state(100)
                if st["mode"] == "homing" and np.linalg.norm(np.asarray(st["state"][:3]) - away) > 0.01:
                    break
            time.sleep(0.1)
            t_send = time.time()
            r = client.estop("benchmark: during homing")
            t_reply = time.time()
            reply = homer._await(rid, time.monotonic() + 5)
            homer.close()
            if reply is None or reply.get("code") != RP.RobotErrorCode.ESTOPPED:
                raise RuntimeError(f"the reset was not interrupted by the e-stop: {reply}")
            issued.append((r["t_stop_issued"] - t_send) * 1e3)
            braked.append((t_reply - t_send) * 1e3)
            _rest(client)
            short.append(float(np.linalg.norm(np.asarray(client.latest_state(200)["state"][:3]) - home)))
            deaths += not srv.alive
            client.release()
            client.reset()
            _rest(client)
    finally:
        client.close()
        srv.stop()
    return {"stop_issued_ms": issued, "max": float(max(issued)), "reply_ms": braked, "reply_max": float(max(braked)),
            "stopped_from_home_m": short, "dynamics": robot.config.relative_dynamics_factor,
            "control_thread_deaths": deaths}


class _NoKinematics(FrankaRobot):
    forward_kinematics = None  # the joint modes before the end-effector bound


def joint_mode_ee_step(commands: int, bounded: bool = True, eef: bool = False) -> dict:
    """joint_delta commands at 20 Hz, every joint at the full max_step_joint_rad, the signs changing every 10
    commands (dynamics 1.0: the arm keeps up): the largest end-effector step of a command, from the reference it
    counts from to its target (forward kinematics; what the end-effector modes' max_translation bounds: target -
    anchor), the arm's measured move between two commands (the published positions interpolated at the commands'
    send times; it includes catching up on the target's lead), and the largest move between consecutive targets.
    franky re-plans each target time-optimally, so within a period the arm moves in a burst: the peak speed, as mm
    per period, is reported too. bounded=False: without the end-effector
    bound (no kinematics). eef=True: the same protocol in eef_delta (full 1 cm translation steps, random directions),
    for comparison: that mode's measured move per command, with its target lead."""
    from robot_bridge.robots.base import ActionSpec

    cls = FrankaRobot if bounded else _NoKinematics
    spec = ActionSpec() if eef else ActionSpec.joint_delta(7)
    robot = cls(FrankaConfig(host="127.0.0.1", realtime=False, relative_dynamics_factor=1.0, auto_recover=True,
                             home_joints=HOME), action_spec=spec)
    fk = FrankaRobot.forward_kinematics
    steps: list = []  # end-effector step of each command from its reference (m)
    if not eef:
        orig = robot.safety.filter_joints

        def recording(action, reference_q, joint_limits, fk_=None):
            out = orig(action, reference_q, joint_limits, fk=fk_)
            steps.append(float(np.linalg.norm(fk(out[:7])[0] - fk(reference_q)[0])))
            return out

        robot.safety.filter_joints = lambda a, r, lim, fk=None: recording(a, r, lim, fk)
    srv = RobotServer(robot, bind="tcp://127.0.0.1:0", watchdog_ms=100.0).start()
    client = RobotClient(srv.address, timeout_ms=20_000)
    rng = np.random.default_rng(0)
    sent, samples, faults = [], {}, 0
    try:
        client.hello()
        client.reset()
        _rest(client)
        n0 = len(srv.applied_log)
        steps.clear()
        t0 = time.perf_counter()
        signs = np.ones(7)
        for i in range(commands):
            if i % 10 == 0:
                signs = rng.choice([-1.0, 1.0], 7)
            if eef:
                a = np.concatenate([signs[:3] / np.sqrt(3) * 0.2, np.zeros(3), [-1.0]])  # 1 cm per command
            else:
                a = np.append(signs * robot.action_spec.max_step_joint_rad, -1.0)
            sent.append(time.time())
            client.send_command(a.astype(np.float32))
            end = t0 + (i + 1) / 20.0
            while time.perf_counter() < end:
                st = client.latest_state(10)
                if st is None:
                    continue
                if st["mode"] == "fault":
                    faults += 1
                    client.release()
                samples[st["pub_seq"]] = (st["t"], np.asarray(st["state"][:3], np.float64))
        targets = [e["applied"] for e in list(srv.applied_log)[n0:]]
        deaths = int(not srv.alive)
    finally:
        client.close()
        srv.stop()
    ts = np.array([v[0] for _, v in sorted(samples.items())])
    ps = np.array([v[1] for _, v in sorted(samples.items())])
    at = np.stack([np.interp(sent, ts, ps[:, k]) for k in range(3)], axis=1)  # (commands, 3) at each send
    inside = (np.asarray(sent) > ts[0]) & (np.asarray(sent) < ts[-1])
    moves = np.linalg.norm(np.diff(at[inside], axis=0), axis=1)
    speed = np.linalg.norm(np.diff(ps, axis=0), axis=1) / np.diff(ts)
    if eef:
        steps = [float(np.linalg.norm(np.asarray(b[:3], np.float64) * spec.pos_scale_m)) for b in targets]
        consecutive = None
    else:
        consecutive = 1e3 * max(float(np.linalg.norm(fk(np.asarray(b[:7], np.float64))[0] -
                                                     fk(np.asarray(a_[:7], np.float64))[0]))
                                for a_, b in zip(targets, targets[1:]))
    return {"step_mm_max": 1e3 * max(steps), "measured_mm_max": 1e3 * float(moves.max()),
            "measured_mm_p99": 1e3 * float(np.percentile(moves, 99)), "consecutive_targets_mm_max": consecutive,
            "peak_speed_mm_per_period": float(speed.max()) * 50.0,
            "commands": commands, "applied": len(targets), "pose_faults_released": faults, "bounded": bounded,
            "mode": "eef_delta" if eef else "joint_delta",
            "control_thread_deaths": deaths, "eef_step_limit_mm": 1e3 * robot.safety.config.max_step_translation_m}
