"""LIBERO evaluation: the conventions table, the episode loop on a real LIBERO env (in LIBERO's own venv, built by
`make libero`; those tests skip with a message when it is missing), `vla libero eval` against a real policy server
(absent, killed mid-trial, not fitting LIBERO's inputs) and the merge of shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sim.libero import conventions as C
from sim.libero import results as R
from sim.libero.worker import PolicyMismatch, camera_mapping, check_policy
from tests.bridge_helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("LIBERO_VENV") or os.path.join(ROOT, ".venv-libero")
needs_libero = pytest.mark.skipif(not os.path.exists(os.path.join(VENV, ".installed")),
                                  reason=f"LIBERO's venv {VENV} is not built (`make libero`)")


# ----------------------------------------------------------------------------------------------- conventions
def test_step_limits_and_start_of_both_convention_sets():
    assert {s: C.OPENPI.steps_for(s) for s in C.SUITES} == {
        "libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
    assert C.LEROBOT.steps_for("libero_spatial") == 280
    assert all(C.LEROBOT.steps_for(s) == C.OPENPI.steps_for(s) for s in C.SUITES if s != "libero_spatial")
    for conv in (C.OPENPI, C.LEROBOT):
        got = (conv.wait_steps, conv.image_size, conv.rotate_180, conv.seed, conv.trials_per_task)
        assert got == (10, 256, True, 7, 50)
    assert C.NOOP_ACTION == (0, 0, 0, 0, 0, 0, -1)
    s = C.episode_settings("libero_spatial", "lerobot", image_size=128)
    assert (s["max_steps"], s["image_size"], s["replan_every"], s["conventions"]) == (280, 128, 5, "lerobot")
    with pytest.raises(ValueError, match="did you mean 'libero_object'"):
        C.check_suite("libero_objet")


def test_axis_angle_matches_robosuite_quat2axisangle():
    import math

    assert C.quat_to_axis_angle([0, 0, 0, 1]) == (0.0, 0.0, 0.0)
    ax = C.quat_to_axis_angle([0, 0, math.sin(0.25), math.cos(0.25)])  # 0.5 rad about z
    assert ax == pytest.approx((0, 0, 0.5))
    ax = C.quat_to_axis_angle([1, 0, 0, 0])  # pi about x
    assert ax == pytest.approx((math.pi, 0, 0))
    st = C.libero_state([1, 2, 3], [0, 0, 0, 1], [0.04, -0.04])
    assert st == [1, 2, 3, 0, 0, 0, 0.04, -0.04] and len(st) == C.STATE_DIM


def test_shards_cover_every_trial_once():
    jobs = [(t, i) for t in range(10) for i in range(7)]
    parts = [C.shard_jobs(jobs, (k, 4)) for k in range(4)]
    assert sorted(j for p in parts for j in p) == jobs
    with pytest.raises(ValueError, match="shard"):
        C.parse_shard("4/4")


def test_the_policy_handshake_maps_onto_libero_or_says_why_not():
    assert camera_mapping(["agentview", "wrist"]) == {"agentview": "agentview_image",
                                                      "wrist": "robot0_eye_in_hand_image"}
    assert camera_mapping(["image", "wrist_image"])["image"] == "agentview_image"  # LeRobot's LIBERO names
    with pytest.raises(PolicyMismatch, match=r"'top'.*--camera-map"):
        camera_mapping(["top", "wrist"])
    assert camera_mapping(["top"], {"top": "agentview_image"}) == {"top": "agentview_image"}
    ok = {"state_dim": 8, "action_dim": 7, "action_space": {"kind": "eef_delta"}}
    check_policy(ok)
    with pytest.raises(PolicyMismatch, match="state_dim 9; LIBERO gives 8"):
        check_policy({**ok, "state_dim": 9})
    with pytest.raises(PolicyMismatch, match="action_dim 14"):
        check_policy({**ok, "action_dim": 14})
    with pytest.raises(PolicyMismatch, match="joint_absolute"):
        check_policy({**ok, "action_space": {"kind": "joint_absolute"}})


def _episode(task_id, trial, success, **kw):
    rec = {"task_id": task_id, "task": f"task_{task_id}", "trial": trial, "success": success, "env_step_ms": 100.0,
           "infer_ms": 40.0, **C.episode_settings("libero_object")}
    rec.update(kw)
    return rec


def test_merge_of_shards_and_refusal_of_mixed_settings(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "episodes.shard0-of-2.jsonl").write_text("".join(json.dumps(_episode(t, i, i < 2)) + "\n"
                                                          for t in range(2) for i in (0, 2)))
    (b / "episodes.shard1-of-2.jsonl").write_text("".join(json.dumps(_episode(t, i, i < 2)) + "\n"
                                                          for t in range(2) for i in (1, 3)) + '{"task_id": 1, "tri')
    s = R.summarize(R.read_episodes([str(a), str(b)]))
    assert s["per_task"]["task_0"] == {"task_id": 0, "instruction": None, "trials": 4, "successes": 2, "success": 0.5}
    assert (s["average"], s["trials_per_task"], s["episodes"], s["max_steps"]) == (0.5, 4, 8, 280)
    (b / "episodes.x.jsonl").write_text(json.dumps(_episode(5, 0, True, conventions="lerobot")) + "\n")
    with pytest.raises(ValueError, match="disagree on conventions"):
        R.summarize(R.read_episodes([str(a), str(b)]))


def test_a_folder_resumes_only_the_policy_that_ran_it(tmp_path):
    """Episodes record the served checkpoint's weights_id; another checkpoint's run into the same folder is refused
    instead of counting the first one's episodes as its own."""
    import torch

    from sim.libero.runner import check_out_dir
    from vla.policy import Policy

    a, b = tmp_path / "a", tmp_path / "b"
    p = Policy.untrained("tiny", cameras=("agentview", "wrist"), state_dim=8, action_dim=7)
    p.save_pretrained(str(a))
    with torch.no_grad():
        next(p.model.parameters()).add_(1.0)
    p.save_pretrained(str(b))
    ida, idb = (Policy.from_pretrained(str(d)).metadata["weights_id"] for d in (a, b))
    assert len(ida) == 16 and ida != idb and Policy.from_pretrained(str(a)).metadata["weights_id"] == ida
    assert "weights_id" not in p.metadata  # built in memory: nothing to name
    run = tmp_path / "run"
    run.mkdir()
    (run / "episodes.shard0-of-1.jsonl").write_text(json.dumps(_episode(0, 0, True, policy_weights=ida)) + "\n")
    settings = C.episode_settings("libero_object")
    assert check_out_dir(str(run), {**settings, "policy_weights": ida}) == 1
    with pytest.raises(FileExistsError, match=f"another policy \\(weights {ida}, not {idb}\\)"):
        check_out_dir(str(run), {**settings, "policy_weights": idb})
    (run / "episodes.shard0-of-1.jsonl").write_text(json.dumps(_episode(0, 0, True)) + "\n")  # before the field
    with pytest.raises(FileExistsError, match="weights not recorded"):
        check_out_dir(str(run), {**settings, "policy_weights": idb})


