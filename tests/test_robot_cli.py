"""The command line end to end: `vla serve` + `vla robot-server --robot sim` + `vla run`, as separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bridge_helpers import free_port, wait_up

from robot_bridge.client import PolicyClient
from robot_bridge.robot_client import RobotClient

VLA = [sys.executable, "-m", "vla.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vla_run_drives_a_sim_robot_server_with_a_policy_server(tmp_path):
    from vla.policy import Policy

    ckpt = str(tmp_path / "policy")
    Policy.untrained("tiny").save_pretrained(ckpt)
    pport, rport, sport = free_port(), free_port(), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    opts = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    procs = [subprocess.Popen(VLA + ["serve", "--policy", ckpt, "--bind", f"tcp://127.0.0.1:{pport}", "--threads", "1"],
                              **opts),
             subprocess.Popen(VLA + ["robot-server", "--robot", "sim", "--task", "Lift", "--image-size", "64",
                                     "--bind", f"tcp://127.0.0.1:{rport}", "--state-bind",
                                     f"tcp://127.0.0.1:{sport}"], **opts)]
    try:
        def ready():
            with PolicyClient(f"tcp://127.0.0.1:{pport}", timeout_ms=500, retries=0) as c:
                c.hello()
            r = RobotClient(f"tcp://127.0.0.1:{rport}", timeout_ms=500)
            try:
                return r.hello()["robot"] == "sim"
            finally:
                r.close()

        wait_up(ready, procs, 120)
        out = tmp_path / "run.json"
        res = subprocess.run(VLA + ["run", "--policy-server", f"tcp://127.0.0.1:{pport}", "--robot-server",
                                    f"tcp://127.0.0.1:{rport}", "--mode", "sync", "--steps", "10", "--seed", "5",
                                    "--out", str(out), "--json"], capture_output=True, text=True, timeout=120, env=env,
                             cwd=ROOT)
        assert res.returncode == 0, res.stderr[-3000:]
        line = json.loads(res.stdout.strip().splitlines()[-1])
        assert line["length"] == 10 and line["seed"] == 5 and line["success"] is False
        assert line["robot_mode"] in ("active", "holding") and line["loop"]["chunks"] >= 2
        logs = json.loads(out.read_text())
        assert logs[0]["robot"]["counters"]["applied"] == 10
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_cli_refuses_an_open_bind_without_keys():
    res = subprocess.run(VLA + ["robot-server", "--robot", "sim", "--bind", "tcp://0.0.0.0:5591"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and "--server-key" in res.stderr


@pytest.mark.parametrize("argv,msg", [(["--robot", "franka"], "--robot-ip"), (["--robot", "kuka"], "unknown 'kuka'"),
                                      (["--robot", "sim", "--workspace", "1,2"], "--workspace")])
def test_cli_argument_errors_name_the_flag(argv, msg):
    res = subprocess.run(VLA + ["robot-server", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and msg in res.stderr, res.stderr[-500:]
