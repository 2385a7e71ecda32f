"""LIBERO's datasets train as they are (issue 35, item 4): the native HDF5 layout (one file per task, or a folder of
them) and LeRobot's LIBERO layout, read through the format registry (vla.formats) with no feature overrides; both
give the cameras the names the LIBERO env worker uses ("agentview", "wrist") and frames in the orientation evaluation
sends (native frames are stored upside down and rotated 180 degrees on read; LeRobot's are stored upright).

The native files are written here with h5py alone (small: 2 tasks x 2 demos x 10 steps, 32 px), with an asymmetric
marker in every frame so that a vertical flip, a horizontal flip or no rotation at all are each caught; they pass
sim.libero.native.check_native_file, and a file written by sim.libero.native.NativeDemoWriter reads the same way."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from sim.libero import conventions as C
from vla.features import DatasetError, Demo
from vla.formats import READERS, Reader, describe, detect, load_demos, peek_dims, register
from vla.formats.hdf5_writer import DemoWriter
from vla.formats.lerobot_v3 import LeRobotDir
from vla.formats.lerobot_v3_writer import export_lerobot

S, T, FPS = 32, 10, 20
TASKS = {  # task name (the .bddl stem) -> instruction
    "KITCHEN_SCENE1_put_the_black_bowl_on_the_plate": "put the black bowl on the plate",
    "LIVING_ROOM_SCENE2_pick_up_the_ketchup_and_place_it_in_the_basket":
        "pick up the ketchup and place it in the basket",
}


def upright_frames(seed: int, camera: int) -> np.ndarray:
    """(T, S, S, 3) upright frames: a dim background that varies with the step, a red block in the top-left corner
    and a green one along the top edge's right half (camera 1: blue instead of green). A 180-degree rotation moves the
    red block to the bottom-right; a vertical flip to the bottom-left; a horizontal flip to the top-right."""
    out = np.zeros((T, S, S, 3), np.uint8)
    for t in range(T):
        out[t] = 20 + 3 * t + seed
        out[t, 2:8, 2:8] = (230, 20, 20)
        out[t, 2:5, S // 2 + 4:S - 2] = (20, 230, 20) if camera == 0 else (20, 20, 230)
    return out


def lowdim(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    quat = rng.normal(size=(T, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    quat[:, 3] = np.abs(quat[:, 3])
    return {"ee_pos": rng.normal(size=(T, 3)) * 0.1 + [0.0, 0.0, 1.0], "quat": quat,
            "ee_ori": np.array([C.quat_to_axis_angle(q) for q in quat]),
            "gripper_states": np.stack([np.linspace(0.04, 0.0, T), -np.linspace(0.04, 0.0, T)], axis=1),
            "joint_states": rng.normal(size=(T, 7)),
            "actions": np.clip(rng.normal(size=(T, 7)) * 0.3, -1, 1).astype(np.float64)}


def write_native(path, task: str, instruction: str, demos: int = 2, seed: int = 0) -> str:
    """A LIBERO native file, as LIBERO's create_dataset.py writes one (frames stored as rendered: upside down)."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
        data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                 "domain_name": "robosuite", "language_instruction": instruction})
        bddl = f"libero/libero/bddl_files/libero_test/{task}.bddl"
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Tabletop_Manipulation",
                                             "problem_name": "libero_tabletop_manipulation", "bddl_file": bddl,
                                             "env_kwargs": {"control_freq": FPS, "camera_heights": S}})
        data.attrs["bddl_file_name"] = bddl
        data.attrs["bddl_file_content"] = "(define (problem LIBERO_Tabletop_Manipulation))"
        data.attrs["macros_image_convention"] = "opengl"
        data.attrs["num_demos"] = demos
        data.attrs["total"] = demos * T
        for i in range(demos):
            g = data.create_group(f"demo_{i}")
            low = lowdim(seed * 10 + i)
            for cam, key in enumerate(("agentview_rgb", "eye_in_hand_rgb")):
                stored = np.ascontiguousarray(upright_frames(seed * 10 + i, cam)[:, ::-1, ::-1])  # as rendered
                g.create_dataset(f"obs/{key}", data=stored)
            g.create_dataset("obs/ee_pos", data=low["ee_pos"])
            g.create_dataset("obs/ee_ori", data=low["ee_ori"])
            g.create_dataset("obs/ee_states", data=np.concatenate([low["ee_pos"], low["ee_ori"]], axis=1))
            g.create_dataset("obs/gripper_states", data=low["gripper_states"])
            g.create_dataset("obs/joint_states", data=low["joint_states"])
            g.create_dataset("actions", data=low["actions"])
            g.create_dataset("rewards", data=np.eye(1, T, T - 1, dtype=np.uint8)[0])
            g.create_dataset("dones", data=np.eye(1, T, T - 1, dtype=np.uint8)[0])
            states = np.random.default_rng(i).normal(size=(T, 20))
            g.create_dataset("states", data=states)
            g.create_dataset("robot_states", data=np.concatenate([low["gripper_states"], low["ee_pos"], low["quat"]],
                                                                 axis=1))
            g.attrs["num_samples"] = T
            g.attrs["init_state"] = states[0]
            g.attrs["model_file"] = "<mujoco/>"
    return str(path)


