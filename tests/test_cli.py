"""The `vla` console script: help, task listing, and errors that name what was wrong."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vla(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "vla.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_help_lists_commands():
    r = _vla("--help")
    assert r.returncode == 0
    for cmd in ("envs", "collect", "train", "eval", "serve", "distill", "capvector", "export"):
        assert cmd in r.stdout


def test_envs_lists_tasks():
    r = _vla("envs")
    assert r.returncode == 0
    for task in ("Lift", "Stack", "PickPlaceCan", "PickColor", "StackColor"):
        assert task in r.stdout


def test_errors_are_named(tmp_path):
    r = _vla("collect", "--task", "Lfit", "--episodes", "1", "--out", str(tmp_path / "x.hdf5"))
    assert r.returncode == 2 and "unknown task 'Lfit'" in r.stderr and "Did you mean 'Lift'" in r.stderr
    r = _vla("train", "--config", "lift_tinny")
    assert r.returncode == 2 and "lift_tiny" in r.stderr
    r = _vla("eval", "--policy", str(tmp_path / "missing"), "--task", "Lift", "--episodes", "1")
    assert r.returncode == 2 and "missing" in r.stderr


def test_export_half_precision_keeps_notes(tmp_path):
    import json

    from vla.policy import Policy

    Policy.untrained("tiny").save_pretrained(str(tmp_path / "p"), extra={"train": {"steps": 5}})
    (tmp_path / "train_summary.json").write_text(json.dumps({"steps": 5, "train_seconds": 12.5}))  # the run's, beside p
    r = _vla("export", "--policy", str(tmp_path / "p"), "--out", str(tmp_path / "q"), "--note", "reproduce=vla train x")
    assert r.returncode == 0, r.stderr
    cfg = json.load(open(tmp_path / "q" / "config.json"))
    assert cfg["reproduce"] == "vla train x" and cfg["train"] == {"steps": 5}
    assert cfg["train_summary"] == {"steps": 5, "train_seconds": 12.5}  # how long the shipped weights trained
    assert json.loads(r.stdout)["model_bytes"] < 0.55 * os.path.getsize(tmp_path / "p" / "model.safetensors")
    r = _vla("export", "--policy", str(tmp_path / "p"), "--out", str(tmp_path / "z"), "--note", "oops")
    assert r.returncode == 2 and "--note" in r.stderr


def test_export_sets_the_saved_decode_and_keeps_the_weights(tmp_path):
    """`vla export --steps-k 1` changes what the copy decodes with when served without flags (a release's default
    serving path), and nothing else: the fp16 weights of an fp16 checkpoint come back bit for bit."""
    import json

    from safetensors.numpy import load_file

    from vla.policy import Policy

    Policy.untrained("tiny").save_pretrained(str(tmp_path / "p"), dtype="float16")
    r = _vla("export", "--policy", str(tmp_path / "p"), "--out", str(tmp_path / "q"), "--steps-k", "1")
    assert r.returncode == 0, r.stderr
    src, dst = (json.load(open(tmp_path / d / "config.json")) for d in ("p", "q"))
    assert src["decode"]["steps"] != 1 and dst["decode"] == {**src["decode"], "steps": 1}
    assert Policy.from_pretrained(str(tmp_path / "q")).decode_cfg.steps == 1
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("p", "q"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_decode_flags_reach_the_decode_config():
    """`vla eval` and `vla serve` share the decode flags; they become DecodeConfig fields, and a bad value is a
    clear error naming the field."""
    from vla.cli import _load_extra_commands, build_parser
    from vla.cli.decode_args import decode_overrides

    _load_extra_commands()

    args = build_parser().parse_args(["eval", "--policy", "p", "--task", "Lift", "--decoder", "pipelined",
                                      "--decode-steps", "4", "--start-blocks", "3", "--steps-k", "6"])
    assert decode_overrides(args) == {"decoder": "pipelined", "decode_steps": 4, "start_blocks": 3, "steps": 6}
    sargs = build_parser().parse_args(["serve", "--policy", "p", "--start-blocks", "2"])
    assert decode_overrides(sargs) == {"start_blocks": 2}
    from vla.config import DecodeConfig

    with pytest.raises(ValueError, match="start_blocks: expected >= 1"):
        DecodeConfig(decoder="pipelined", **decode_overrides(build_parser().parse_args(
            ["eval", "--policy", "p", "--task", "Lift", "--start-blocks", "-1"])))


def test_a_set_override_changes_one_field_of_the_model_preset():
    """`--set model.image_size=96` on a config with `model: tiny`: the preset's other fields stay (one merge rule for
    the CLI and load_train_config)."""
    import argparse

    from vla.cli.commands import train_config_from_args
    from vla.config import load_model_config, preset_model_config

    tiny = load_model_config("tiny")
    args = argparse.Namespace(config="lift_tiny", set=["model.image_size=96"], out=None, steps=None, init=None,
                              capvector=None, orth_weight=None, data=None)
    cfg = train_config_from_args(args)
    assert cfg.model == {"preset": "tiny", "image_size": 96}
    m = preset_model_config(cfg.model)
    assert m.image_size == 96 and tiny.image_size != 96
    assert m.hidden_size == tiny.hidden_size == 192 and m.num_layers == tiny.num_layers
