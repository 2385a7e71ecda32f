"""The robot-side distribution (robot_bridge/pyproject.toml) installed alone in a fresh venv, as on a robot PC: no
torch, transformers, robosuite or MuJoCo; its `vla-robot robot-server` drives franky-sim and its `vla-robot run` drives
that robot server with chunks from a policy server running in this (the main) venv.

Slow (a venv and a pip install from PyPI, ~1 min): marked `slow`; `make test` runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from bridge_helpers import free_port
from robot_helpers import wait_at_rest

pytest.importorskip("franky_sim", reason="franky-sim is in the `test` extra: pip install -e '.[test]'")

from robot_bridge.robot_client import RobotClient  # noqa: E402
from robot_bridge.robots.franky_sim import FrankySim  # noqa: E402
from robot_bridge.serving.server import PolicyServer  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def robot_venv(tmp_path_factory):
    d = tmp_path_factory.mktemp("robot_venv")
    venv = d / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    src = d / "src" / "robot_bridge"  # a copy: pip builds in the source tree, which must not be the repository's
    shutil.copytree(os.path.join(ROOT, "robot_bridge"), src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "serving"))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    res = subprocess.run(pip + [f"{src}[franka]"], capture_output=True, text=True, timeout=900, cwd=str(d))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    work = d / "work"  # runs happen here, away from the source copy (cwd is on sys.path for `python -c`)
    work.mkdir()
    return venv, work


class Chunks:
    """Moves +x 1 mm per step; no cameras (the robot server has none here)."""

    metadata = {"policy_type": "scripted", "action_dim": 7, "chunk_size": 8, "n_action_steps": 8, "cameras": {},
                "state_dim": 9}
    calls = 0

    def reset(self) -> None:
        pass

    def infer_batch(self, obs_list):
        Chunks.calls += len(obs_list)
        a = np.zeros((8, 7), np.float32)
        a[:, 0] = 0.02
        return [{"actions": a, "timing": {}} for _ in obs_list]


def test_robot_package_alone_serves_franky_sim_and_runs_the_control_loop(robot_venv):
    venv, workdir = robot_venv
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # 1. what the robot package loads, and what it does not have
    probe = ("import sys, importlib.util as u, robot_bridge.robot_server, robot_bridge.robot_client, "
             "robot_bridge.control_loop, robot_bridge.client, robot_bridge.robots.franka, robot_bridge.robot_cli; "
             "print(robot_bridge.robot_server.__file__); "
             "print(sorted(m for m in ('torch', 'transformers', 'robosuite', 'mujoco', 'vla', 'sim') "
             "if u.find_spec(m))); "
             "print(u.find_spec('robot_bridge.serving') is None); "
             "from importlib.metadata import entry_points as e; "
             "print(sorted(p.name for p in e(group='vla_stack.robots'))); "
             "from robot_bridge.robots import robot_class, MissingExtraError\n"
             "try: robot_class('sim')\nexcept MissingExtraError as x: print(x)")
    res = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=120, cwd=str(workdir), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    where, installed, no_serving, arms, sim = res.stdout.split("\n")[:5]
    assert str(venv) in where  # the installed copy, not the repository's
    assert installed == "[]" and no_serving == "True"
    # its own arms registered (entry points), the sim arm named as part of the full install
    assert arms == "['franka', 'ur', 'xarm']" and "pip install 'vla-stack[sim]'" in sim
    # 2. its robot server on franky-sim, its control loop against a policy server of the main venv
    port = free_port()
    psrv = PolicyServer(Chunks(), bind="tcp://127.0.0.1:0").start()
    with FrankySim("127.0.0.1"):
        server = subprocess.Popen([str(venv / "bin" / "vla-robot"), "robot-server", "--robot", "franka",
                                   "--robot-ip", "127.0.0.1", "--no-realtime", "--dynamics", "1.0",
                                   # not a watchdog test: on a loaded runner the default one held the arm
                                   # mid-episode, and each hold restarts the deltas from the braking arm
                                   "--watchdog-ms", "2000", "--bind", f"tcp://127.0.0.1:{port}"],
                                  cwd=str(workdir), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = RobotClient(f"tcp://127.0.0.1:{port}", timeout_ms=2000)
        try:
            for _ in range(60):
                try:
                    client.hello(timeout_ms=1000)
                    break
                except TimeoutError:
                    assert server.poll() is None, server.stdout.read()[-2000:]
            start = np.asarray(client.latest_state(1000)["state"][:3])
            out = workdir / "run.json"
            res = subprocess.run([str(venv / "bin" / "vla-robot"), "run", "--policy-server", psrv.address,
                                  "--robot-server", f"tcp://127.0.0.1:{port}", "--instruction", "move forward",
                                  "--steps", "30", "--out", str(out)], capture_output=True, text=True, timeout=120,
                                 cwd=str(workdir), env=env)
            end = wait_at_rest(client)  # the arm catches up with its last target
        finally:
            client.close()
            server.terminate()
            server.wait(20)
            psrv.stop()
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    (ep,) = json.load(open(out))
    assert ep["stats"]["chunks"] >= 3 and ep["robot"]["counters"]["applied"] >= 25
    assert end[0] - start[0] > 0.015  # 30 steps of 1 mm along +x, measured by franky-sim
