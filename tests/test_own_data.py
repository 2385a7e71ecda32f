"""Finetuning on data we did not make (issue 24): robomimic's released key layout and other embodiments train with
no dimension overrides; the feature mapping is declared or detected; non-square frames are cropped, not squashed."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from vla.config import DataConfig, TrainConfig
from vla.features import DatasetError, FeatureMap, fit_frames
from vla.formats import load_demos
from vla.policy import Policy
from vla.train import train

pytestmark = pytest.mark.slow  # trains (a few steps each): `make test` runs it, `make test-fast` skips it


def _robomimic_file(path, state_parts=(3, 4, 2), action_dim=7, cams=("agentview_image", "robot0_eye_in_hand_image"),
                    size=(32, 32), demos=6, T=14, masks=False, scale=1.0, instruction=None):
    """robomimic's released layout: obs/robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos and camera keys, no
    obs/state, no instruction, env_args of env type 1 (robosuite)."""
    rng = np.random.default_rng(0)
    keys = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}})
        for i in range(demos):
            g = data.create_group(f"demo_{i}")
            obs = g.create_group("obs")
            for k, n in zip(keys, state_parts):
                obs.create_dataset(k, data=rng.normal(size=(T, n)).astype(np.float32))
            for c in cams:
                obs.create_dataset(c, data=rng.integers(0, 256, (T, *size, 3), dtype=np.uint8))
            t = np.linspace(0, 1, T)[:, None]
            g.create_dataset("actions", data=(scale * np.sin(t * (1 + np.arange(action_dim)) + i)).astype(np.float32))
            g.attrs["num_samples"] = T
            if instruction:
                g.attrs["instruction"] = instruction
        if masks:
            f.create_dataset("mask/train", data=np.array([f"demo_{i}" for i in range(demos - 1)], dtype="S"))
            f.create_dataset("mask/valid", data=np.array([f"demo_{demos - 1}"], dtype="S"))
    return str(path)


def _cfg(path, out, **kw):
    base = dict(model={"preset": "tiny", "num_layers": 1, "image_size": 32, "vision_channels": (8, 16, 32)},
                data=DataConfig(paths=(path,), augment_shift=0), out_dir=str(out), steps=5, batch_size=4,
                optim={"warmup_steps": 1}, log_every=1, val_every=0, save_every=0, seed=1, threads=1)
    base.update(kw)
    return TrainConfig.build(**base)


def test_robomimic_layout_trains_with_no_overrides(tmp_path):
    path = _robomimic_file(tmp_path / "lift_robomimic.hdf5", demos=10)
    demos = load_demos(path, split="train", cameras=None, image_size=32)
    assert len(demos) == 9 and demos[0].state.shape == (14, 9) and set(demos[0].images) == {"agentview", "wrist"}
    assert demos[0].instruction == "Lift"  # no language in robomimic: the task's name
    assert len(load_demos(path, split="valid", cameras=None)) == 1  # no mask/: every 10th demo held out
    train(_cfg(path, tmp_path / "run"), progress=False)
    p = Policy.from_pretrained(str(tmp_path / "run" / "policy"))
    assert p.cfg.state_dim == 9 and p.cfg.action_dim == 7 and tuple(p.cfg.cameras) == ("agentview", "wrist")


def test_another_embodiment_is_sized_by_its_data_and_serves_its_action_size(tmp_path):
    """8-dim state, 6-dim actions, one non-square camera: no --set; the policy serves (H, 6) chunks."""
    path = _robomimic_file(tmp_path / "arm6.hdf5", state_parts=(3, 4, 1), action_dim=6, cams=("agentview_image",),
                           size=(24, 40))
    train(_cfg(path, tmp_path / "run"), progress=False)
    p = Policy.from_pretrained(str(tmp_path / "run" / "policy"))
    c = p.cfg
    assert (c.state_dim, c.action_dim, tuple(c.cameras)) == (8, 6, ("agentview",))
    assert c.block_size % 6 == 0 and (c.chunk_size * 6) % c.block_size == 0
    obs = {"images": {"agentview": np.zeros((32, 32, 3), np.uint8)}, "state": np.zeros(8, np.float32),
           "instruction": "Lift"}
    assert p.infer(obs)["actions"].shape == (c.chunk_size, 6)
    # a config that disagrees with the data is an error naming both
    bad = _cfg(path, tmp_path / "bad", model={"preset": "tiny", "num_layers": 1, "image_size": 32,
                                              "vision_channels": (8, 16, 32), "action_dim": 7})
    with pytest.raises(ValueError, match=r"model.action_dim: the config says 7, the data .*arm6.hdf5 has 6"):
        train(bad, progress=False)


def test_feature_map_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"data.features: unknown field\(s\) \['camera'\].*did you mean 'cameras'"):
        DataConfig(paths=("x",), features={"camera": {"agentview": "agentview_image"}, "state": ["a"]})
    with pytest.raises(ValueError, match=r"obs key\(s\) \['agentview_image'\] mapped to more than one camera"):
        FeatureMap.from_dict({"cameras": {"a": "agentview_image", "b": "agentview_image"}, "state": ["s"]})
    path = _robomimic_file(tmp_path / "d.hdf5", masks=True)
    fm = FeatureMap.from_dict({"cameras": {"agentview": "agentview_image"}, "state": ["robot0_eef_pos", "nope"]})
    with pytest.raises(DatasetError, match=r"d.hdf5: missing key 'data/demo_0/obs/nope'"):
        load_demos(path, cameras=None, features=fm)
    with pytest.raises(DatasetError, match=r"camera\(s\) \['wrist'\] are not in the data's feature map"):
        load_demos(path, cameras=("agentview", "wrist"), features=FeatureMap.from_dict(
            {"cameras": {"agentview": "agentview_image"}, "state": ["robot0_eef_pos"]}))


def test_non_square_frames_are_cropped_or_padded_never_squashed():
    frames = np.zeros((1, 20, 40, 3), np.uint8)
    frames[:, :, :10] = 255  # a white band on the left quarter
    crop = fit_frames(frames, 20, "crop")  # centre 20x20: the band is outside
    assert crop.shape == (1, 20, 20, 3) and crop.max() == 0
    pad = fit_frames(frames, 40, "pad")  # 40x40 with the frame in the middle rows: the band keeps its width
    assert pad.shape == (1, 40, 40, 3) and pad[0, 20, :10].min() == 255 and pad[0, 20, 10:].max() == 0
    assert pad[0, :10].max() == 0  # black padding above
    with pytest.raises(ValueError, match="frame_fit"):
        fit_frames(frames, 20, "squash")


def test_vla_data_info_and_show_on_a_robomimic_file(tmp_path, capsys):
    import imageio.v2 as imageio

    from vla.cli import main

    path = _robomimic_file(tmp_path / "lift_robomimic.hdf5", cams=("agentview_image",), size=(24, 40))
    assert main(["data", "info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "robomimic" and info["episodes"] == 6 and info["frames"] == 6 * 14 and info["fps"] == 20
    assert info["features"]["camera.agentview"] == {"key": "obs/agentview_image", "shape": [24, 40, 3],
                                                    "dtype": "uint8"}
    assert info["features"]["action"]["shape"] == [7] and len(info["action"]["q99"]) == 7
    assert len(info["state"]["q01"]) == 9 and info["tasks"] == {"Lift": 6}
    out = tmp_path / "show"
    assert main(["data", "show", path, "--episode", "2", "--out", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)
    frames = imageio.mimread(shown["video"])
    assert len(frames) == 14 and frames[0].shape[:2] == (24, 40)  # the recorded size, not squashed
    for k in ("state", "action"):
        assert imageio.imread(shown[k]).ndim == 3
    assert main(["data", "show", path, "--episode", "9"]) == 2
    assert "--episode: expected 0..5" in capsys.readouterr().err


def test_init_from_the_shipped_policy_refits_processors_grows_words_and_lists_reinit(tmp_path):
    """`vla train --init vla/pretrained/lift_tiny` on data with 3x the action range, one camera and new words: the
    new checkpoint's bins cover the new data's quantiles, old words keep their ids, re-initialised modules are listed
    and saved, and it reloads."""
    import os

    from vla.cli import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base_dir = os.path.join(root, "vla", "pretrained", "lift_tiny")
    base = Policy.from_pretrained(base_dir)
    path = _robomimic_file(tmp_path / "mug.hdf5", cams=("agentview_image",), size=(64, 64), demos=10, scale=3.0,
                           instruction="grab the teal mug")
    out = tmp_path / "ft"
    rc = main(["train", "--config", "lift_tiny", "--init", base_dir, "--data", path, "--out", str(out), "--steps", "3",
               "--set", "batch_size=4", "--set", "val_every=0", "--set", "save_every=0", "--set", "aux=null",
               "--set", "threads=1", "--no-progress"])
    assert rc == 0
    p = Policy.from_pretrained(str(out / "policy"))
    cfg = json.load(open(out / "policy" / "config.json"))
    acts = np.concatenate([d.actions for d in load_demos(path, split="train", cameras=[])])
    q01, q99 = np.quantile(acts, 0.01, axis=0), np.quantile(acts, 0.99, axis=0)
    np.testing.assert_allclose(p.action_tokenizer.low, q01, rtol=1e-5)  # refitted: the bins span the new range
    np.testing.assert_allclose(p.action_tokenizer.high, q99, rtol=1e-5)
    assert q99.max() > 1.5 and not np.allclose(base.action_tokenizer.high, p.action_tokenizer.high)
    vocab = p.text_tokenizer.vocab
    assert vocab[: len(base.text_tokenizer.vocab)] == base.text_tokenizer.vocab
    assert {"teal", "mug", "grab"} <= set(vocab)
    assert tuple(p.cfg.cameras) == ("agentview",)
    init = cfg["init"]
    assert "camera_embed" in init["reinitialized"] and any(k.startswith("vision.1") for k in init["dropped"])
    assert any(k.endswith("embed_tokens.weight") for k in init["grown"]) and {"teal", "mug"} <= set(init["new_words"])
    # everything else came from the base: the first stem's weights moved only by 3 steps of training
    k = "vision.0.stages.0.0.weight"
    moved = float((p.model.state_dict()[k] - base.model.state_dict()[k]).abs().max())
    assert 0 < moved < 0.05
    obs = {"images": {"agentview": np.zeros((64, 64, 3), np.uint8)}, "state": np.zeros(9, np.float32),
           "instruction": "grab the teal mug"}
    assert p.infer(obs)["actions"].shape == (p.cfg.chunk_size, 7)
