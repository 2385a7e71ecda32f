"""LIBERO scripted expert and LIBERO's native HDF5 demo layout.

The end-to-end test runs the real LIBERO env in LIBERO's own venv (built by `make libero`; skipped with a message
when it is missing): `python -m sim.libero.collect` collects one demo of a libero_object task at 64 px, then a
checker in that venv reads the file back, checks LIBERO's layout and replays the recorded sim states in a fresh env
to see the target start away from the basket and end in it. The writer and goal-parsing tests need only h5py/numpy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from sim.libero.collect import episode_seed, parse_tasks
from sim.libero.expert import HandShape, hand_clearance, parse_pick_place_goal, rot_error, rot_z, wrap_half_pi
from sim.libero.native import DemoBuffer, NativeDemoWriter, check_native_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("LIBERO_VENV") or os.path.join(ROOT, ".venv-libero")
needs_libero = pytest.mark.skipif(not os.path.exists(os.path.join(VENV, "bin", "python")),
                                  reason=f"LIBERO's venv {VENV} is missing (build it with `make libero`)")


def _venv_env() -> dict:
    from sim.libero.runner import worker_env

    return worker_env(VENV)


# Runs in LIBERO's venv: layout summary + where the target sits (relative to the basket) at the demo's first and
# last recorded sim states, restored into a fresh env.
CHECKER = r"""
import json, os, sys
import h5py, numpy as np
from sim.libero.native import check_native_file
from libero.libero.envs import OffScreenRenderEnv

path = sys.argv[1]
summary = check_native_file(path)
with h5py.File(path, "r") as f:
    data = f["data"]
    env_args = json.loads(data.attrs["env_args"])
    d = data["demo_0"]
    states = d["states"][()]
    out = {"summary": summary, "env_args_keys": sorted(env_args), "bddl_file": env_args["bddl_file"],
           "data_attrs": sorted(data.attrs.keys()), "demo_keys": sorted(d.keys()), "obs_keys": sorted(d["obs"].keys()),
           "dtypes": {k: str(d["obs"][k].dtype) for k in d["obs"]}, "image_shape": list(d["obs/agentview_rgb"].shape),
           "rewards": d["rewards"][()].tolist(), "dones": d["dones"][()].tolist(),
           "actions_in_range": bool(np.all(np.abs(d["actions"][()]) <= 1.0)),
           "ee_states_is_pos_ori": bool(np.allclose(d["obs/ee_states"][()],
                                                    np.concatenate([d["obs/ee_pos"][()], d["obs/ee_ori"][()]], 1))),
           "image_std": float(d["obs/agentview_rgb"][()].std())}
env = OffScreenRenderEnv(bddl_file_name=env_args["bddl_file"], camera_heights=64, camera_widths=64)
env.reset()
target, basket = env.obj_of_interest
out["state_len"] = int(env.sim.get_state().flatten().shape[0])
where = []
for s in (states[0], states[-1]):
    obs = env.set_init_state(s)
    region = env.sim.data.get_site_xpos(basket + "_contain_region")
    where.append(float(np.linalg.norm(obs[target + "_pos"][:2] - region[:2])))
