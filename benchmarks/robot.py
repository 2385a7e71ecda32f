"""Robot server figures against franky-sim: command-to-apply latency, watchdog reaction, sustained command rate.

    python benchmarks/robot.py [--latency-commands 400] [--rates 50,200,500] [--watchdog-trials 10]
    python benchmarks/robot.py --part adapter-faults [--fault-trials 5]   # only the adapter-fault figures below,
                                                                         # merged into the existing robot.json

Starts franky-sim (robot_bridge.robots.franky_sim) and `vla robot-server --robot franka` as separate processes,
drives them with a RobotClient, and writes benchmarks/results/robot.json:
  command_latency_ms_p50/p99  client send (its time.time()) -> the adapter's franky call returned (the server's
                              time.time(); same machine, same clock), from the ack of each command
  watchdog_reaction_ms_max    last valid command -> hold issued, as the server measures it (goal: <= watchdog_ms +
                              one control period); the client-side view (last send -> hold) is reported too
  franky_sim_rate_hz          the highest fire-and-forget command rate the server applied >= 95 % of
and the fault figures of benchmarks/robot_faults.py (orientation_overrun_rad, pose_fault_reaction_ms,
policy_loss_to_hold_ms, honest_throughput_ratio_under_overflow_attack; see there), and its adapter-fault figures:
  adapter_exception_to_stop_ms  a RuntimeError raised in the adapter on each path (apply, get_state, watchdog hold,
                                reset, e-stop) -> the server's strongest stop issued; max over paths (target <= one
                                state period)
  nan_measurement_to_fault_ms   NaN injected into the measured position -> the pose monitor's fault (target <= one
                                state period)
  estop_during_homing_ms        e-stop sent 0.1 s into a homing move (default dynamics 0.3) -> the stop issued
                                (target <= watchdog + one period); estop_during_homing_braked_ms: -> the reply
                                (franka's stop returns once the arm braked to rest)
  joint_mode_ee_step_mm_max     joint_delta commands, all joints at the full joint step: the largest end-effector
                                step of a command, from its reference to its target (forward kinematics; as the
                                end-effector modes' max_translation counts it; target <= their 10 mm); _measured: the
                                arm's measured move between two commands (it includes catching up on the target's
                                lead), next to eef_mode_ee_step_mm_max_measured, the same protocol in eef_delta;
                                without the bound (no kinematics) in details
  control_thread_deaths         control threads found dead after any of these faults (target 0)
With --part adapter-faults only those run; the other fields of robot.json stay as their run wrote them, and the
command is recorded as command_adapter_faults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from common import ROOT, command, write_json

from robot_bridge.net import free_port
from robot_bridge.robot_client import RobotClient
from robot_bridge.robots.franky_sim import FrankySim
import robot_faults


def _wiggle(i: int) -> np.ndarray:
    a = np.zeros(7, np.float32)
    a[0] = 0.02 if (i // 5) % 2 == 0 else -0.02  # +-1 mm steps: the arm stays where it is
    return a


def latency(client: RobotClient, n: int, rate_hz: float) -> dict:
    lat, drops = [], 0
    period = 1.0 / rate_hz
    t0 = time.perf_counter()
    for i in range(n):
        r = client.command(_wiggle(i))
        if r["kind"] == "applied":
            lat.append((r["t_applied"] - _SENT[r["seq"]]) * 1e3)  # both time.time() on this machine
        else:
            drops += 1
        time.sleep(max(0.0, t0 + (i + 1) * period - time.perf_counter()))
    lat = np.asarray(lat)
    return {"n": int(len(lat)), "dropped": drops, "p50": float(np.median(lat)), "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max())}


_SENT: dict = {}  # seq -> the t_sent stamped on that command


def _patch_send_times(client: RobotClient) -> None:
    """Remember each command's t_sent by seq (the wire carries it; the ack echoes the seq)."""
    orig = client.send_command

    def send(action, t_sent=None, ack=False):
        t = time.time() if t_sent is None else t_sent
        seq = orig(action, t_sent=t, ack=ack)
        _SENT[seq] = t
        return seq

    client.send_command = send


