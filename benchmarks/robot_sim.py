"""The `sim` robot behind the robot server: what a synchronous episode costs per step when the loop replans every N.

    python benchmarks/robot_sim.py [--task Lift] [--episodes 3] [--steps 120] [--replan-every 8] [--image-size 128]

An in-process RobotServer over SimRobot (robosuite, agentview + wrist cameras), a RemoteRobot in sync mode (each
command waits until the server applied it) and a sync ControlLoop whose policy answers a fixed pseudo-random chunk
at once, so the figures are the robot side alone: physics, camera renders, msgpack and the sockets. Writes
benchmarks/results/robot_sim.json:
  step_ms_mean      wall time per applied step over all episodes (resets excluded)
  observe_ms_p50    one `observe` round trip (a chunk request's observation: the render happens here on demand)
  command_ms_p50    one synchronous command round trip (physics step on the server)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from common import ROOT, command, pct, write_json
os.environ.setdefault("MUJOCO_GL", "egl")


class InstantPolicy:
    """A chunk of small pseudo-random deltas (the same for a given call count), answered at once."""

    metadata = {"chunk_size": 8, "action_dim": 7}

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def infer(self, obs: dict) -> dict:
        a = np.zeros((8, 7), np.float32)
        a[:, :3] = self.rng.uniform(-0.3, 0.3, (8, 3))
        a[:, 6] = -1.0
        return {"actions": a}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="Lift")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--steps", type=int, default=120, help="steps per episode")
    p.add_argument("--replan-every", type=int, default=8)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "robot_sim.json"))
    args = p.parse_args()

    from robot_bridge.control_loop import ControlLoop, LoopConfig
    from robot_bridge.robot_client import RemoteRobot
    from robot_bridge.robot_server import RobotServer
    from sim.robot import SimConfig, SimRobot

    robot = SimRobot(SimConfig(task=args.task, image_size=args.image_size))
    srv = RobotServer(robot, bind="tcp://127.0.0.1:0", watchdog_ms=1000).start()
    remote = RemoteRobot(srv.address, sync=True, timeout_ms=30_000, max_steps=args.steps)
    observe_ms, command_ms, reset_ms, step_s, steps = [], [], [], 0.0, 0
    client = remote.client
    observe, send, reset = client.observe, client.command, client.reset

    def timed(fn, sink):
        def call(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            sink.append((time.perf_counter() - t0) * 1e3)
            return out
        return call

    client.observe, client.command = timed(observe, observe_ms), timed(send, command_ms)
    client.reset = timed(reset, reset_ms)
    loop = ControlLoop(InstantPolicy(), remote, LoopConfig(mode="sync", replan_every=args.replan_every))
    try:
        for ep in range(args.episodes):
            t0 = time.perf_counter()
            log = loop.run_episode(seed=ep, max_steps=args.steps)
            step_s += time.perf_counter() - t0 - reset_ms[-1] / 1e3  # the reset (and its observation) is not a step
            steps += log.length
    finally:
        remote.close()
        srv.stop()
        robot.disconnect()
    result = {
        "task": args.task, "image_size": args.image_size, "replan_every": args.replan_every,
        "episodes": args.episodes, "steps": steps,
        "step_ms_mean": step_s / max(steps, 1) * 1e3,
        "observe_ms_p50": pct(observe_ms, 50), "observe_ms_p99": pct(observe_ms, 99), "observes": len(observe_ms),
        "command_ms_p50": pct(command_ms, 50), "command_ms_p99": pct(command_ms, 99),
        "command": command(__file__),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
