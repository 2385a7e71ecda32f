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
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from robot_bridge import protocol as P
from robot_bridge.client import PolicyClient
from robot_bridge.control_loop import ControlLoop, LoopConfig
from robot_bridge.robot_client import RemoteRobot, RobotClient
from robot_bridge.robot_server import RobotServer
from robot_bridge.robots.franka import FrankaConfig, FrankaRobot
from robot_bridge.serving.server import PolicyServer

HOME = (0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = _port()
    address = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "vla.cli", "serve", "--policy", tmp, "--bind", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ctx = mp.get_context("spawn")
    res = {}
    try:
        c = PolicyClient(address, timeout_ms=2000)
        for _ in range(120):
            try:
                c.hello(timeout_ms=1000)
                break
            except TimeoutError:
                if server.poll() is not None:
                    raise RuntimeError(f"vla serve exited: {server.stderr.read()[-2000:]}")
        c.close()
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
    finally:
        server.terminate()
        server.wait(15)
    res["ratio"] = res["overflow_attacker"]["honest_answers"] / max(1, res["valid_attacker"]["honest_answers"])
    res["seconds"] = seconds
    return res