def sustained(client: RobotClient, rate_hz: float, seconds: float) -> dict:
    before = client.status()["counters"]
    n = int(rate_hz * seconds)
    period = 1.0 / rate_hz
    t0 = time.perf_counter()
    for i in range(n):
        client.send_command(_wiggle(i))
        client.drain()
        time.sleep(max(0.0, t0 + (i + 1) * period - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    time.sleep(0.2)
    after = client.status()["counters"]
    applied = after.get("applied", 0) - before.get("applied", 0)
    sup = after.get("dropped_superseded", 0) - before.get("dropped_superseded", 0)
    return {"rate_hz": rate_hz, "sent": n, "applied": applied, "superseded": sup,
            "applied_hz": applied / elapsed, "fraction": applied / n}


def watchdog(client: RobotClient, trials: int, period_s: float) -> dict:
    server, client_view = [], []
    for i in range(trials):
        t_last = 0.0
        for k in range(5):
            client.send_command(_wiggle(i + k))
            t_last = time.time()
            time.sleep(period_s)
        st = client.wait_state(lambda s: s["mode"] == "holding" and s["watchdog"]["t_hold"] > t_last, 3.0)
        if st is None:
            raise RuntimeError("the watchdog did not fire within 3 s")
        server.append(st["watchdog"]["last_reaction_ms"])
        client_view.append((st["watchdog"]["t_hold"] - t_last) * 1e3)
    return {"server_ms_max": float(max(server)), "server_ms_p50": float(np.median(server)),
            "client_view_ms_max": float(max(client_view))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-commands", type=int, default=400)
    p.add_argument("--latency-rate", type=float, default=50.0)
    p.add_argument("--rates", default="50,200,500")
    p.add_argument("--rate-seconds", type=float, default=2.0)
    p.add_argument("--watchdog-trials", type=int, default=10)
    p.add_argument("--watchdog-ms", type=float, default=100.0)
    p.add_argument("--period-ms", type=float, default=50.0, help="the control period the goal refers to (20 Hz)")
    p.add_argument("--fault-trials", type=int, default=5, help="pose-fault and policy-loss trials")
    p.add_argument("--attack-seconds", type=float, default=20.0, help="per condition of the overflow attack")
    p.add_argument("--joint-commands", type=int, default=200, help="joint-mode end-effector step: commands")
    p.add_argument("--part", choices=["all", "adapter-faults"], default="all")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "robot.json"))
    args = p.parse_args()
    if args.part == "adapter-faults":
        return adapter_faults_only(args)

    port, sport = free_port(), free_port()
    cmd = [sys.executable, "-m", "vla.cli", "robot-server", "--robot", "franka", "--robot-ip", "127.0.0.1",
           "--no-realtime", "--dynamics", "1.0", "--bind", f"tcp://127.0.0.1:{port}", "--state-bind",
           f"tcp://127.0.0.1:{sport}", "--watchdog-ms", str(args.watchdog_ms), "--max-step-m", "0.01"]
    with FrankySim("127.0.0.1"):
        server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        client = RobotClient(f"tcp://127.0.0.1:{port}", timeout_ms=2000)
        try:
            for _ in range(120):
                try:
                    client.hello(timeout_ms=500)
                    break
                except TimeoutError:
                    if server.poll() is not None:
                        raise RuntimeError(f"robot server exited: {server.stderr.read()[-2000:]}")
            _patch_send_times(client)
            lat = latency(client, args.latency_commands, args.latency_rate)
            wd = watchdog(client, args.watchdog_trials, args.period_ms / 1e3)
            rates = [sustained(client, float(r), args.rate_seconds) for r in args.rates.split(",")]
            status = client.status()
        finally:
            client.close()
            server.terminate()
            server.wait(15)
        # the fault figures: in-process robot servers on the same franky-sim (one controller at a time)
        rot = robot_faults.orientation_overrun()
        rot_unbounded = robot_faults.orientation_overrun(previous_defaults=True)
        pose = robot_faults.pose_fault_reaction(args.fault_trials)
        loss = robot_faults.policy_loss_to_hold(args.fault_trials, args.period_ms)
        adapter = _adapter_faults(args)
    attack = robot_faults.overflow_attack(args.attack_seconds)
    ok = [r for r in rates if r["fraction"] >= 0.95]
    load = os.getloadavg()
    result = {
        "watchdog_ms": args.watchdog_ms,
        "period_ms": args.period_ms,
        "watchdog_reaction_ms_max": wd["server_ms_max"],
        "command_latency_ms_p50": lat["p50"],
        "command_latency_ms_p99": lat["p99"],
        "franky_sim_rate_hz": max(r["applied_hz"] for r in ok) if ok else max(r["applied_hz"] for r in rates),
        "orientation_overrun_rad": rot["overrun_rad"],
        "orientation_overrun_rad_previous_defaults": rot_unbounded["overrun_rad"],
        "pose_fault_reaction_ms": pose["max"],
        "pose_fault_stopped_ms": pose["stopped_max"],
        "policy_loss_to_hold_ms": loss["max"],
        "honest_throughput_ratio_under_overflow_attack": attack["ratio"],
        **_adapter_fields(adapter),
        "command": command(__file__),
        "details": {"latency": lat, "watchdog": wd, "rates": rates, "robot_status": status["status"],
                    "orientation": {"bounded": rot, "unbounded": rot_unbounded}, "pose_fault": pose,
                    "policy_loss": loss, "overflow_attack": attack, "adapter_faults": adapter,
                    "load_average_1m": load[0], "cpus": os.cpu_count(),
                    "note": "franky-sim and the robot server are separate processes on this machine; latency is "
                            "client send -> franky's move() returned in the adapter (not the arm's motion)"},
    }
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=2))
    return 0


