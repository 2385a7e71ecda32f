"""Time to exit on the first hour's mistakes (issue 34): each `vla` command of tests/test_first_hour.py run as a user
would, against real servers (absent, killed, port taken), with its exit code, seconds to exit and the line it prints.

    python benchmarks/first_hour.py [--out benchmarks/results/first_hour.json]

"seconds" is from the start of the command to its exit; for a killed policy server, "seconds_after_kill" is from the
signal to the exit of `vla run`. The servers are real subprocesses (`vla serve`, `vla robot-server --robot sim`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time

from common import ROOT, VlaServe, command, write_json

from robot_bridge.net import free_port

VLA = [sys.executable, "-m", "vla.cli"]
ENV = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
           OMP_NUM_THREADS="1")


def message(stderr: str) -> str:
    """The line the command leaves for the user: its last `vla ...:` line on stderr."""
    lines = [line for line in stderr.splitlines() if line.startswith(("vla ", "vla-robot "))]
    return lines[-1] if lines else stderr.strip().splitlines()[-1] if stderr.strip() else ""


def timed(name: str, args: list, cwd: str = ROOT) -> dict:
    t0 = time.monotonic()
    r = subprocess.run(VLA + [str(a) for a in args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    row = {"name": name, "command": "vla " + " ".join(str(a) for a in args), "exit_code": r.returncode,
           "seconds": round(time.monotonic() - t0, 2), "message": message(r.stderr),
           "traceback": "Traceback" in r.stderr}
    print(row, flush=True)
    return row


def wait_up(ready, timeout_s: float = 120) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if ready():
                return
        except (TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not come up")


def killed_mid_run(robot: str, policy: str, sig: int, episodes: int, mode: str) -> dict:
    """`vla run` whose policy server gets `sig` once 10 commands were applied: seconds from the signal to the exit."""
    from robot_bridge.robot_client import RobotClient

    server = VlaServe(policy, threads=1)
    rc = RobotClient(robot, timeout_ms=5000)
    args = ["run", "--policy-server", server.address, "--robot-server", robot, "--mode", mode, "--steps", "400",
            "--episodes", str(episodes)]
    try:
        applied0 = rc.status()["counters"].get("applied", 0)
        t0 = time.monotonic()
        run = subprocess.Popen(VLA + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               cwd=ROOT)
        while rc.status()["counters"].get("applied", 0) < applied0 + 10 and run.poll() is None:
            time.sleep(0.05)
        server.proc.send_signal(sig)
        t_kill = time.monotonic()
        _, err = run.communicate(timeout=600)
        t_end = time.monotonic()
    finally:
        rc.close()
        server.stop()
    row = {"name": f"run_policy_server_{signal.Signals(sig).name}_episodes{episodes}_{mode}",
           "command": "vla " + " ".join(args) + f"  (policy server sent {signal.Signals(sig).name} mid-episode)",
           "exit_code": run.returncode, "seconds": round(t_end - t0, 2),
           "seconds_after_kill": round(t_end - t_kill, 2), "message": message(err), "traceback": "Traceback" in err}
    print(row, flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "first_hour.json"))
    args = ap.parse_args(argv)
    import zmq

    from robot_bridge.robot_client import RobotClient
    from vla.policy import Policy

    work = tempfile.mkdtemp(prefix="first_hour_")
    untrained = os.path.join(work, "untrained")
    Policy.untrained("tiny").save_pretrained(untrained)  # never succeeds: episodes last their --steps
    rows = []
    dead = f"tcp://127.0.0.1:{free_port()}"
    rows.append(timed("eval_server_absent", ["eval", "--server", dead, "--task", "Lift", "--episodes", 1]))
    robot = f"tcp://127.0.0.1:{free_port()}"
    rproc = subprocess.Popen(VLA + ["robot-server", "--robot", "sim", "--task", "Lift", "--image-size", "64", "--bind",
                                    robot, "--state-bind", f"tcp://127.0.0.1:{free_port()}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    try:
        def robot_up():
            c = RobotClient(robot, timeout_ms=500)
            try:
                return c.hello()["robot"] == "sim"
            finally:
                c.close()

        wait_up(robot_up)
        rows.append(timed("run_policy_server_absent", ["run", "--policy-server", dead, "--robot-server", robot]))
        with VlaServe(untrained, threads=1) as pserver:
            rows.append(timed("run_robot_server_absent", ["run", "--policy-server", pserver.address, "--robot-server",
                                                          f"tcp://127.0.0.1:{free_port()}"]))
        rows.append(killed_mid_run(robot, untrained, signal.SIGTERM, 1, "auto"))
        rows.append(killed_mid_run(robot, untrained, signal.SIGKILL, 2, "async"))
    finally:
        rproc.terminate()
        rproc.wait(30)
    for item in ("lr=1e-4x", "steps=abc"):
        rows.append(timed(f"train_set_{item.split('=')[0]}_not_a_number", ["train", "--config", "lift_tiny", "--set",
                                                                        item, "--out", os.path.join(work, "r")]))
    rows.append(timed("robot_server_task_typo", ["robot-server", "--robot", "sim", "--task", "Lfit", "--bind",
                                                 f"tcp://127.0.0.1:{free_port()}"]))
    ctx = zmq.Context()
    taken = ctx.socket(zmq.ROUTER)
    port = free_port()
    taken.bind(f"tcp://127.0.0.1:{port}")
    try:
        rows.append(timed("robot_server_state_port_taken", ["robot-server", "--robot", "sim", "--bind",
                                                            f"tcp://127.0.0.1:{free_port()}", "--state-bind",
                                                            f"tcp://127.0.0.1:{port}"]))
        rows.append(timed("serve_port_taken", ["serve", "--policy", "multitask_tiny", "--bind",
                                               f"tcp://127.0.0.1:{port}"]))
    finally:
        taken.close(0)
        ctx.term()
    rows.append(timed("policy_name_typo", ["eval", "--policy", "multitask_tinny", "--task", "Lift"], cwd=work))
    os.makedirs(os.path.join(work, "mine"))
    rows.append(timed("data_info_not_a_dataset", ["data", "info", os.path.join(work, "mine")]))
    os.makedirs(os.path.join(work, "runs", "x", "checkpoints"))
    rows.append(timed("train_over_an_existing_run", ["train", "--config", "lift_tiny", "--out",
                                                     os.path.join(work, "runs", "x")]))
    result = {"rows": rows, "cpu_count": os.cpu_count(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": command(__file__, argv)}
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
