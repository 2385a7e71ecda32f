"""Training configs: nested sections per objective, the legacy flat names, one model setting, recipes that extend."""

import argparse

import pytest

from vla.config import (LEGACY_KEYS, DataConfig, TrainConfig, load_model_config, load_train_config,
                        preset_model_config, to_dict, train_config_from_dict, upgrade_legacy)


def test_sections_validate_their_fields_and_name_them():
    cfg = TrainConfig.build(df={"first": [0.1, 0.6]}, optim={"lr": "1e-4"}, aux={"kind": "spatial", "layer": 1})
    assert cfg.df.first == (0.1, 0.6) and cfg.optim.lr == 1e-4 and cfg.aux.kind == "spatial"
    for bad, match in [({"df": {"first": [0.8, 0.2]}}, r"df\.first: expected \[a, b\]"),
                       ({"df": {"first": "x"}}, r"df\.first: expected a list of 2 numbers"),
                       ({"prefix": {"prob": 1.5}}, r"prefix\.prob"),
                       ({"aux": {"head": "conv"}}, r"aux\.head"),
                       ({"orth": {"form": "dot"}}, r"orth\.form"),
                       ({"lora": {"rank": -1}}, r"lora\.rank"),
                       ({"optim": {"lrr": 1}}, r"optim\.lrr: unknown OptimConfig field\. Did you mean 'lr'"),
                       ({"distill": {"temperature": 0}}, r"distill\.temperature"),
                       ({"objective": "distill"}, r"distill\.teacher"),
                       ({"model": {"preset": "tiny", "vision_flim": True}}, r"model\.vision_flim.*'vision_film'"),
                       ({"model": {"vision_film": "yes"}}, r"model\.vision_film: expected true or false"),
                       ({"model": "tiyn"}, r"unknown model config 'tiyn'")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig.build(**bad)


def test_a_legacy_flat_config_loads_onto_the_nested_fields():
    """A flat config as checkpoints and runs of earlier versions saved it, through the one mapping table."""
    flat = {"model": "tiny", "model_overrides": {"vision_film": True}, "df_first": [0.3, 0.6], "df_max_increment": 0.2,
            "df_clean_past_prob": 0.4, "prefix_prob": 0.5, "prefix_max_steps": 3, "teacher": "t",
            "distill_ce_weight": 0.1, "distill_temperature": 2.0, "aux": "spatial", "aux_weight": 0.3, "aux_layer": 1,
            "aux_head": "attn", "aux_future_steps": 2, "capvector": "g.safetensors", "orth_weight": 1.0,
            "orth_form": "inner", "lora_rank": 2, "lora_alpha": 8.0, "lr": 1e-4, "weight_decay": 0.0,
            "betas": [0.8, 0.9], "warmup_steps": 7, "min_lr_ratio": 0.2, "grad_clip": 0.5, "steps": 9}
    assert set(flat) - {"model", "steps"} == set(LEGACY_KEYS)  # every legacy name is exercised
    cfg = train_config_from_dict(flat)
    assert cfg.model == {"preset": "tiny", "vision_film": True}
    assert cfg.df.first == (0.3, 0.6) and cfg.df.max_increment == 0.2 and cfg.df.clean_past_prob == 0.4
    assert (cfg.prefix.prob, cfg.prefix.max_steps) == (0.5, 3)
    assert (cfg.distill.teacher, cfg.distill.ce_weight, cfg.distill.temperature) == ("t", 0.1, 2.0)
    assert (cfg.aux.kind, cfg.aux.weight, cfg.aux.layer, cfg.aux.head, cfg.aux.future_steps) == (
        "spatial", 0.3, 1, "attn", 2)
    assert (cfg.orth.capvector, cfg.orth.weight, cfg.orth.form) == ("g.safetensors", 1.0, "inner")
    assert (cfg.lora.rank, cfg.lora.alpha) == (2, 8.0)
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.8, 0.9) and cfg.optim.warmup_steps == 7
    assert (cfg.optim.weight_decay, cfg.optim.min_lr_ratio, cfg.optim.grad_clip) == (0.0, 0.2, 0.5)
    assert cfg.steps == 9
    # saved in the nested layout, it loads back to the same config
    assert train_config_from_dict(to_dict(cfg)) == cfg
    # `aux` is a section too: a mapping is the nested form, anything else the legacy kind
    assert upgrade_legacy({"aux": {"kind": "eef_future"}}) == {"aux": {"kind": "eef_future"}}
    assert upgrade_legacy({"aux": None}) == {"aux": {"kind": None}}