# ----------------------------------------------------------------------------------------------- real LIBERO
def _venv_env():
    from sim.libero.runner import worker_env

    return worker_env(VENV)


@needs_libero
@pytest.mark.parametrize("conventions", ["openpi", "lerobot"])
def test_episode_loop_on_a_real_libero_env(conventions):
    """Wait steps of the no-op action, images rotated 180 (not flipped), the 8-dim state, trial i's init state."""
    out = subprocess.run([os.path.join(VENV, "bin", "python"), "tests/libero/probe_episode.py", conventions,
                          "libero_object", "3", "12"], cwd=ROOT, env=_venv_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout.strip().splitlines()[-1])
    first = d["calls"][0]
    assert first["env_steps_before"] == 10
    assert all(a == list(C.NOOP_ACTION) for a in first["actions_before"])
    assert first["image_rotated"] and not first["image_flipped_only"]
    assert first["image_shape"] == [64, 64, 3]
    assert first["state"] == pytest.approx(first["state_expected"], abs=1e-5) and len(first["state"]) == 8
    assert first["instruction"] == d["language"]
    assert d["calls"][1]["env_steps_before"] == 15  # replan every 5
    assert d["result"]["policy_steps"] == 12 and d["env_steps"] == 22 and d["n_calls"] == 3
    assert d["init_arg_is_trial_state"] and d["sim_state_matches_init"]