def _adapter_faults(args) -> dict:
    """The adapter-fault measurements (robot_faults), on the running franky-sim."""
    return {"exceptions": robot_faults.adapter_exception_to_stop(args.fault_trials),
            "nan": robot_faults.nan_measurement_to_fault(args.fault_trials),
            "homing": robot_faults.estop_during_homing(max(1, args.fault_trials // 2)),
            "joint_mode": robot_faults.joint_mode_ee_step(args.joint_commands),
            "joint_mode_unbounded": robot_faults.joint_mode_ee_step(args.joint_commands, bounded=False),
            "eef_mode": robot_faults.joint_mode_ee_step(args.joint_commands, eef=True),
            "state_period_ms": 1e3 / 50.0, "watchdog_ms": 100.0, "load_average_1m": os.getloadavg()[0]}


def _adapter_fields(d: dict) -> dict:
    return {"adapter_exception_to_stop_ms": d["exceptions"]["max"],
            "nan_measurement_to_fault_ms": d["nan"]["max"],
            "estop_during_homing_ms": d["homing"]["max"],
            "estop_during_homing_braked_ms": d["homing"]["reply_max"],
            "joint_mode_ee_step_mm_max": d["joint_mode"]["step_mm_max"],
            "joint_mode_ee_step_mm_max_measured": d["joint_mode"]["measured_mm_max"],
            "eef_mode_ee_step_mm_max_measured": d["eef_mode"]["measured_mm_max"],
            "control_thread_deaths": sum(d[k]["control_thread_deaths"] for k in
                                         ("exceptions", "nan", "homing", "joint_mode", "joint_mode_unbounded",
                                          "eef_mode"))}


def adapter_faults_only(args) -> int:
    """--part adapter-faults: measure those figures and merge them into the existing results (written atomically)."""
    with FrankySim("127.0.0.1"):
        adapter = _adapter_faults(args)
    result = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            result = json.load(f)
    result.update(_adapter_fields(adapter))
    result["command_adapter_faults"] = command(__file__)
    result.setdefault("details", {})["adapter_faults"] = adapter
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in _adapter_fields(adapter)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