def test_set_takes_nested_and_legacy_keys():
    from vla.cli.commands import train_config_from_args

    args = argparse.Namespace(config="lift_tiny", out=None, steps=None, init=None, capvector=None, orth_weight=2.0,
                              data=None, set=["optim.lr=1e-4", "df.first=[0.1,0.5]", "warmup_steps=7",
                                              "model.vision_film=true", "model_overrides.text_pool=ordered"])
    cfg = train_config_from_args(args)
    assert cfg.optim.lr == 1e-4 and cfg.optim.warmup_steps == 7 and cfg.df.first == (0.1, 0.5)
    assert cfg.model == {"preset": "tiny", "vision_film": True, "text_pool": "ordered"}
    assert cfg.orth.weight == 2.0  # the flag
    tiny = load_model_config("tiny")
    m = preset_model_config(cfg.model)
    assert m.vision_film and m.text_pool == "ordered" and m.hidden_size == tiny.hidden_size


def test_the_model_is_set_one_way():
    """A preset name, or {preset, fields}; a mapping without a preset starts from ModelConfig's defaults (a whole
    model config saved by earlier versions)."""
    assert TrainConfig(model="small").model == {"preset": "small"}
    cfg = TrainConfig.build(model={"preset": "tiny", "chunk_size": 16})
    assert preset_model_config(cfg.model).chunk_size == 16
    full = to_dict(load_model_config("tiny"))
    assert preset_model_config(TrainConfig.build(model=full).model) == load_model_config("tiny")
    assert preset_model_config(TrainConfig(model=load_model_config("tiny")).model) == load_model_config("tiny")


def _recipe(path, text):
    path.write_text(text)
    return str(path)


def test_recipes_extend_a_base_child_wins_and_cycles_are_named(tmp_path):
    _recipe(tmp_path / "parent.yaml", "extends: base\nmodel: {vision_film: true}\ndata: {paths: [a.hdf5], "
                                      "augment_shift: 0}\noptim: {lr: 0.001}\nsteps: 10\n")
    child = _recipe(tmp_path / "child.yaml", "extends: parent.yaml\nmodel: {chunk_size: 16}\ndata: {augment_color: "
                                             "0.5}\noptim: {warmup_steps: 5}\n")
    cfg = load_train_config(child)
    base = load_train_config("base")
    assert cfg.model == {"preset": "tiny", "vision_film": True, "chunk_size": 16}
    assert cfg.data == DataConfig(paths=("a.hdf5",), augment_shift=0, augment_color=0.5)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.steps) == (0.001, 5, 10)
    assert cfg.batch_size == base.batch_size and cfg.log_every == base.log_every
    assert load_train_config(child, {"optim": {"lr": 0.01}}).optim.lr == 0.01  # overrides over the chain
    _recipe(tmp_path / "a.yaml", "extends: b.yaml\nsteps: 1\n")
    _recipe(tmp_path / "b.yaml", "extends: a.yaml\nsteps: 2\n")
    with pytest.raises(ValueError, match=r"extends: a cycle \(a -> b -> a\)"):
        load_train_config(str(tmp_path / "a.yaml"))
    with pytest.raises(ValueError, match=r"extends: unknown train config 'lift_tiyn'.*Did you mean 'lift_tiny'"):
        load_train_config(_recipe(tmp_path / "c.yaml", "extends: lift_tiyn\n"))


def test_a_shipped_recipe_resolves_as_written():
    """multitask_tiny_release (the shipped multitask policy's recipe) over base resolves to what it states."""
    cfg = load_train_config("multitask_tiny_release")
    assert cfg.model == {"preset": "tiny", "vision_film": True, "vision_target": True, "target_objects": 2,
                         "text_pool": "ordered"}
    assert cfg.data.task_sampling == "weighted" and cfg.data.augment_color == 0.5 and cfg.data.augment_shift == 0
    assert (cfg.aux.kind, cfg.aux.weight, cfg.steps, cfg.n_action_steps, cfg.threads) == ("spatial", 0.5, 7200, 4, 2)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.keep_last) == (0.0005, 200, 3)
