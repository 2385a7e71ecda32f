"""What ships: the presets and checkpoints inside the vla package (a built wheel has them, loaded by the same code as
in the repo), and each shipped checkpoint carries a config and tokenizer that rebuild it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(ROOT, "vla", "pretrained")
SHIPPED = sorted(d for d in os.listdir(PRETRAINED) if os.path.isfile(os.path.join(PRETRAINED, d, "config.json")))


def test_presets_and_checkpoints_are_in_the_wheel(tmp_path):
    from vla import config

    assert config.CONFIG_DIR == __import__("pathlib").Path(config.__file__).resolve().parent / "configs"
    src = tmp_path / "src"  # a copy (tracked files only): pip builds in the source tree, not in the repository's
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)) and not os.path.islink(os.path.join(ROOT, f)):
            os.makedirs(os.path.dirname(src / f), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), src / f)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (whl,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = set(zipfile.ZipFile(tmp_path / whl).namelist())
    for kind in ("model", "train"):
        for preset in config.list_presets(kind):
            assert f"vla/configs/{kind}/{preset}.yaml" in names, (kind, preset)
    for ckpt in SHIPPED:
        for f in ("config.json", "model.safetensors", "normalization.json", "tokenizer.json"):
            assert f"vla/pretrained/{ckpt}/{f}" in names, (ckpt, f)
    assert not any(n.startswith("robot_bridge/pyproject") for n in names)


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_checkpoint_rebuilds_from_its_recorded_config_and_tokenizer(name):
    from vla.config import ModelConfig, from_dict
    from vla.policy import Policy

    d = os.path.join(PRETRAINED, name)
    cfg = json.load(open(os.path.join(d, "config.json")))
    tok = json.load(open(os.path.join(d, "tokenizer.json")))
    assert cfg["type"] == "dvla" and cfg["reproduce"].strip() and cfg["tasks"]
    model_cfg = from_dict(ModelConfig, cfg["model"], where="model.")
    policy = Policy.from_pretrained(d)
    assert policy.cfg == model_cfg  # the recorded config is the one the weights were built with
    assert tok["type"] == "word" and policy.text_tokenizer.to_json()["vocab"] == tok["vocab"]
    for task_word in ("lift",) if "lift" in name else ():
        assert task_word in tok["vocab"]
    rng = np.random.default_rng(0)
    s = model_cfg.image_size
    obs = {"images": {c: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for c in model_cfg.cameras},
           "state": np.zeros(model_cfg.state_dim, np.float32), "instruction": "lift the cube"}
    a = policy.infer(obs)["actions"]
    assert a.shape == (model_cfg.chunk_size, model_cfg.action_dim) and np.all(np.abs(a) <= 1.0 + 1e-6)


def test_make_demo_finds_the_shipped_checkpoints_and_the_repository():
    """vla/cli/demo.py (what `make demo` runs) resolves its paths from its own place in the package."""
    from vla.cli import demo

    assert os.path.isfile(os.path.join(demo.PRETRAINED, "config.json"))
    assert os.path.isfile(os.path.join(demo.FAST, "config.json"))
    assert os.path.realpath(demo.ROOT) == os.path.realpath(ROOT)  # demo data goes to <repo>/data, not into vla/