out["target_to_basket_xy"] = where
env.close()
print(json.dumps(out))
"""


@needs_libero
def test_expert_collects_a_successful_demo_in_libero_native_layout(tmp_path):
    out_dir = tmp_path / "demos"
    cmd = [os.path.join(VENV, "bin", "python"), "-m", "sim.libero.collect", "--suite", "libero_object", "--tasks",
           "0", "--demos", "1", "--max-attempts", "2", "--out", str(out_dir), "--image-size", "64",
           "--max-steps", "200", "--seed", "123", "--no-progress"]
    run = subprocess.run(cmd, cwd=ROOT, env=_venv_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    report = json.loads((out_dir / "expert.json").read_text())
    task = "pick_up_the_alphabet_soup_and_place_it_in_the_basket"
    entry = report["tasks"][task]
    assert report["finished"] and "sim.libero.collect" in report["command"] and "--demos 1" in report["command"]
    assert entry["successes"] == 1 and entry["kept_demos"] == 1 and 1 <= entry["attempts"] <= 2
    assert (entry["target"], entry["container"]) == ("alphabet_soup_1", "basket_1")
    assert 0 < entry["mean_steps"] <= 200
    path = out_dir / f"{task}_demo.hdf5"
    assert path.exists() and not (out_dir / f"{task}_demo.hdf5.tmp").exists()

    chk = subprocess.run([os.path.join(VENV, "bin", "python"), "-c", CHECKER, str(path)], cwd=ROOT,
                         env=_venv_env(), capture_output=True, text=True, timeout=300)
    assert chk.returncode == 0, chk.stderr[-3000:]
    d = json.loads(chk.stdout.strip().splitlines()[-1])
    s = d["summary"]
    n = s["lengths"][0]
    assert s["num_demos"] == 1 and s["total"] == n == entry["mean_steps"]
    # LIBERO's problem_info carries the BDDL's own wording ("pick the alphabet soup and place it in the basket")
    assert "alphabet soup" in s["language_instruction"] and "basket" in s["language_instruction"]
    assert s["problem_info"]["problem_name"] and s["problem_info"]["domain_name"]
    assert d["bddl_file"].endswith("pick_up_the_alphabet_soup_and_place_it_in_the_basket.bddl")
    assert {"type", "env_name", "bddl_file", "env_kwargs"} <= set(d["env_args_keys"])
    assert {"problem_info", "env_args", "bddl_file_name", "macros_image_convention", "num_demos", "total"} <= set(
        d["data_attrs"])
    assert d["demo_keys"] == ["actions", "dones", "obs", "rewards", "robot_states", "states"]
    assert d["obs_keys"] == ["agentview_rgb", "ee_ori", "ee_pos", "ee_states", "eye_in_hand_rgb", "gripper_states",
                             "joint_states"]
    assert d["image_shape"] == [n, 64, 64, 3] and d["dtypes"]["agentview_rgb"] == "uint8"
    assert d["image_std"] > 5  # a rendered scene, not a blank frame
    assert d["rewards"][-1] == 1 and d["dones"][-1] == 1 and sum(d["dones"]) == 1  # ends at its first success
    assert d["actions_in_range"] and d["ee_states_is_pos_ori"]
    start, end = d["target_to_basket_xy"]
    assert start > 0.2 and end < 0.06, (start, end)  # the soup went from its spot into the basket


@needs_libero
def test_a_terminated_collection_closes_its_files_and_says_so(tmp_path):
    """SIGTERM mid-episode: the task's file is renamed into place (with the demos finished so far) and expert.json
    records the interruption; the process exits 130, not with a traceback from inside LIBERO."""
    out_dir = tmp_path / "demos"
    cmd = [os.path.join(VENV, "bin", "python"), "-m", "sim.libero.collect", "--tasks", "6", "--attempts", "3",
           "--out", str(out_dir), "--image-size", "64", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_venv_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmp_file = out_dir / "pick_up_the_butter_and_place_it_in_the_basket_demo.hdf5.tmp"
    deadline = time.monotonic() + 120
    while not tmp_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tmp_file.exists(), "the collection never opened its output file"
    time.sleep(3)  # inside the first episode
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert not tmp_file.exists() and tmp_file.with_suffix("").exists()
    report = json.loads((out_dir / "expert.json").read_text())
    entry = report["tasks"]["pick_up_the_butter_and_place_it_in_the_basket"]
    assert not report["finished"] and "signal" in report["interrupted"] and not entry["complete"]
    assert check_native_file(str(tmp_file.with_suffix("")))["num_demos"] == entry["kept_demos"]


def _demo(n: int, state_len: int = 5, size: int = 8) -> DemoBuffer:
    rng = np.random.default_rng(n)
    demo = DemoBuffer(model_file="<mujoco/>")
    for t in range(n):
        obs = {"agentview_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
               "robot0_eye_in_hand_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
               "robot0_eef_pos": rng.normal(size=3), "robot0_eef_quat": np.array([1.0, 0, 0, 0]),
               "robot0_gripper_qpos": np.array([0.04, -0.04]), "robot0_joint_pos": rng.normal(size=7)}
        demo.add(obs, [np.pi, 0, 0], rng.normal(size=state_len), rng.uniform(-1, 1, 7), reward=t == n - 1,
                 done=t == n - 1)
    return demo


def _writer(path):
    return NativeDemoWriter(str(path), env_name="Libero_Floor_Manipulation",
                            problem_info={"problem_name": "libero_floor_manipulation", "domain_name": "robosuite",
                                          "language_instruction": "pick up the x and place it in the basket"},
                            env_args={"type": 1, "env_name": "Libero_Floor_Manipulation", "bddl_file": "x.bddl",
                                      "env_kwargs": {}}, bddl_file_name="x.bddl")


def test_native_writer_layout_and_an_interrupted_collection_keeps_finished_demos(tmp_path):
    path = tmp_path / "task_demo.hdf5"
    with pytest.raises(RuntimeError, match="interrupted"):
        with _writer(path) as w:
            assert os.path.exists(str(path) + ".tmp") and not path.exists()  # written under a temporary name
            w.write_demo(_demo(4))
            w.write_demo(_demo(3))
            raise RuntimeError("interrupted")
    assert path.exists() and not os.path.exists(str(path) + ".tmp")
    s = check_native_file(str(path))
    assert (s["num_demos"], s["total"], s["lengths"], s["image_shape"]) == (2, 7, [4, 3], (8, 8, 3))

    import h5py

    with h5py.File(path, "r") as f:
        d = f["data/demo_1"]
        assert d["obs/ee_states"].shape == (3, 6) and d["robot_states"].shape == (3, 9)
        assert d["rewards"].dtype == np.uint8 and d["dones"][()].tolist() == [0, 0, 1]
        assert np.array_equal(d.attrs["init_state"], d["states"][0])
        assert f["data"].attrs["macros_image_convention"] == "opengl"
    with h5py.File(path, "a") as f:  # a file that lies about its contents is refused, naming the field
        f["data"].attrs["total"] = 99
    with pytest.raises(ValueError, match="total 99"):
        check_native_file(str(path))


def test_writer_refuses_malformed_demos_naming_the_field(tmp_path):
    demo = _demo(3)
    demo.joint_states[-1] = np.zeros(6)
    with _writer(tmp_path / "bad_demo.hdf5") as w:
        with pytest.raises(ValueError, match="joint_states"):
            w.write_demo(demo)
        with pytest.raises(ValueError, match="empty demo"):
            w.write_demo(DemoBuffer())
    with pytest.raises(ValueError, match="language_instruction"):
        NativeDemoWriter(str(tmp_path / "x.hdf5"), env_name="e", problem_info={"problem_name": "p",
                         "domain_name": "d"}, env_args={}, bddl_file_name="x.bddl")


def test_goal_parsing_and_rotation_helpers():
    assert parse_pick_place_goal([["In", "ketchup_1", "basket_1_contain_region"]]) == ("ketchup_1", "basket_1")
    with pytest.raises(ValueError, match="goal"):
        parse_pick_place_goal([["On", "ketchup_1", "plate_1"]])
    with pytest.raises(ValueError, match="goal"):
        parse_pick_place_goal([["In", "a_1", "basket_1_contain_region"], ["In", "b_1", "basket_1_contain_region"]])
    assert wrap_half_pi(np.pi * 0.75) == pytest.approx(-np.pi / 4)
    r = rot_z(0.3)
    assert rot_error(np.eye(3), r) == pytest.approx([0, 0, 0.3])
    flip = np.diag([1.0, -1.0, -1.0])  # the gripper-down orientation: a half turn about x
    assert np.linalg.norm(rot_error(np.eye(3), flip)) == pytest.approx(np.pi)


def test_palm_clearance_sees_neighbours_along_the_closing_axis():
    hand = HandShape(half_length=0.10, half_width=0.012, bottom=0.04)
    can = np.array([[0.0, 0.13], [0.0, 0.16]])  # 3 cm past the palm's end along y
    assert hand_clearance([0, 0], np.pi / 2, hand, [can]) == pytest.approx(0.03)  # closing axis along y
    assert hand_clearance([0, 0], 0.0, hand, [can]) == pytest.approx(0.13 - 0.012)  # closing axis along x
    assert hand_clearance([0, 0.05], np.pi / 2, hand, [can]) == 0.0  # overlapping
    assert hand_clearance([0, 0], 0.0, hand, []) == 1.0


def test_task_selection_and_collection_seeds():
    assert parse_tasks("all", 10) == list(range(10)) and parse_tasks("0,3", 10) == [0, 3]
    for bad in ("10", "a,b", ""):
        with pytest.raises(ValueError, match="tasks"):
            parse_tasks(bad, 10)
    seeds = {episode_seed(100_000, t, k) for t in range(10) for k in range(50)}
    assert len(seeds) == 500  # every (task, attempt) gets its own placement


def _fake_run(path, tasks: dict, **settings):
    """A collect output directory: expert.json + one native file per task (tiny demos)."""
    path.mkdir()
    report = {"command": f"python -m sim.libero.collect --out {path}", "suite": "libero_object", "image_size": 8,
              "seed": 100000, "seed_rule": "r", "mode": "attempts", "attempts_per_task": 2, "demos_wanted": None,
              "max_steps": 280, "wait_steps": 10, "expert": {"noise": 0.05}, "keep_failed": False, "tasks": {},
              "finished": True, **settings}
    for name, (index, successes, complete) in tasks.items():
        file = f"{name}_demo.hdf5"
        with _writer(path / file) as w:
            for _ in range(successes):
                w.write_demo(_demo(3))
        report["tasks"][name] = {"index": index, "file": file, "attempts": 2, "successes": successes,
                                 "success_rate": successes / 2 if complete else None, "kept_demos": successes,
                                 "mean_steps": 3.0, "wall_s": 1.0}
    (path / "expert.json").write_text(json.dumps(report))
    return path


def test_merge_of_split_collection_runs(tmp_path):
    from sim.libero.merge_demos import main as merge

    a = _fake_run(tmp_path / "a", {"t0": (0, 2, True), "t1": (1, 1, True)})
    b = _fake_run(tmp_path / "b", {"t2": (2, 2, True), "t3": (3, 0, False)})  # t3 was interrupted: left out
    c = _fake_run(tmp_path / "c", {"t1": (1, 2, True)})  # a duplicate: the first source wins
    assert merge([str(a), str(b), str(c), "--out", str(a)]) == 0
    rep = json.loads((a / "expert.json").read_text())
    assert list(rep["tasks"]) == ["t0", "t1", "t2"]
    assert rep["tasks"]["t1"]["source"] == str(a) and rep["duplicates"][0]["source"] == str(c)
    assert rep["overall"] == {"attempts": 6, "successes": 5, "success_rate": 5 / 6, "min_task_success_rate": 0.5}
    assert "merge_demos" in rep["command"] and len(rep["merged_from"]) == 3
    assert os.path.samefile(a / "t2_demo.hdf5", b / "t2_demo.hdf5") and not (a / "t3_demo.hdf5").exists()
    assert check_native_file(str(a / "t2_demo.hdf5"))["num_demos"] == 2

    d = _fake_run(tmp_path / "d", {"t4": (4, 2, True)}, image_size=16)
    with pytest.raises(ValueError, match="image_size"):
        merge([str(b), str(d), "--out", str(tmp_path / "e")])
