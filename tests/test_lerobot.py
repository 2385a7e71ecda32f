"""LeRobot dataset v3.0 (issue 24): our exporter writes a folder LeRobot's layout describes (info.json, tasks.parquet
read back with pandas as LeRobot does, episodes with video time ranges, AV1 video or PNG image features); our reader
reads it back (low-dim exact, frames within codec tolerance), caches decoded frames on disk as a memmap, trains on
it with no dimension overrides, and names the file and field when a dataset is broken.

LeRobot's own reader (`LeRobotDataset(root=...)`) needs its own venv (numpy 2, its torch pin): the check against it
is `benchmarks/peers/check_lerobot_reader.py`, run by `test_lerobot_own_reader_loads_the_export` when
`.venv-peers` exists (made by `benchmarks/peers/setup.sh`), skipped and said so otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vla.config import DataConfig, OptimConfig, TrainConfig
from vla.data import DemoBatches, FrameRows
from vla.features import DatasetError, Demo
from vla.formats import describe, load_demos, peek_dims
from vla.formats.lerobot_v3 import LeRobotDir, is_lerobot
from vla.formats.lerobot_v3_writer import export_lerobot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_VENV = os.path.join(REPO, os.environ.get("PEERS_VENV", ".venv-peers"))
PEERS_PY = os.path.join(PEERS_VENV, "bin", "python")


def _frames(T, H, W, seed):
    """Frames like a camera's: a colour gradient with a moving square, blurred as a lens blurs (random noise, or a
    saturated red edge one pixel wide, tests the codec's yuv420p chroma subsampling, not our reading: 30 dB)."""
    import cv2

    y, x = np.mgrid[0:H, 0:W]
    out = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        out[t, ..., 0], out[t, ..., 1], out[t, ..., 2] = 80 + x * 96 // W, 70 + y * 96 // H, 90 + 10 * seed
        cy, cx = (seed * 5 + t) % (H - 12), (seed * 3 + 2 * t) % (W - 12)
        out[t, cy:cy + 12, cx:cx + 12] = (200, 70, 60)
        out[t] = cv2.GaussianBlur(out[t], (0, 0), 2.0)
    return out


def _demos(n=6, T=12, state_dim=8, action_dim=6, cams=(("front", 48, 64), ("wrist", 64, 64)), tasks=("stack", "pour")):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        t = np.linspace(0, 1, T)[:, None]
        out.append(Demo(name=f"d{i}", task=tasks[i % len(tasks)],
                        instruction=f"{tasks[i % len(tasks)]} the thing {i % 2}",
                        images={c: _frames(T + i, h, w, i)[:T] for c, h, w in cams},
                        state=rng.normal(size=(T, state_dim)).astype(np.float32),
                        actions=np.sin(t * (1 + np.arange(action_dim)) + i).astype(np.float32),
                        object_pos=np.zeros((T, 3, 3), np.float32)))
    return out