def _serve(policy_dir, port):
    proc = subprocess.Popen([sys.executable, "-m", "vla.cli", "serve", "--policy", str(policy_dir), "--bind",
                             f"tcp://127.0.0.1:{port}", "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("[vla serve]"):
            return proc
    raise AssertionError("vla serve did not start")


@pytest.fixture(scope="module")
def libero_policy(tmp_path_factory):
    from vla.policy import Policy

    path = tmp_path_factory.mktemp("libero_policy")
    Policy.untrained("tiny", cameras=("agentview", "wrist"), state_dim=8, action_dim=7).save_pretrained(str(path))
    return path


def _eval(args, timeout=240):
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "vla.cli", "libero", "eval", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout)
    return out, time.monotonic() - t0


@needs_libero
@pytest.mark.slow
def test_eval_resumes_and_a_killed_server_is_an_error_not_a_zero(libero_policy, tmp_path):
    port = free_port()
    server = _serve(libero_policy, port)
    out_dir = tmp_path / "run"
    common = ["libero_object", "--server", f"tcp://127.0.0.1:{port}", "--tasks", "0", "--image-size", "64",
              "--out", str(out_dir), "--videos", "1", "--timeout-ms", "3000"]
    try:
        out, _ = _eval(common + ["--trials", "1", "--max-steps", "60", "--json"])
        assert out.returncode == 0, out.stderr[-2000:]
        s = json.loads(out.stdout)
        assert s["per_task"]["pick_up_the_alphabet_soup_and_place_it_in_the_basket"]["trials"] == 1
        assert (s["conventions"], s["max_steps"], s["image_size"]) == ("openpi", 60, 64)
        assert os.path.exists(out_dir / "results.json") and os.path.exists(out_dir / "success.png")
        assert list(out_dir.glob("task0_trial0_*.mp4"))
        # a second trial resumes the folder; the server dies while it runs
        proc = subprocess.Popen([sys.executable, "-m", "vla.cli", "libero", "eval", *common, "--trials", "2",
                                 "--max-steps", "60"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        log = out_dir / "worker.shard0-of-1.log"
        while time.monotonic() < deadline and '{"start": [0, 1]}' not in log.read_text():
            time.sleep(0.2)
        time.sleep(3)  # past the wait steps, inside trial 1
        server.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err[-2000:]
        assert time.monotonic() - t_kill < 60
        assert "stopped answering" in err and "rerun the same command to resume" in err
        assert len(R.read_episodes(str(out_dir))) == 1  # trial 1 is not recorded as a failure
        # mixed settings are refused before anything runs
        out, _ = _eval(common + ["--trials", "2", "--max-steps", "7"])
        assert out.returncode == 2 and "max_steps=60, not 7" in out.stderr
        # so is another checkpoint's run into the same folder (same settings, other weights)
        import torch

        from vla.policy import Policy

        other = Policy.from_pretrained(str(libero_policy))
        with torch.no_grad():
            next(other.model.parameters()).add_(1.0)
        other.save_pretrained(str(tmp_path / "other"))
        args = [a for a in common if a not in ("--server", f"tcp://127.0.0.1:{port}")]
        out, _ = _eval(args + ["--policy", str(tmp_path / "other"), "--trials", "2", "--max-steps", "60"])
        assert out.returncode == 2 and "another policy" in out.stderr, out.stderr[-2000:]
        assert len(R.read_episodes(str(out_dir))) == 1
    finally:
        server.kill()


@needs_libero
def test_eval_of_an_absent_server_or_a_policy_that_does_not_fit(tmp_path):
    from vla.policy import Policy

    out, secs = _eval(["libero_object", "--server", f"tcp://127.0.0.1:{free_port()}", "--out", str(tmp_path / "x")])
    assert out.returncode == 3 and "did not answer" in out.stderr and "vla serve" in out.stderr, out.stderr
    assert secs < 30 and "Traceback" not in out.stderr
    wrong = tmp_path / "wrong"
    Policy.untrained("tiny").save_pretrained(str(wrong))  # our sim tasks' 9-dim state
    out, _ = _eval(["libero_object", "--policy", str(wrong), "--tasks", "0", "--trials", "1", "--max-steps", "2",
                    "--out", str(tmp_path / "y")])
    assert out.returncode == 4, out.stderr[-2000:]
    assert "state_dim 9; LIBERO gives 8" in out.stderr and "Traceback" not in out.stderr


# The eval path's frame of a recorded sim state (LIBERO's venv): restore the state, render, rotate as the worker does.
EVAL_FRAMES = r"""
import json, sys
import h5py, numpy as np
from libero.libero.envs import OffScreenRenderEnv
from sim.libero import conventions as C, worker as W

path, out = sys.argv[1], sys.argv[2]
with h5py.File(path, "r") as f:
    env_args = json.loads(f["data"].attrs["env_args"])
    states = f["data/demo_0/states"][()]
    size = f["data/demo_0/obs/agentview_rgb"].shape[1]
env = OffScreenRenderEnv(bddl_file_name=env_args["bddl_file"], camera_heights=size, camera_widths=size)
env.reset()
cams = W.camera_mapping(["agentview", "wrist"])
steps = [0, len(states) // 2]
frames = {}
for t in steps:
    raw = env.set_init_state(states[t])
    obs = W.policy_obs(raw, cams, "", C.OPENPI)
    for cam in cams:
        frames[f"{cam}_{t}"] = obs["images"][cam]
np.savez(out, steps=np.array(steps), **frames)
print("ok")
import os; os._exit(0)
"""


@needs_libero
@pytest.mark.slow
def test_a_demo_frame_reads_the_same_through_the_dataset_and_the_eval_path(tmp_path):
    """One expert demo in LIBERO's native layout; its recorded states rendered again by the eval worker's code must
    give the frames the dataset reader hands to training (both upright), not their flips."""
    import numpy as np

    from vla.formats import load_demos

    py, env = os.path.join(VENV, "bin", "python"), _venv_env()
    demos_dir = tmp_path / "demos"
    out = subprocess.run([py, "-m", "sim.libero.collect", "--suite", "libero_object", "--tasks", "2", "--demos", "1",
                          "--max-attempts", "2", "--out", str(demos_dir), "--image-size", "64", "--max-steps", "200",
                          "--seed", "321", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = demos_dir.glob("*_demo.hdf5")
    script = tmp_path / "eval_frames.py"
    script.write_text(EVAL_FRAMES)
    out = subprocess.run([py, str(script), str(path), str(tmp_path / "eval.npz")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ev = np.load(tmp_path / "eval.npz")
    (demo,) = load_demos(str(demos_dir), cameras=("agentview", "wrist"), image_size=64)
    for t in ev["steps"]:
        for cam in ("agentview", "wrist"):
            a = demo.images[cam][t].astype(np.float32)
            b = ev[f"{cam}_{t}"].astype(np.float32)
            assert a.shape == b.shape == (64, 64, 3)
            err = np.abs(a - b).mean()
            flipped = np.abs(a[::-1] - b).mean()
            assert err < 2.0 and flipped > 4 * err + 2.0, (cam, t, err, flipped)
