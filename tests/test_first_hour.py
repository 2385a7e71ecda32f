"""The first hour (issue 34): each mistake a new user makes, run as they would make it: the `vla` command as a
subprocess against real servers (killed, absent, port taken), asserting the exit code, a generous bound on the time
to exit (hang detection; the times themselves are measured in benchmarks/first_hour.py) and the message, which
names what failed and what to do. No traceback anywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from bridge_helpers import free_port, wait_up

from robot_bridge.client import PolicyClient
from robot_bridge.robot_client import RobotClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VLA = [sys.executable, "-m", "vla.cli"]
ENV = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
           OMP_NUM_THREADS="1")


def vla(*args, cwd=ROOT, timeout=120) -> tuple[subprocess.CompletedProcess, float]:
    """Run `vla ARGS`; (result, seconds to exit)."""
    t0 = time.monotonic()
    r = subprocess.run(VLA + [str(a) for a in args], capture_output=True, text=True, env=ENV, cwd=cwd,
                       timeout=timeout)
    return r, time.monotonic() - t0


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]


def start(*args, cwd=ROOT) -> subprocess.Popen:
    return subprocess.Popen(VLA + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, cwd=cwd)


def stop(*procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def policy_up(address: str) -> bool:
    with PolicyClient(address, timeout_ms=500, retries=0) as c:
        c.hello()
    return True


def robot_up(address: str) -> bool:
    r = RobotClient(address, timeout_ms=500)
    try:
        return r.hello()["robot"] == "sim"
    finally:
        r.close()


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> str:
    """An untrained tiny policy: it never succeeds, so episodes last their --steps."""
    from vla.policy import Policy

    d = str(tmp_path_factory.mktemp("fh") / "untrained")
    Policy.untrained("tiny").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def robot_server(tmp_path_factory):
    """`vla robot-server --robot sim` (Lift, 64 px), shared by the module; yields (address, its log file)."""
    port, sport = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("robot") / "robot-server.log"
    with open(log, "w") as f:
        p = subprocess.Popen(VLA + ["robot-server", "--robot", "sim", "--task", "Lift", "--image-size", "64", "--bind",
                                    address, "--state-bind", f"tcp://127.0.0.1:{sport}"], stdout=f,
                             stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
    try:
        wait_up(lambda: robot_up(address), [p])
        yield address, log
    finally:
        stop(p)


def serve(policy: str) -> tuple[str, subprocess.Popen]:
    address = f"tcp://127.0.0.1:{free_port()}"
    p = start("serve", "--policy", policy, "--bind", address, "--threads", "1")
    wait_up(lambda: policy_up(address), [p])
    return address, p


# ----------------------------------------------------------------------------------------- 1. absent policy server
def test_eval_against_an_absent_policy_server_stops_within_its_timeout_naming_it():
    dead = f"tcp://127.0.0.1:{free_port()}"
    r, secs = vla("eval", "--server", dead, "--task", "Lift", "--episodes", 1)
    no_traceback(r)
    assert r.returncode == 3, r.stderr[-2000:]
    assert f"policy server at {dead} did not answer" in r.stderr and "is `vla serve` running there?" in r.stderr
    assert secs < 45, secs  # the default --timeout is 10 s (it hung 90 s)


# ---------------------------------------------------------------------------------- 2. policy server dies mid-run
@pytest.mark.parametrize("sig,episodes,mode", [(signal.SIGTERM, 1, "auto"), (signal.SIGKILL, 2, "async")])
def test_a_policy_server_that_dies_mid_run_ends_the_run_with_exit_3(robot_server, untrained, tmp_path, sig, episodes,
                                                                    mode):
    """Killed while an episode runs (the default mode, sync on a simulator; async at 20 Hz): `vla run` exits 3
    within its --timeout (default 5 s) of the kill, whatever the episode count, saying what to do."""
    raddress, _ = robot_server
    paddress, server = serve(untrained)
    rc = RobotClient(raddress, timeout_ms=5000)
    try:
        applied0 = rc.status()["counters"].get("applied", 0)
        run = subprocess.Popen(VLA + ["run", "--policy-server", paddress, "--robot-server", raddress, "--mode", mode,
                                      "--steps", "400", "--episodes", str(episodes), "--out", str(tmp_path / "run")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        end = time.monotonic() + 120
        while rc.status()["counters"].get("applied", 0) < applied0 + 10 and time.monotonic() < end:
            assert run.poll() is None, run.communicate()
            time.sleep(0.1)
        server.send_signal(sig)
        t_kill = time.monotonic()
        out, err = run.communicate(timeout=120)
        secs = time.monotonic() - t_kill
    finally:
        rc.close()
        stop(server)
    assert "Traceback" not in err, err[-3000:]
    assert run.returncode == 3, (out, err[-2000:])
    assert f"policy server at {paddress} stopped answering" in err and "is `vla serve` still running there?" in err
    assert "watchdog holds the arm" in err
    assert secs < 40, secs  # --timeout 5 s (+ the request in flight); it took 66 s with two episodes
    logs = json.loads((tmp_path / "run" / "episodes.json").read_text()) if (tmp_path / "run").exists() else []
    assert len(logs) <= 1  # the second episode never started


# --------------------------------------------------------------------------------------------- 3. typed --set
def test_set_values_are_typed_and_errors_name_the_field(tmp_path):
    for item, msg in (("lr=abc", "lr: expected a number"), ("steps=abc", "steps: expected an integer"),
                      ("model.image_size=1.5", "model.image_size: expected an integer")):
        r, secs = vla("train", "--config", "lift_tiny", "--set", item, "--out", tmp_path / "r")
        no_traceback(r)
        assert r.returncode == 2 and msg in r.stderr, (item, r.stderr[-1000:])
    # 1e-4 (a string to YAML 1.1) is a number: the run gets as far as the data, which is missing here
    r, _ = vla("train", "--config", "lift_tiny", "--set", "lr=1e-4", "--data", tmp_path / "none.hdf5", "--out",
               tmp_path / "r")
    no_traceback(r)
    assert r.returncode == 2 and "none.hdf5: dataset file" in r.stderr and "not found" in r.stderr, r.stderr[-1000:]


# ------------------------------------------------------------------------------------------ 6. start-up errors
def test_robot_server_start_up_errors_are_one_line(tmp_path):
    r, secs = vla("robot-server", "--robot", "sim", "--task", "Lfit", "--bind", f"tcp://127.0.0.1:{free_port()}")
    no_traceback(r)
    assert r.returncode == 2 and "unknown task 'Lfit'" in r.stderr and "Did you mean 'Lift'" in r.stderr
    assert "robot server stopped" not in r.stderr and secs < 60
    import zmq

    ctx = zmq.Context()
    taken = ctx.socket(zmq.PUB)  # only the state port is taken
    sport = free_port()
    taken.bind(f"tcp://127.0.0.1:{sport}")
    try:
        r, secs = vla("robot-server", "--robot", "sim", "--bind", f"tcp://127.0.0.1:{free_port()}", "--state-bind",
                      f"tcp://127.0.0.1:{sport}")
    finally:
        taken.close(0)
        ctx.term()
    no_traceback(r)
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert r.returncode == 2 and len(err) == 1, r.stderr[-2000:]
    assert err[0].startswith(f"vla robot-server: error: could not start: tcp://127.0.0.1:{sport} is already in use "
                             "(--state-bind"), err


def test_serve_reports_a_busy_port_before_loading_the_model():
    import zmq

    ctx = zmq.Context()
    taken = ctx.socket(zmq.ROUTER)
    port = free_port()
    taken.bind(f"tcp://127.0.0.1:{port}")
    try:
        r, secs = vla("serve", "--policy", "multitask_tiny", "--bind", f"tcp://127.0.0.1:{port}")
    finally:
        taken.close(0)
        ctx.term()
    no_traceback(r)
    assert r.returncode == 2 and f"tcp://127.0.0.1:{port} is already in use (--bind" in r.stderr, r.stderr[-2000:]
    assert "serving" not in r.stderr and secs < 60


# ------------------------------------------------------------------------------------ 7. policies found by name
def test_shipped_policies_are_found_by_name_from_anywhere_and_a_run_folder_by_its_policy(tmp_path, untrained):
    import shutil

    r, _ = vla("export", "--policy", "vla/pretrained/lift_tiny", "--out", tmp_path / "a", cwd=tmp_path)
    no_traceback(r)
    assert r.returncode == 0 and (tmp_path / "a" / "config.json").exists(), r.stderr[-1000:]
    r, _ = vla("export", "--policy", "lift_tiny_fast", "--out", tmp_path / "b", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "b" / "config.json").exists(), r.stderr[-1000:]
    shutil.copytree(untrained, tmp_path / "run" / "policy")  # a training run's folder
    r, _ = vla("export", "--policy", "run", "--out", tmp_path / "c", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "c" / "config.json").exists(), r.stderr[-1000:]
    r, secs = vla("eval", "--policy", "multitask_tinny", "--task", "Lift", "--episodes", 1, cwd=tmp_path)
    no_traceback(r)
    assert r.returncode == 2 and "Did you mean 'multitask_tiny'" in r.stderr and "lift_h16_fast" in r.stderr
    assert secs < 60


# ------------------------------------------------------------------------------- 8. a folder that is not a dataset
def test_a_folder_that_is_not_a_dataset_says_what_a_dataset_is(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my demos")
    (tmp_path / "notes.hdf5").write_text("not HDF5")
    for path in (tmp_path / "mine", tmp_path / "notes.hdf5"):
        r, secs = vla("data", "info", path)
        no_traceback(r)
        assert r.returncode == 2 and f"{path}: " in r.stderr, r.stderr
        assert "meta/info.json" in r.stderr and "HDF5" in r.stderr, r.stderr  # what a dataset must hold
        assert "buf =" not in r.stderr and "Errno" not in r.stderr and secs < 60  # no h5py internals


# ------------------------------------------------------------------------------------------ 9. output locations
def test_output_folders_never_collide_and_a_run_is_not_overwritten(tmp_path):
    (tmp_path / "runs" / "x" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "checkpoints" / "LATEST").write_text("step_200")
    r, secs = vla("train", "--config", "lift_tiny", "--out", tmp_path / "runs" / "x")
    no_traceback(r)
    assert r.returncode == 2 and "holds a training run" in r.stderr and "--resume" in r.stderr, r.stderr[-1000:]
    assert "--overwrite" in r.stderr and "step_200" in r.stderr
    # `vla eval` writes eval/<name>, or eval/<name>-2 when an earlier evaluation is there (0 episodes: cheap)
    (tmp_path / "eval" / "lift_tiny").mkdir(parents=True)
    (tmp_path / "eval" / "lift_tiny" / "summary_Lift.json").write_text("{}")
    r, _ = vla("eval", "--policy", "lift_tiny", "--task", "Lift", "--episodes", 0, "--videos", 0, cwd=tmp_path)
    assert r.returncode == 0 and "eval/lift_tiny-2" in r.stdout, r.stdout + r.stderr[-1000:]
    assert json.loads((tmp_path / "eval" / "lift_tiny-2" / "summary_Lift.json").read_text())["episodes"] == 0
    assert (tmp_path / "eval" / "lift_tiny" / "summary_Lift.json").read_text() == "{}"  # the earlier one kept


# ------------------------------------------------------ 4, 5, 10, 11. defaults, warnings, noise, readable output
def test_run_defaults_warnings_quiet_logs_and_per_run_counters(robot_server, untrained, tmp_path):
    raddress, robot_log = robot_server
    paddress, server = serve("lift_tiny")
    try:
        r, secs = vla("run", "--policy-server", paddress, "--robot-server", raddress, "--steps", 12, "--seed", 3,
                      "--instruction", "fold the towel", "--out", tmp_path / "a")
        no_traceback(r)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "vla run: mode sync: the robot server is a simulator" in r.stderr  # auto, saying which
        assert "never saw the word(s) 'fold', 'towel'" in r.stderr
        assert "--instruction 'fold the towel' replaces the robot's own 'lift the cube'" in r.stderr
        assert r.stdout.startswith("episode 0 (seed 3): ") and "12 commands applied" in r.stdout  # a sentence
        assert json.loads((tmp_path / "a" / "episodes.json").read_text())[0]["length"] == 12
        r, _ = vla("run", "--policy-server", paddress, "--robot-server", raddress, "--steps", 7, "--json")
        line = json.loads(r.stdout.strip().splitlines()[-1])
        assert line["counters"]["applied"] == 7 and line["safety"]["commands"] == 7  # this run's, not the server's
    finally:
        stop(server)
    r, _ = vla("eval", "--help")
    assert "(default: sync)" in " ".join(r.stdout.split())
    r, _ = vla("run", "--help")
    assert "(default: auto)" in " ".join(r.stdout.split())
    log = robot_log.read_text()
    banner = [line for line in log.splitlines() if line.startswith("[vla robot-server] sim on")]
    assert len(banner) == 1 and "safety: no workspace box" in banner[0] and "{" not in banner[0], log[-2000:]
    assert "robosuite" not in log and "watchdog: no valid command" not in log, log[-2000:]


def test_data_info_reads_as_text_and_collect_is_quiet(tmp_path):
    path = tmp_path / "lift.hdf5"
    r, _ = vla("collect", "--task", "Lift", "--episodes", 1, "--image-size", 32, "--out", path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "robosuite WARNING" not in r.stderr + r.stdout and "robosuite_models" not in r.stderr
    r, _ = vla("data", "info", path)
    assert r.returncode == 0 and r.stdout.startswith(f"{path} (vla-stack/1): 1 episodes")
    assert len(r.stdout.splitlines()) < 40 and "tasks: Lift (1)" in r.stdout
    r, _ = vla("data", "info", path, "--json")
    assert json.loads(r.stdout)["episodes"] == 1


def test_train_takes_threads():
    import argparse

    from vla.cli.commands import train_config_from_args

    args = argparse.Namespace(config="lift_tiny", set=None, out=None, steps=None, init=None, capvector=None,
                              orth_weight=None, data=None, threads=1)
    assert train_config_from_args(args).threads == 1
    r, _ = vla("train", "--help")
    assert "--threads" in r.stdout


def test_eval_through_a_server_that_stops_mid_episode_raises_what_to_do(untrained, tmp_path):
    """`vla eval --server` (sim.remote_eval) whose server stops after a few chunks: PolicyServerLost naming the server,
    the episode and what to do, within the timeout (`vla eval` turns it into exit 3)."""
    import threading

    from robot_bridge.client import PolicyServerLost
    from robot_bridge.serving.server import PolicyServer
    from sim.remote_eval import evaluate_server
    from vla.policy import Policy

    srv = PolicyServer(Policy.from_pretrained(untrained), bind="tcp://127.0.0.1:0").start()

    def stop_after_three():
        end = time.monotonic() + 120
        while len(srv.request_log) < 3 and time.monotonic() < end:
            time.sleep(0.02)
        srv.stop()

    threading.Thread(target=stop_after_three, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(PolicyServerLost) as e:
        evaluate_server(srv.address, "Lift", episodes=2, image_size=64, videos=0, replan_every=4, max_steps=200,
                        progress=False, timeout_ms=2000, out_dir=str(tmp_path))
    srv.stop()
    msg = str(e.value)
    assert f"policy server at {srv.address} stopped answering in Lift episode 0" in msg, msg
    assert "is `vla serve` still running there?" in msg and time.monotonic() - t0 < 60


def test_auto_mode_measures_the_delay_on_an_arm(robot_server):
    """`vla run --mode auto` (robot_cli.choose_mode): a simulator runs sync; on an arm (a realtime clock) chunks of 16
    a step or two away run async, chunks of 8 sync, each with the reason. Real policy servers (the shipped lift_tiny,
    H = 8, and lift_h16_fast, H = 16) and the real sim robot server, its clock read as an arm's."""
    from robot_bridge.client import PolicyClient
    from robot_bridge.robot_cli import choose_mode
    from robot_bridge.robot_client import RemoteRobot
    from robot_bridge.serving.server import PolicyServer
    from vla.policy import Policy

    raddress, _ = robot_server
    robot = RemoteRobot(raddress, instruction="lift the cube")
    try:
        for name, expect in (("lift_tiny", "sync"), ("lift_h16_fast", "async")):
            with PolicyServer(Policy.from_pretrained(name), bind="tcp://127.0.0.1:0") as srv, \
                    PolicyClient(srv.address, timeout_ms=10_000) as client:
                meta = client.hello()
                robot.meta["clock"] = "stepped"
                assert choose_mode(meta, robot, client, 20.0)[0] == "sync"
                robot.meta["clock"] = "realtime"
                mode, why = choose_mode(meta, robot, client, 5.0)  # 200 ms a step: one step of delay here
                assert mode == expect, why
                assert f"chunks of {meta['chunk_size']} steps, a request takes" in why
    finally:
        robot.close()