def _psnr(a, b):
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def _train(root: str, tmp_path, steps: int):
    """A few steps of the tiny preset on `root` with no dimension overrides; -> the saved Policy."""
    from vla.policy import Policy
    from vla.train import train

    cfg = TrainConfig(model={"preset": "tiny", "num_layers": 1, "image_size": 32, "vision_channels": (8, 16, 32)},
                      data=DataConfig(paths=(root,), augment_shift=0, frame_cache=str(tmp_path / "cache")),
                      out_dir=str(tmp_path / "run"), steps=steps, batch_size=4, optim=OptimConfig(warmup_steps=1),
                      log_every=1, val_every=0, save_every=0, seed=1, threads=1)
    train(cfg, progress=False)
    return Policy.from_pretrained(str(tmp_path / "run" / "policy"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    demos = _demos()
    export_lerobot(demos, str(root / "video"), fps=10)
    export_lerobot(demos, str(root / "images"), fps=10, video=False)
    return demos, str(root / "video"), str(root / "images")


def test_export_writes_lerobot_v3_layout(exported):
    demos, video, images = exported
    pd = pytest.importorskip("pandas")
    assert is_lerobot(video) and not os.path.exists(video + ".tmp")
    info = json.load(open(os.path.join(video, "meta/info.json")))
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 6 and info["total_frames"] == 72
    assert info["features"]["observation.images.front"]["dtype"] == "video"
    assert info["features"]["observation.images.front"]["shape"] == [48, 64, 3]
    assert info["features"]["observation.images.front"]["info"]["video.codec"] == "av1"
    assert info["features"]["action"]["shape"] == [6] and info["fps"] == 10
    assert os.path.isfile(os.path.join(video, "videos/observation.images.front/chunk-000/file-000.mp4"))
    # tasks.parquet as LeRobot reads it: pandas, the task strings are the index
    tasks = pd.read_parquet(os.path.join(video, "meta/tasks.parquet"))
    assert sorted(tasks.index) == sorted({d.instruction for d in demos})
    assert int(tasks.loc[demos[0].instruction].task_index) == 0 and tasks.iloc[0].name == demos[0].instruction
    eps = pd.read_parquet(os.path.join(video, "meta/episodes/chunk-000/file-000.parquet"))
    assert list(eps["length"]) == [12] * 6 and list(eps["dataset_from_index"]) == list(range(0, 72, 12))
    assert np.allclose(eps["videos/observation.images.front/from_timestamp"], np.arange(6) * 1.2)
    assert [list(t) for t in eps["tasks"]] == [[d.instruction] for d in demos]
    data = pd.read_parquet(os.path.join(video, "data/chunk-000/file-000.parquet"))
    assert list(data["index"]) == list(range(72)) and np.allclose(data["timestamp"][:12], np.arange(12) / 10)
    stats = json.load(open(os.path.join(video, "meta/stats.json")))
    assert np.allclose(stats["action"]["mean"], np.concatenate([d.actions for d in demos]).mean(0), atol=1e-5)
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)


def test_roundtrip_lowdim_exact_frames_within_codec_tolerance(exported):
    demos, video, images = exported
    for root, exact in ((video, False), (images, True)):
        back = load_demos(root, cameras=None)
        assert [d.task for d in back] == [d.task for d in demos]
        assert [d.instruction for d in back] == [d.instruction for d in demos]
        for a, b in zip(demos, back):
            assert np.array_equal(a.state, b.state) and np.array_equal(a.actions, b.actions)
            for c in a.images:
                assert b.images[c].shape == a.images[c].shape
                if exact:
                    assert np.array_equal(a.images[c], b.images[c])
        for c in demos[0].images:
            if not exact:
                ref = np.concatenate([d.images[c] for d in demos])
                got = np.concatenate([d.images[c] for d in back])
                assert _psnr(ref, got) >= 35.0, (c, _psnr(ref, got))
                assert np.abs(ref.astype(float) - got).mean() < 3.0
    # a middle episode alone (the reader seeks inside the shared file) equals the same episode read with the rest
    ds = LeRobotDir(video)
    got = {}
    ds.frames("observation.images.front", [ds.episodes[4]], lambda ep, fr: got.__setitem__(ep["episode_index"], fr))
    assert np.array_equal(got[4], load_demos(video, cameras=None)[4].images["front"])


def test_info_show_and_dims_read_the_folder(exported, tmp_path):
    _, video, _ = exported
    d = describe(video)
    assert d["format"] == "lerobot/v3.0" and d["episodes"] == 6 and d["frames"] == 72 and d["fps"] == 10
    assert d["features"]["camera.front"]["stored_as"] == "video" and d["features"]["action"]["shape"] == [6]
    dims = peek_dims(video)
    assert (dims["state_dim"], dims["action_dim"], dims["cameras"]) == (8, 6, ["front", "wrist"])
    out = subprocess.run([sys.executable, "-m", "vla.cli", "data", "show", video, "--episode", "2", "--out",
                          str(tmp_path / "show")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["steps"] == 12 and os.path.getsize(shown["video"]) > 0 and os.path.getsize(shown["action"]) > 0


def test_exported_state_and_action_names_are_the_robot_sides(tmp_path):
    """A 9-dim state and 7-dim eef_delta actions without names of their own are exported with the names the robot
    side's observation spec uses: vla does not import robot_bridge, so each keeps the list, and they are equal."""
    from robot_bridge.robots import base as robot
    from vla.features import ACTION_NAMES, STATE_NAMES

    assert STATE_NAMES == robot.STATE_NAMES and ACTION_NAMES == robot.ACTION_NAMES
    demos = _demos(n=2, T=6, state_dim=9, action_dim=7, cams=(("front", 16, 16),))
    root = str(tmp_path / "ds")
    export_lerobot(demos, root, fps=10, video=False)
    info = json.load(open(os.path.join(root, "meta/info.json")))
    assert info["features"]["observation.state"]["names"] == list(STATE_NAMES)
    fm = LeRobotDir(root).feature_map()
    assert fm.state_names == STATE_NAMES and fm.action_names == ACTION_NAMES
    back = load_demos(root, cameras=None)
    assert all(np.array_equal(a.state, b.state) and np.array_equal(a.images["front"], b.images["front"])
               for a, b in zip(demos, back))


def test_frame_cache_is_a_memmap_built_once(exported, tmp_path):
    demos, video, _ = exported
    copy = str(tmp_path / "ds")
    shutil.copytree(video, copy)
    cache = str(tmp_path / "cache")
    first = load_demos(copy, split="train", cameras=("front",), image_size=32, frame_cache=cache)
    assert isinstance(first[0].images["front"], np.memmap) and first[0].images["front"].shape == (12, 32, 32, 3)
    assert len(first) == 6 and load_demos(copy, split="valid", cameras=[]) == []  # every 10th: none of 6
    files = os.listdir(os.path.join(cache, os.listdir(cache)[0]))
    assert "observation.images.front.u8" in files and "observation.images.front.done.json" in files
    shutil.rmtree(os.path.join(copy, "videos"))  # a cache hit decodes nothing
    again = load_demos(copy, split="train", cameras=("front",), image_size=32, frame_cache=cache)
    assert all(np.array_equal(a.images["front"], b.images["front"]) for a, b in zip(first, again))
    with pytest.raises(DatasetError,
                       match=r"videos/observation.images.front/chunk-000/file-000.mp4: video file not found"):
        load_demos(copy, cameras=("front",), image_size=24, frame_cache=cache)  # another size: decodes, and fails
    # batches over memmap views (no copy) equal batches over the same frames in RAM
    from vla.config import ModelConfig
    from vla.normalization import StateNormalizer
    from vla.tokenizers import ActionTokenizer, WordTokenizer

    mcfg = ModelConfig(cameras=("front",), state_dim=8, action_dim=6, image_size=32, block_size=6)
    acts = np.concatenate([d.actions for d in first])
    st = np.concatenate([d.state for d in first])
    tok = ActionTokenizer(np.quantile(acts, 0.01, 0), np.quantile(acts, 0.99, 0), 32)
    norm = StateNormalizer(np.quantile(st, 0.01, 0), np.quantile(st, 0.99, 0))
    words = WordTokenizer.fit([d.instruction for d in first])
    mm = DemoBatches(first, mcfg, tok, norm, words)
    ram = DemoBatches([Demo(**{**d.__dict__, "images": {"front": np.array(d.images["front"])}}) for d in first],
                      mcfg, tok, norm, words)
    assert isinstance(mm.images["front"], FrameRows) and isinstance(ram.images["front"], np.ndarray)
    idx = np.array([0, 13, 59, 30, 7])
    assert np.array_equal(mm.images["front"][idx], ram.images["front"][idx])
    assert all(np.array_equal(mm.batch(idx)[k], ram.batch(idx)[k]) for k in ("images", "state", "action_tokens"))


def test_broken_datasets_name_the_file_and_field(exported, tmp_path):
    _, video, images = exported
    a = str(tmp_path / "a")
    shutil.copytree(video, a)
    os.remove(os.path.join(a, "videos/observation.images.wrist/chunk-000/file-000.mp4"))
    with pytest.raises(DatasetError, match=r"observation.images.wrist/chunk-000/file-000.mp4: video file not found"):
        load_demos(a, cameras=None)
    b = str(tmp_path / "b")
    shutil.copytree(images, b)
    info = json.load(open(os.path.join(b, "meta/info.json")))
    info["total_frames"] = 70
    json.dump(info, open(os.path.join(b, "meta/info.json"), "w"))
    with pytest.raises(DatasetError, match=r"/data: 72 frames, meta/info.json total_frames says 70"):
        load_demos(b, cameras=[])
    import pyarrow.parquet as pq

    c = str(tmp_path / "c")
    shutil.copytree(images, c)
    f = os.path.join(c, "data/chunk-000/file-000.parquet")
    pq.write_table(pq.read_table(f).slice(0, 66), f)  # the last episode lost half its rows
    with pytest.raises(DatasetError, match=r"data/chunk-000/file-000.parquet: episode 5 has 6 frames, meta/episodes "
                                           r"says 12"):
        load_demos(c, cameras=[])
    with pytest.raises(DatasetError, match=r"meta/info.json: no feature 'observation.nope'"):
        peek_dims(video, features=__import__("vla.features").features.FeatureMap.from_dict(
            {"cameras": {"front": "observation.images.front"}, "state": ["observation.nope"], "action": "action"}))
    with pytest.raises(DatasetError, match=r"not a LeRobot dataset \(no meta/info.json\)"):
        LeRobotDir(str(tmp_path))
    with pytest.raises(FileExistsError, match="exists; pass --overwrite"):
        export_lerobot(_demos(n=1), video, fps=10)


@pytest.mark.slow
def test_a_lerobot_dataset_trains_with_no_overrides_and_serves_its_action_size(exported, tmp_path):
    _, video, _ = exported
    p = _train(video, tmp_path, steps=5)
    assert (p.cfg.state_dim, p.cfg.action_dim, tuple(p.cfg.cameras)) == (8, 6, ("front", "wrist"))
    obs = {"images": {"front": np.zeros((48, 64, 3), np.uint8), "wrist": np.zeros((64, 64, 3), np.uint8)},
           "state": np.zeros(8, np.float32), "instruction": "stack the thing 0"}
    assert p.infer(obs)["actions"].shape == (p.cfg.chunk_size, 6)


def test_lerobot_own_reader_loads_the_export(tmp_path):
    """LeRobot 0.4.4's LeRobotDataset loads our export offline, in its own venv (benchmarks/peers/setup.sh): low-dim
    data and task strings exact, image mode exact, video within codec tolerance, frame by frame."""
    if not os.path.exists(os.path.join(PEERS_VENV, ".installed")):
        pytest.skip(f"LeRobot's own reader not checked: no complete peer venv at {PEERS_VENV} (make it with `make "
                    f"peers`; LeRobot needs numpy 2 and its own torch, so it cannot share ours)")
    for video in (False, True):
        demos = _demos(n=3)
        root = str(tmp_path / ("video" if video else "images"))
        export_lerobot(demos, root, fps=10, video=video)
        out = str(tmp_path / f"check_{video}.json")
        r = subprocess.run([PEERS_PY, os.path.join(REPO, "benchmarks/peers/check_lerobot_reader.py"), "--dataset", root,
                            "--out", out, "--frames-per-camera", "36"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        got = np.load(out.replace(".json", ".npz"))
        assert np.array_equal(got["state"], np.concatenate([d.state for d in demos]))
        assert np.array_equal(got["action"], np.concatenate([d.actions for d in demos]))
        assert list(got["task"]) == [d.instruction for d in demos for _ in range(len(d))]
        for c in ("front", "wrist"):
            ref = np.concatenate([d.images[c] for d in demos])[got[f"frame_ids_{c}"]]
            if video:
                assert (_psnr(ref, got[f"frames_{c}"]) >= 35.0
                        and np.abs(ref - got[f"frames_{c}"].astype(float)).mean() < 3)
            else:
                assert np.array_equal(ref, got[f"frames_{c}"])


@pytest.mark.slow
def test_two_arm_absolute_joint_dataset_with_three_cameras_trains_and_records_its_layout(tmp_path):
    """14 action dims (two 6-joint arms + a gripper each, absolute joint targets), 3 cameras, 16-dim state: exported
    with its layout, read back, trained with no overrides; the checkpoint and the handshake say which dims drive
    which arm."""
    from vla.features import FeatureMap

    names = tuple(f"{arm}_{j}" for arm in ("left", "right") for j in ("q1", "q2", "q3", "q4", "q5", "q6", "gripper"))
    arms = ({"name": "left", "dims": [0, 7], "gripper": 6}, {"name": "right", "dims": [7, 14], "gripper": 13})
    fm = FeatureMap(cameras={"high": "h", "left_wrist": "l", "right_wrist": "r"}, state=("s",),
                    action_space="joint_absolute", action_names=names, arms=arms)
    demos = _demos(n=4, state_dim=16, action_dim=14, cams=(("high", 48, 64), ("left_wrist", 32, 32),
                                                           ("right_wrist", 32, 32)))
    root = str(tmp_path / "aloha_like")
    export_lerobot(demos, root, fps=50, features=fm)
    back = LeRobotDir(root).feature_map()
    assert back.action_space == "joint_absolute" and back.action_names == names and list(back.arms) == list(arms)
    p = _train(root, tmp_path, steps=3)
    assert (p.cfg.state_dim, p.cfg.action_dim) == (16, 14) and len(p.cfg.cameras) == 3
    space = p.metadata["action_space"]
    assert space["kind"] == "joint_absolute" and space["dim"] == 14 and space["names"] == list(names)
    assert space["arms"] == [dict(a) for a in arms]
    assert space["units"] == (["rad"] * 6 + ["gripper"]) * 2  # joint kinds: rad, the arms' gripper dims "gripper"
    obs = {"images": {c: np.zeros((32, 32, 3), np.uint8) for c in p.cfg.cameras}, "state": np.zeros(16, np.float32),
           "instruction": "stack the thing 0"}
    assert p.infer(obs)["actions"].shape == (p.cfg.chunk_size, 14)
    with pytest.raises(ValueError, match=r"arms\[1\]: expected \{name, dims"):
        FeatureMap(cameras={}, state=("s",), arms=({"name": "a", "dims": [0, 7]}, {"name": "b", "dims": [7]}))
    with pytest.raises(ValueError, match=r"must tile the action from 0"):
        FeatureMap(cameras={}, state=("s",), arms=({"name": "a", "dims": [0, 7]}, {"name": "b", "dims": [8, 14]}))


@pytest.mark.slow
def test_a_policy_trained_by_lerobot_serves_behind_our_protocol(tmp_path):
    """Issue 25's adapter: LeRobot's ACT, trained by LeRobot's own trainer (3 steps) on our export, served by
    benchmarks/peers/serve_lerobot.py in the peer venv, answers our torch-free client with a chunk of the dataset's
    action size; a malformed request gets an error naming the field and the server keeps serving."""
    if not os.path.exists(os.path.join(PEERS_VENV, ".installed")):
        pytest.skip(f"no complete peer venv at {PEERS_VENV} (`make peers`)")
    import re
    import signal

    from robot_bridge.client import PolicyClient
    from robot_bridge.protocol import ServerError

    root = str(tmp_path / "data")
    export_lerobot(_demos(n=3), root, fps=10, video=False)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    r = subprocess.run([PEERS_PY, os.path.join(REPO, "benchmarks/peers/train_lerobot.py"), "--policy", "act",
                        "--dataset", root, "--out", str(tmp_path / "act"), "--minutes", "5", "--steps", "3",
                        "--batch-size", "2", "--num-workers", "0"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.load(open(tmp_path / "act" / "train_summary.json"))
    assert summary["ok"] and summary["steps_done"] == 3
    proc = subprocess.Popen([PEERS_PY, os.path.join(REPO, "benchmarks/peers/serve_lerobot.py"), "--policy",
                             str(tmp_path / "act"), "--bind", "tcp://127.0.0.1:0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        addr, seen = None, []
        for line in proc.stdout:
            seen.append(line)
            m = re.search(r"\[serve_lerobot\] .* on (tcp://[0-9.]+:\d+)", line)
            if m:
                addr = m.group(1)
                break
        assert addr, "".join(seen)[-3000:]
        with PolicyClient(addr, timeout_ms=60_000, retries=0) as c:
            meta = c.hello()
            assert meta["action_dim"] == 6 and meta["state_dim"] == 8
            assert sorted(meta["cameras"]) == ["front", "wrist"]
            obs = {"images": {"front": np.zeros((48, 64, 3), np.uint8), "wrist": np.zeros((64, 64, 3), np.uint8)},
                   "state": np.zeros(8, np.float32), "instruction": "stack the thing 0"}
            a = c.infer(obs)["actions"]
            assert a.shape == (meta["chunk_size"], 6) and np.isfinite(a).all()
            with pytest.raises(ServerError, match="state"):
                c.infer({**obs, "state": np.zeros(5, np.float32)})  # the wrong size
            assert c.infer(obs)["actions"].shape == a.shape  # still serving
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