@pytest.fixture()
def suite(tmp_path):
    """A folder of two tasks' native files (a suite), two demos each."""
    root = tmp_path / "libero_test"
    root.mkdir()
    for k, (task, instruction) in enumerate(TASKS.items()):
        write_native(root / f"{task}_demo.hdf5", task, instruction, seed=k)
    return str(root)


def _train_cli(data: str, out, cache) -> "object":
    """`vla train` with no data.features: the tiny preset, shrunk for speed, a few steps; -> the saved Policy."""
    from vla.cli import main
    from vla.policy import Policy

    rc = main(["train", "--config", "lift_tiny", "--data", data, "--out", str(out), "--steps", "3",
               "--set", "batch_size=4", "--set", "val_every=0", "--set", "save_every=0", "--set", "threads=1",
               "--set", "data.augment_shift=0", "--set", f"data.frame_cache={cache}",
               "--set", "model_overrides={num_layers: 1, image_size: 32, vision_channels: [8, 16, 32]}",
               "--no-progress"])
    assert rc == 0
    return Policy.from_pretrained(str(out / "policy"))


# --------------------------------------------------------------------------------------------------------------
def test_native_suite_reads_upright_with_instruction_and_libero_state(suite):
    assert detect(suite).name == "libero"
    demos = load_demos(suite, cameras=None)
    assert len(demos) == 4 and [d.task for d in demos] == [t for t in TASKS for _ in range(2)]
    assert [d.instruction for d in demos] == [i for i in TASKS.values() for _ in range(2)]
    # the env worker's camera names: the first alias of each LIBERO camera
    assert set(demos[0].images) == {C.CAMERA_KEYS["agentview_image"][0], C.CAMERA_KEYS["robot0_eye_in_hand_image"][0]}
    for k, d in enumerate(demos):
        seed = (k // 2) * 10 + k % 2
        low = lowdim(seed)
        want = np.array([C.libero_state(p, q, g) for p, q, g in zip(low["ee_pos"], low["quat"], low["gripper_states"])])
        assert d.state.shape == (T, C.STATE_DIM) and d.state.dtype == np.float32
        np.testing.assert_allclose(d.state, want, atol=1e-6)
        np.testing.assert_array_equal(d.actions, low["actions"].astype(np.float32))
        for cam, c in (("agentview", 0), ("wrist", 1)):
            up = upright_frames(seed, c)
            np.testing.assert_array_equal(d.images[cam], up)  # rotated 180 back to upright
            assert d.images[cam][0, 4, 4, 0] > 200 and d.images[cam][0, S - 5, S - 5, 0] < 100  # red top-left
            assert not np.array_equal(d.images[cam], up[:, ::-1])  # not a vertical flip
            assert not np.array_equal(d.images[cam], up[:, :, ::-1])  # not a horizontal flip
    with h5py.File(os.path.join(suite, f"{next(iter(TASKS))}_demo.hdf5")) as f:
        stored = f["data/demo_0/obs/agentview_rgb"][()]
    assert stored[0, S - 5, S - 5, 0] > 200 and not np.array_equal(stored, demos[0].images["agentview"])
    dims = peek_dims(suite)
    fm = dims["features"]
    assert (dims["state_dim"], dims["action_dim"], dims["cameras"]) == (8, 7, ["agentview", "wrist"])
    assert fm.state_names == C.STATE_NAMES and fm.fps == FPS and fm.action_space == "eef_delta"
    assert fm.action_space_record(7)["units"] == ["action"] * 6 + ["gripper"]


def test_native_files_match_the_libero_writer(tmp_path, suite):
    """Our test files have the layout sim.libero.native documents, and a file its writer wrote reads the same way."""
    from sim.libero import native

    for name in sorted(os.listdir(suite)):
        assert native.check_native_file(os.path.join(suite, name))["num_demos"] == 2
    task, instruction = next(iter(TASKS.items()))
    path = str(tmp_path / native.task_file_name(task))
    with native.NativeDemoWriter(path, env_name="Libero_Tabletop_Manipulation", bddl_file_name=f"x/{task}.bddl",
                                 problem_info={"problem_name": "p", "domain_name": "robosuite",
                                               "language_instruction": instruction},
                                 env_args={"type": 1, "env_name": "Libero", "bddl_file": f"x/{task}.bddl",
                                           "env_kwargs": {"control_freq": FPS}}) as w:
        buf = native.DemoBuffer()
        low = lowdim(3)
        up = [upright_frames(3, 0), upright_frames(3, 1)]
        for t in range(T):
            obs = {"agentview_image": up[0][t][::-1, ::-1], "robot0_eye_in_hand_image": up[1][t][::-1, ::-1],
                   "robot0_eef_pos": low["ee_pos"][t], "robot0_eef_quat": low["quat"][t],
                   "robot0_gripper_qpos": low["gripper_states"][t], "robot0_joint_pos": low["joint_states"][t]}
            buf.add(obs, low["ee_ori"][t], np.zeros(20), low["actions"][t], 0.0, t == T - 1)
        w.write_demo(buf)
    assert detect(path).name == "libero"
    (d,) = load_demos(path, cameras=None)
    assert (d.task, d.instruction) == (task, instruction)
    np.testing.assert_array_equal(d.images["agentview"], up[0])
    np.testing.assert_array_equal(d.images["wrist"], up[1])
    want = [C.libero_state(p, q, g) for p, q, g in zip(low["ee_pos"], low["quat"], low["gripper_states"])]
    np.testing.assert_allclose(d.state, want, atol=1e-6)


def test_native_frames_go_through_the_shared_frame_cache(suite, tmp_path):
    cache = str(tmp_path / "cache")
    train = load_demos(suite, split="train", cameras=("agentview",), image_size=16, frame_cache=cache)
    assert len(train) == 4 and isinstance(train[0].images["agentview"], np.memmap)
    assert train[0].images["agentview"].shape == (T, 16, 16, 3)
    assert train[0].images["agentview"][0, 1, 1, 0] > 200 and train[0].images["agentview"][0, 14, 14, 0] < 100
    (built,) = os.listdir(cache)
    assert "agentview_rgb.done.json" in os.listdir(os.path.join(cache, built))
    from vla.features import fit_frames

    np.testing.assert_array_equal(train[3].images["agentview"], fit_frames(upright_frames(11, 0), 16))
    again = load_demos(suite, split="train", cameras=("agentview",), image_size=16, frame_cache=cache)
    assert os.listdir(cache) == [built]  # a cache hit: the same entry, nothing rebuilt
    assert all(np.array_equal(a.images["agentview"], b.images["agentview"]) for a, b in zip(train, again))
    assert load_demos(suite, split="valid", cameras=[]) == []  # every 10th demo of a file: none of 2
    assert len(load_demos(suite, cameras=[], max_demos_per_task=1)) == 2


def test_vla_data_info_on_a_native_suite(suite, capsys):
    from vla.cli import main

    assert main(["data", "info", suite, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "libero" and info["episodes"] == 4 and info["frames"] == 4 * T and info["fps"] == FPS
    assert info["features"]["camera.wrist"]["key"] == "obs/eye_in_hand_rgb"
    assert info["features"]["camera.agentview"]["read"] == "rotated 180 degrees"
    assert info["tasks"] == {t: 2 for t in TASKS} and sorted(info["instructions"]) == sorted(TASKS.values())
    assert info["feature_map"]["state"] == ["ee_pos", "ee_ori", "gripper_states"]


def test_lerobot_libero_layout_gets_the_same_camera_names_and_frames(suite, tmp_path):
    """LeRobot's LIBERO layout (observation.images.image / wrist_image, state 8, action 7, frames stored upright):
    the same camera names as the native reader, and the same upright frames for the same content."""
    native = load_demos(suite, cameras=None)
    as_lerobot = [Demo(name=d.name, task=d.task, instruction=d.instruction,
                       images={"image": d.images["agentview"], "wrist_image": d.images["wrist"]}, state=d.state,
                       actions=d.actions, object_pos=d.object_pos) for d in native]
    root = str(tmp_path / "libero_lerobot")
    export_lerobot(as_lerobot, root, fps=10, video=False, features=peek_dims(suite)["features"])
    info = json.load(open(os.path.join(root, "meta/info.json")))
    assert {"observation.images.image", "observation.images.wrist_image"} <= set(info["features"])
    assert info["features"]["observation.state"]["names"] == list(C.STATE_NAMES)
    assert detect(root).name == "lerobot"
    fm = LeRobotDir(root).feature_map()
    assert fm.cameras == {"agentview": "observation.images.image", "wrist": "observation.images.wrist_image"}
    assert fm.state_names == C.STATE_NAMES and fm.action_names == ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
    back = load_demos(root, cameras=None)
    for a, b in zip(native, back):
        assert set(b.images) == {"agentview", "wrist"} and b.instruction == a.instruction
        for cam in ("agentview", "wrist"):
            np.testing.assert_array_equal(a.images[cam], b.images[cam])  # PNG: lossless, no rotation on read
        np.testing.assert_array_equal(a.state, b.state)
    # any other LeRobot layout keeps its own camera names (the mapping is for this layout only)
    other = str(tmp_path / "other")
    export_lerobot([Demo(**{**d.__dict__, "images": {"image": d.images["image"]}}) for d in as_lerobot[:1]], other,
                   fps=10, video=False)
    assert LeRobotDir(other).feature_map().cameras == {"image": "observation.images.image"}


@pytest.mark.slow
def test_vla_train_on_a_native_suite_and_on_the_lerobot_layout_with_no_overrides(suite, tmp_path):
    """`vla train --data <folder>` on each layout: a policy with the LIBERO cameras, state 8, actions 7 (eef_delta)."""
    p = _train_cli(suite, tmp_path / "native", tmp_path / "cache")
    assert (tuple(p.cfg.cameras), p.cfg.state_dim, p.cfg.action_dim) == (("agentview", "wrist"), 8, 7)
    assert p.action_space["kind"] == "eef_delta" and p.action_space["dim"] == 7
    obs = {"images": {"agentview": np.zeros((S, S, 3), np.uint8), "wrist": np.zeros((S, S, 3), np.uint8)},
           "state": np.zeros(8, np.float32), "instruction": next(iter(TASKS.values()))}
    assert p.infer(obs)["actions"].shape == (p.cfg.chunk_size, 7)
    native = load_demos(suite, cameras=None)
    root = str(tmp_path / "libero_lerobot")
    export_lerobot([Demo(**{**d.__dict__, "images": {"image": d.images["agentview"], "wrist_image": d.images["wrist"]}})
                    for d in native], root, fps=10)  # AV1 video, as LeRobot's LIBERO datasets are stored
    q = _train_cli(root, tmp_path / "lerobot", tmp_path / "cache")
    assert (tuple(q.cfg.cameras), q.cfg.state_dim, q.cfg.action_dim) == (("agentview", "wrist"), 8, 7)
    assert q.infer(obs)["actions"].shape == (q.cfg.chunk_size, 7)


# --------------------------------------------------------------------------------------------------------------
def test_a_folder_of_our_hdf5_files_reads_like_the_files(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "ours"
    folder.mkdir()
    for name, task in (("a.hdf5", "Lift"), ("b.hdf5", "Stack")):
        with DemoWriter(str(folder / name), {"env_name": task}) as w:
            for i in range(2):
                w.add_demo(task=task, instruction=f"{task.lower()} {i}", seed=i,
                           images={"agentview": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)},
                           state=rng.normal(size=(4, 9)).astype(np.float32),
                           actions=rng.normal(size=(4, 7)).astype(np.float32),
                           object_pos=np.zeros((4, 3, 3), np.float32), sim_states=np.zeros((4, 5)))
    assert detect(str(folder)).name == "hdf5"
    a = load_demos(str(folder), cameras=None)
    b = load_demos([str(folder / "a.hdf5"), str(folder / "b.hdf5")], cameras=None)
    assert [d.name for d in a] == [d.name for d in b] and [d.task for d in a] == ["Lift", "Lift", "Stack", "Stack"]
    assert all(np.array_equal(x.images["agentview"], y.images["agentview"]) for x, y in zip(a, b))


def test_a_path_no_format_claims_is_one_clear_error(tmp_path, suite):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not data")
    with pytest.raises(DatasetError) as e:
        load_demos(str(empty))
    msg = str(e.value)
    assert str(empty) in msg and "meta/info.json" in msg and "LIBERO native HDF5" in msg and "robomimic" in msg
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match=r"junk.hdf5: not an HDF5 file; expected a LeRobot v3"):
        peek_dims(str(junk))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_native(mixed / "t_demo.hdf5", "t", "do t")
    with DemoWriter(str(mixed / "ours.hdf5"), {"env_name": "Lift"}) as w:
        w.add_demo(task="Lift", instruction="lift", seed=0, images={}, state=np.zeros((2, 9), np.float32),
                   actions=np.zeros((2, 7), np.float32), object_pos=np.zeros((2, 3, 3), np.float32),
                   sim_states=np.zeros((2, 3)))
    with pytest.raises(DatasetError, match=r"mixed: a folder whose 2 HDF5 files are not all of one layout"):
        describe(str(mixed))
    with pytest.raises(FileNotFoundError, match=r"nope: dataset file or folder not found"):
        load_demos(str(tmp_path / "nope"))


def test_registry_order_and_registration(suite):
    assert [r.name for r in READERS][:3] == ["lerobot", "libero", "hdf5"]
    with pytest.raises(ValueError, match="already registered"):
        register(READERS[1])

    class Npz(Reader):  # a fifth format plugs in without touching the others
        name, holds = "npz-test", "an .npz file"

        def sniff(self, path):
            return path.endswith(".npz")

        def feature_map(self, path):
            raise NotImplementedError

        def dims(self, path, features=None):
            return {"cameras": [], "state_dim": 2, "action_dim": 3, "features": None}

        def load(self, path, opts, take):
            return []

        def describe(self, path, features=None):
            raise NotImplementedError

    npz = Npz()
    register(npz)
    try:
        assert [r.name for r in READERS][-2:] == ["npz-test", "hdf5"]
        path = os.path.join(os.path.dirname(suite), "x.npz")
        np.savez(path, a=np.zeros(1))
        assert detect(path) is npz and peek_dims(path)["action_dim"] == 3
        assert detect(suite).name == "libero"
    finally:
        READERS.remove(npz)


def test_the_instruction_is_the_one_libero_evaluation_sends_not_the_bddl_wording(tmp_path):
    """LIBERO's BDDL (:language) line, which problem_info carries, says "pick the milk ..."; the benchmark's
    Task.language, which evaluation sends, says "pick up the milk ...": training must read the latter."""
    from vla.formats import load_demos

    task = "pick_up_the_milk_and_place_it_in_the_basket"
    write_native(tmp_path / f"{task}_demo.hdf5", task, "Pick the milk and place it in the basket", demos=1)
    (demo,) = load_demos(str(tmp_path), cameras=("agentview", "wrist"))
    assert demo.instruction == "pick up the milk and place it in the basket"
