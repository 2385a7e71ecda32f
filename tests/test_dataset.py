"""robomimic-layout HDF5: exact round trip, crash-safe collection, clear errors for bad files."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from sim.collect import collect
from vla.data import ChunkSampler
from vla.features import DatasetError
from vla.formats import load_demos
from vla.formats.hdf5 import check_file
from vla.formats.hdf5_writer import DemoWriter
from vla.stats import compute_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_demo(rng, T, S=16):
    return dict(
        images={"agentview": rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8),
                "wrist": rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8)},
        state=rng.normal(size=(T, 9)).astype(np.float32),
        actions=rng.uniform(-1, 1, (T, 7)).astype(np.float32),
        object_pos=rng.normal(size=(T, 3, 3)).astype(np.float32),
        sim_states=rng.normal(size=(T, 40)),
    )


def test_roundtrip_exact(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "d.hdf5")
    demos = [_fake_demo(rng, T) for T in (5, 9, 3)]
    with DemoWriter(path, {"env_name": "Lift"}, valid_every=3) as w:
        for i, d in enumerate(demos):
            w.add_demo(task="Lift", instruction=f"lift the cube {i}", seed=i, **d)
    with h5py.File(path) as f:
        assert f["data"].attrs["total"] == 17
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "Lift"
        assert f["data/demo_1"].attrs["num_samples"] == 9
        assert list(f["mask/valid"][()]) == [b"demo_2"]
        assert list(f["mask/train"][()]) == [b"demo_0", b"demo_1"]
        np.testing.assert_array_equal(f["data/demo_0/states"][()], demos[0]["sim_states"])
        np.testing.assert_array_equal(f["data/demo_0/obs/robot0_eef_pos"][()], demos[0]["state"][:, :3])
        assert f["data/demo_0/dones"][()][-1] == 1 and f["data/demo_0/rewards"][()].sum() == 1
    back = load_demos(path)
    for d, b in zip(demos, back):
        for cam in ("agentview", "wrist"):
            np.testing.assert_array_equal(d["images"][cam], b.images[cam])
        np.testing.assert_array_equal(d["state"], b.state)
        np.testing.assert_array_equal(d["actions"], b.actions)
        np.testing.assert_array_equal(d["object_pos"], b.object_pos)
    assert [b.instruction for b in back] == ["lift the cube 0", "lift the cube 1", "lift the cube 2"]
    assert len(load_demos(path, split="valid")) == 1 and len(load_demos(path, split="train")) == 2


def test_append_and_multitask_mix(tmp_path):
    rng = np.random.default_rng(1)
    a, b = str(tmp_path / "a.hdf5"), str(tmp_path / "b.hdf5")
    with DemoWriter(a, {"env_name": "Lift"}) as w:
        w.add_demo(task="Lift", instruction="lift the cube", seed=0, **_fake_demo(rng, 4))
    with DemoWriter(a, {"env_name": "Lift"}, append=True) as w:
        name = w.add_demo(task="Lift", instruction="lift the cube", seed=1, **_fake_demo(rng, 4))
    assert name == "demo_1"
    with pytest.raises(FileExistsError):
        DemoWriter(a, {})
    with DemoWriter(b, {"env_name": "PickColor"}) as w:
        w.add_demo(task="PickColor", instruction="pick up the red cube", seed=0, **_fake_demo(rng, 6))
    mixed = load_demos([a, b])
    assert [d.task for d in mixed] == ["Lift", "Lift", "PickColor"]
    assert [d.task for d in load_demos([a, b], tasks=["PickColor"])] == ["PickColor"]


def test_stats_and_chunks(tmp_path):
    rng = np.random.default_rng(2)
    path = str(tmp_path / "d.hdf5")
    with DemoWriter(path, {}) as w:
        w.add_demo(task="Lift", instruction="x", seed=0, **_fake_demo(rng, 6))
    demos = load_demos(path)
    st = compute_stats([demos[0].actions])
    for k in ("mean", "std", "min", "max", "q01", "q99"):
        assert len(st[k]) == 7
    np.testing.assert_allclose(st["max"], demos[0].actions.max(0), rtol=1e-6)
    s = ChunkSampler(demos, horizon=4).get(4)  # steps 4, 5, then padded with step 5
    np.testing.assert_array_equal(s["actions"], demos[0].actions[[4, 5, 5, 5]])
    assert s["is_pad"].tolist() == [False, False, True, True]


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_demos(str(tmp_path / "nope.hdf5"))
    assert "nope.hdf5" in str(e.value)
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DatasetError) as e:
        load_demos(str(bad))
    assert "bad.hdf5" in str(e.value)
    nokey = str(tmp_path / "nokey.hdf5")
    rng = np.random.default_rng(3)
    with DemoWriter(nokey, {}) as w:
        w.add_demo(task="Lift", instruction="x", seed=0, **_fake_demo(rng, 3))
    with h5py.File(nokey, "a") as f:
        del f["data/demo_0/actions"]
    with pytest.raises(DatasetError) as e:
        check_file(nokey)
    assert "nokey.hdf5" in str(e.value) and "data/demo_0/actions" in str(e.value)
    with pytest.raises(DatasetError) as e:
        load_demos(nokey, cameras=("agentview", "side"))
    assert "side_image" in str(e.value) or "actions" in str(e.value)


def test_collect_real_env(tmp_path):
    out = str(tmp_path / "lift.hdf5")
    res = collect("Lift", episodes=2, out=out, image_size=32, noise=0.05, progress=False)
    assert res.demos == 2 and not res.interrupted
    demos = load_demos(out)
    assert len(demos) == 2 and demos[0].images["agentview"].shape[1:] == (32, 32, 3)
    assert demos[0].instruction == "lift the cube"
    # the privileged cube position follows the real cube: it rises by the end of a successful demo
    assert demos[0].object_pos[-1, 0, 2] > demos[0].object_pos[0, 0, 2] + 0.003
    with pytest.raises(ValueError) as e:
        collect("Lfit", episodes=1, out=str(tmp_path / "x.hdf5"), progress=False)
    assert "Lift" in str(e.value)
    assert not os.path.exists(tmp_path / "x.hdf5")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_collection_keeps_finished_demos(tmp_path, sig):
    out = str(tmp_path / "c.hdf5")
    code = (
        "import sim.collect as c; c.collect('Lift', episodes=50, out=%r, image_size=32, progress=False)" % out
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    n = 0
    while time.time() < deadline:  # wait until at least two demos are on disk
        time.sleep(0.5)
        try:
            with h5py.File(out, "r", locking=False) as f:  # the writer holds HDF5's lock until it closes the file
                n = len(f["data"].keys())
        except Exception:
            n = 0
        if n >= 2:
            break
    assert proc.poll() is None, "the collection finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    demos = load_demos(out)
    assert len(demos) >= 2
    with h5py.File(out, "r") as f:
        assert f["data"].attrs["total"] == sum(len(d) for d in demos)
        names = [x.decode() for x in f["mask/train"][()]] + [x.decode() for x in f["mask/valid"][()]]
        assert sorted(names) == sorted(f["data"].keys())
