"""The training loop: exact resume, a 2-process torchrun (DDP over gloo), metrics and checkpoints."""

import json
import os
import subprocess
import sys

import numpy as np
from demo_helpers import write_synthetic_demos
import pytest
import torch
from safetensors.torch import load_file

from vla.config import DataConfig, DistillConfig, TrainConfig
from vla.policy import Policy
from vla.train import train

pytestmark = pytest.mark.slow  # training runs: `make test` runs them, `make test-fast` skips them

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Small synthetic demo file (random images, smooth actions) in the real robomimic layout: Lift and PickColor."""
    return write_synthetic_demos(str(tmp_path_factory.mktemp("data") / "demos.hdf5"), n=8, T=12,
                                 label=lambda i: ("Lift", "lift the cube") if i % 2 else
                                 ("PickColor", "pick up the red cube"))


SMALL = {"preset": "tiny", "num_layers": 1, "image_size": 32, "vision_channels": (8, 16, 32)}


def _cfg(dataset, out, **kw):
    """A toy run; `kw` in the nested layout or the legacy flat names (TrainConfig.build reads both)."""
    base = dict(
        model=SMALL,
        data=DataConfig(paths=(dataset,), augment_shift=2),
        out_dir=str(out),
        steps=4,
        batch_size=4,
        optim={"warmup_steps": 2},
        log_every=1,
        val_every=2,
        val_batches=1,
        save_every=0,
        seed=7,
        threads=1,
    )
    base.update(kw)
    return TrainConfig.build(**base)


def test_resume_is_exact(dataset, tmp_path):
    straight = _cfg(dataset, tmp_path / "straight")
    train(straight, progress=False)
    paused = _cfg(dataset, tmp_path / "paused")
    train(paused, progress=False, stop_after=2)
    assert not os.path.exists(tmp_path / "paused" / "policy")
    assert open(tmp_path / "paused" / "checkpoints" / "LATEST").read() == "step_000002"
    train(paused, resume=True, progress=False)
    a = load_file(str(tmp_path / "straight" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "paused" / "policy" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    # the final checkpoint equals the policy; the step-2 one differs (training moved the weights)
    c4 = load_file(str(tmp_path / "paused" / "checkpoints" / "step_000004" / "model.safetensors"))
    torch.testing.assert_close(c4["head.weight"], b["head.weight"], atol=0, rtol=0)
    c2 = load_file(str(tmp_path / "paused" / "checkpoints" / "step_000002" / "model.safetensors"))
    assert not torch.equal(c2["head.weight"], b["head.weight"])
    rows = open(tmp_path / "paused" / "metrics.csv").read().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("step")  # header + steps 1..4, no duplicates after resume
    assert os.path.exists(tmp_path / "straight" / "loss.png")
    state = json.load(open(tmp_path / "paused" / "checkpoints" / "step_000004" / "train_state.json"))
    assert state["step"] == 4


def test_checkpoint_is_a_policy_and_no_pickle(dataset, tmp_path):
    train(_cfg(dataset, tmp_path / "r", steps=2, save_every=1, keep_last=1), progress=False)
    ckpts = sorted(os.listdir(tmp_path / "r" / "checkpoints"))
    assert ckpts == ["LATEST", "step_000002"]  # keep_last=1 pruned step 1
    p = Policy.from_pretrained(str(tmp_path / "r" / "checkpoints" / "step_000002"))
    obs = {"images": {c: np.zeros((32, 32, 3), np.uint8) for c in ("agentview", "wrist")},
           "state": np.zeros(9, np.float32), "instruction": "lift the cube"}
    assert p.predict_action_chunk(obs).shape == (8, 7)
    for root, _, files in os.walk(tmp_path / "r"):
        for f in files:
            assert not f.endswith((".pt", ".pth", ".pkl", ".bin")), f


def test_torchrun_two_processes(dataset, tmp_path):
    out = tmp_path / "ddp"
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(
        "model: tiny\n"
        "model_overrides: {num_layers: 1, image_size: 32, vision_channels: [8, 16, 32]}\n"
        f"data: {{paths: [{dataset}], augment_shift: 2}}\n"
        f"out_dir: {out}\n"
        "steps: 3\nbatch_size: 2\nwarmup_steps: 1\nlog_every: 1\nval_every: 0\nsave_every: 0\nthreads: 1\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "vla.cli", "train", "--config", str(cfg_path), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "world size 2" in r.stdout
    state = json.load(open(out / "checkpoints" / "step_000003" / "train_state.json"))
    assert state["world"] == 2
    assert sorted(f for f in os.listdir(out / "checkpoints" / "step_000003") if f.startswith("rng_rank")) == [
        "rng_rank0.safetensors", "rng_rank1.safetensors"]
    Policy.from_pretrained(str(out / "policy"))


def test_n_action_steps_is_saved_with_the_policy(dataset, tmp_path):
    """The replan interval a recipe was evaluated with travels with its policy (vla eval's default)."""
    train(_cfg(dataset, tmp_path / "r", steps=1, n_action_steps=4), progress=False)
    p = Policy.from_pretrained(str(tmp_path / "r" / "policy"))
    assert p.n_action_steps == 4 and json.load(open(tmp_path / "r" / "policy" / "config.json"))["n_action_steps"] == 4
    obs = {"images": {c: np.zeros((32, 32, 3), np.uint8) for c in ("agentview", "wrist")},
           "state": np.zeros(9, np.float32), "instruction": "lift the cube"}
    chunks = []
    orig = p.predict_action_chunk
    p.predict_action_chunk = lambda o: chunks.append(1) or orig(o)
    for _ in range(8):
        p.select_action(obs)
    assert len(chunks) == 2  # a new chunk every 4 actions
    with pytest.raises(ValueError, match="n_action_steps"):
        _cfg(dataset, tmp_path, n_action_steps=0)
    with pytest.raises(ValueError, match="n_action_steps: expected 1..8"):
        train(_cfg(dataset, tmp_path / "too_long", steps=1, n_action_steps=9), progress=False)
    assert not os.path.exists(tmp_path / "too_long" / "checkpoints")  # refused before any training
    with pytest.raises(ValueError, match="n_action_steps: expected 1..8"):
        Policy.from_pretrained(str(tmp_path / "r" / "policy"), n_action_steps=9)


def test_train_config_errors(dataset, tmp_path):
    with pytest.raises(ValueError, match="objective"):
        _cfg(dataset, tmp_path, objective="difusion")
    from vla.config import load_train_config

    with pytest.raises(ValueError) as e:
        load_train_config("lift_tiyn")
    assert "lift_tiny" in str(e.value)


def test_every_shipped_training_config_loads():
    """Each configs/train/*.yaml parses (with the recipes it extends), and its model preset with its fields builds a
    valid ModelConfig (a typo in a field or a value fails here, not an hour into someone's run); the training config
    saved in every shipped checkpoint (the flat layout of earlier versions) loads too."""
    import glob

    from vla.config import (ModelConfig, list_presets, load_model_config, load_train_config, preset_model_config,
                            train_config_from_dict)

    names = list_presets("train")
    assert "multitask_tiny" in names and "distill_tiny" in names and "base" in names
    for name in names:
        # `vla distill [--few-step]` fills in the teacher from its command line
        needs_teacher = name.startswith(("distill", "fewstep"))
        cfg = load_train_config(name, {"distill": {"teacher": "runs/teacher"}} if needs_teacher else None)
        assert isinstance(preset_model_config(cfg.model), ModelConfig), name
    with pytest.raises(ValueError, match="text_pool"):
        load_model_config("tiny", {"text_pool": "sum"})
    shipped = sorted(glob.glob(os.path.join(ROOT, "vla", "pretrained", "*", "config.json")))
    assert shipped
    for path in shipped:
        saved = json.load(open(path))["train"]
        cfg = train_config_from_dict(saved)
        if "optim" in saved:  # the nested layout
            assert cfg.optim.lr == saved["optim"]["lr"] and cfg.model == saved["model"], path
        else:  # the flat layout of earlier versions
            assert cfg.optim.lr == saved["lr"], path
            assert cfg.model == {"preset": saved["model"], **saved["model_overrides"]}, path
        assert cfg.steps == saved["steps"], path
        assert isinstance(preset_model_config(cfg.model), ModelConfig), path


def test_vla_distill_makes_a_block_causal_student_that_sees_the_teachers_images(dataset, tmp_path):
    """`vla distill`: student starts from the teacher's weights, block-causal, same data, task mix and image
    augmentation."""
    from vla.cli import main

    teacher = tmp_path / "teacher"
    train(_cfg(dataset, teacher, steps=2, data=DataConfig(paths=(dataset,), augment_shift=0, augment_color=0.25,
                                                          task_sampling="weighted",
                                                          task_weights={"Lift": 2.0, "PickColor": 1.0}),
               n_action_steps=4),
          progress=False)
    out = tmp_path / "student"
    rc = main(["distill", "--teacher", str(teacher / "policy"), "--out", str(out), "--steps", "2", "--no-progress",
               "--set", "batch_size=2", "--set", "val_every=0", "--set", "save_every=0", "--set", "threads=1"])
    assert rc == 0
    cfg = json.load(open(out / "policy" / "config.json"))
    assert cfg["model"]["attention"] == "block_causal"
    assert cfg["decode"]["decoder"] == "pipelined"
    assert cfg["train"]["data"]["augment_shift"] == 0  # the distill config's default (4) gave way to the teacher's
    assert cfg["train"]["data"]["paths"] == [dataset]
    assert cfg["train"]["data"]["augment_color"] == 0.25
    assert (cfg["train"]["data"]["task_sampling"], cfg["train"]["data"]["task_weights"]) == (
        "weighted", {"Lift": 2.0, "PickColor": 1.0})
    assert cfg["train"]["steps"] == 2
    assert cfg["n_action_steps"] == 4  # served as the teacher was (its actions executed per chunk)
    Policy.from_pretrained(str(out / "policy")).predict_action_chunk(
        {"images": {c: np.zeros((32, 32, 3), np.uint8) for c in ("agentview", "wrist")},
         "state": np.zeros(9, np.float32), "instruction": "lift the cube"})
    # a bidirectional teacher is required
    assert main(["distill", "--teacher", str(out / "policy"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_attention_aux_head_and_colour_swaps_train_resume_exactly_and_stay_out_of_the_policy(dataset, tmp_path):
    from vla.objectives import AttnPoolAuxHead

    with pytest.raises(ValueError, match="aux.layer"):  # the test model has one layer; the default layer is 2
        train(_cfg(dataset, tmp_path / "bad", aux={"kind": "spatial"}), progress=False)
    kw = dict(aux={"kind": "spatial", "head": "attn", "layer": 1},
              data=DataConfig(paths=(dataset,), augment_shift=2, augment_color=0.5))
    train(_cfg(dataset, tmp_path / "straight", **kw), progress=False)
    train(_cfg(dataset, tmp_path / "paused", **kw), progress=False, stop_after=2)
    train(_cfg(dataset, tmp_path / "paused", **kw), resume=True, progress=False)
    a = load_file(str(tmp_path / "straight" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "paused" / "policy" / "model.safetensors"))
    for k in a:  # the colour swaps draw from the saved generator: the resumed run sees the same batches
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    head = load_file(str(tmp_path / "straight" / "checkpoints" / "step_000004" / "aux_head.safetensors"))
    assert head["query"].shape == (3, 64)  # one query per object
    assert not any("aux" in k or "query" in k for k in a)  # the served policy carries no auxiliary head
    rows = open(tmp_path / "straight" / "metrics.csv").read().strip().splitlines()
    assert "aux" in rows[0].split(",") and rows[-1].split(",")[rows[0].split(",").index("aux")] != ""
    with pytest.raises(ValueError, match="aux.head"):
        _cfg(dataset, tmp_path / "x", aux={"kind": "spatial", "head": "conv"})
    with pytest.raises(ValueError, match="divisible by 3"):
        AttnPoolAuxHead(4, 8, out=4)


def test_target_head_learns_from_its_own_loss_only_and_ships_with_the_policy(dataset, tmp_path):
    """model.vision_target: the head is trained by the `target` loss only (its token is detached: with weight 0 it
    never moves), the metric is logged, and the policy keeps the head (inference needs it)."""
    model = {**SMALL, "vision_film": True, "vision_target": True}
    k = "target_head.stem.film.weight"
    for w in (0.0, 1.0):
        out = tmp_path / f"w{w}"
        train(_cfg(dataset, out, steps=2, save_every=1, keep_last=2, model=model, target_weight=w), progress=False)
        s1 = load_file(str(out / "checkpoints" / "step_000001" / "model.safetensors"))
        s2 = load_file(str(out / "checkpoints" / "step_000002" / "model.safetensors"))
        assert not torch.equal(s1["head.weight"], s2["head.weight"])  # the policy trained in both runs
        assert torch.equal(s1[k], s2[k]) == (w == 0.0)  # the head moves only under its own loss
    rows = open(tmp_path / "w1.0" / "metrics.csv").read().strip().splitlines()
    assert float(rows[-1].split(",")[rows[0].split(",").index("target")]) > 0
    p = Policy.from_pretrained(str(tmp_path / "w1.0" / "policy"))
    obs = {"images": {c: np.zeros((32, 32, 3), np.uint8) for c in ("agentview", "wrist")},
           "state": np.zeros(9, np.float32), "instruction": "pick up the red cube"}
    assert p.predict_action_chunk(obs).shape == (8, 7)


def test_orthogonal_penalty_in_training_keeps_the_update_off_the_capability_vector(dataset, tmp_path):
    """The CapVector path end to end at toy scale: theta_pt, an auxiliary and a plain finetune, gamma, theta_meta,
    then SFT from theta_meta with and without the penalty (closed-form gradient), and with LoRA (autograd)."""
    from vla.capvector import OrthogonalPenalty, extract, merge

    pt = train(_cfg(dataset, tmp_path / "pt"), progress=False)
    ao = train(_cfg(dataset, tmp_path / "ao", init=pt, aux={"kind": "spatial", "layer": 1}), progress=False)
    ft = train(_cfg(dataset, tmp_path / "ft", init=pt), progress=False)
    vec = str(tmp_path / "gamma.safetensors")
    gamma, _ = extract(ao, ft, out=vec)
    meta = str(tmp_path / "meta")
    merge(pt, [vec], [1.0], meta)

    def cos2(run: str) -> float:  # sum over tensors of cos^2(gamma, theta - theta_meta)
        pen = OrthogonalPenalty(Policy.from_pretrained(meta).model, gamma)
        w = load_file(os.path.join(run, "model.safetensors"))
        return float(pen.compute({k: w[k].requires_grad_() for k in pen.names}).detach())

    kw = dict(init=meta, steps=6, val_every=0, optim={"warmup_steps": 2, "lr": 1e-3})
    plain = train(_cfg(dataset, tmp_path / "plain", **kw), progress=False)
    orth = train(_cfg(dataset, tmp_path / "orth", orth={"capvector": vec, "weight": 100.0}, **kw), progress=False)
    assert cos2(orth) < 0.25 * cos2(plain), (cos2(orth), cos2(plain))
    rows = open(tmp_path / "orth" / "metrics.csv").read().strip().splitlines()
    col = rows[0].split(",").index("orth")
    assert float(rows[-1].split(",")[col]) >= 0.0 and float(rows[1].split(",")[col]) == 0.0  # step 1 starts at meta
    lora = tmp_path / "lora"
    train(_cfg(dataset, lora, orth={"capvector": vec, "weight": 1.0}, lora={"rank": 2}, **kw), progress=False)
    rows = open(lora / "metrics.csv").read().strip().splitlines()
    assert float(rows[-1].split(",")[rows[0].split(",").index("orth")]) > 0.0  # the A-matrix penalty, via autograd


@pytest.mark.parametrize("attention,objective,aux", [("bidirectional", "diffusion", "eef_future"),
                                                     ("block_causal", "diffusion", "spatial"),
                                                     ("bidirectional", "distill", None)])
def test_a_training_step_keeps_every_tensor_on_the_model_device(attention, objective, aux):
    """On a GPU every tensor of a training step must live on the model's device. There is no GPU here or in CI:
    the 'meta' device stands in for it, computing no values but raising on any CPU tensor mixed in, as CUDA does.
    The noise masks come from the trainer's CPU generator (the same masks on any device) and must follow the
    tokens to their device."""
    from vla.config import load_model_config
    from vla.model import DVLA
    from vla.objectives import aux_loss, make_aux_head, noise

    cfg = load_model_config("tiny", {"attention": attention})
    dev = torch.device("meta")
    model = DVLA(cfg, 64).to(dev)
    B, A = 2, cfg.n_action_tokens
    images = torch.zeros(B, len(cfg.cameras), 3, cfg.image_size, cfg.image_size, device=dev)
    text_ids = torch.zeros(B, cfg.max_text_len, dtype=torch.long, device=dev)
    text_valid = torch.ones(B, cfg.max_text_len, dtype=torch.bool, device=dev)
    state = torch.zeros(B, cfg.state_dim, device=dev)
    target = torch.zeros(B, A, dtype=torch.long, device=dev)
    tcfg = TrainConfig(objective=objective, distill=DistillConfig(teacher="unused" if objective == "distill" else None))
    noised, masked = noise(target, cfg, tcfg, torch.Generator().manual_seed(0))
    assert noised.device == dev and masked.device == dev and masked.shape == (B, A)
    logits, out = model(images, text_ids, text_valid, state, noised, capture_layer=1 if aux else None)
    vis = out.vision_hidden
    # masked_ce / masked_kl select the masked positions (a data-dependent shape, which 'meta' cannot compute; it
    # runs on any device): here the logits' mean stands in for them, so the backward pass still covers the model
    loss = logits.float().mean()
    if aux == "spatial":
        head = make_aux_head("attn", cfg.n_vision_tokens, cfg.hidden_size, 9).to(dev)
        batch = {"object_pos": torch.zeros(B, 9, device=dev), "object_valid": torch.ones(B, 9, device=dev)}
        loss = loss + aux_loss(head, vis, batch, "spatial")
    elif aux == "eef_future":
        head = make_aux_head("mlp", cfg.n_vision_tokens, cfg.hidden_size, 3).to(dev)
        stats = {"mean": [0.0] * 9, "std": [1.0] * 9}
        loss = loss + aux_loss(head, vis, {"eef_future": torch.zeros(B, 3, device=dev)}, "eef_future", stats)
    assert loss.device == dev and loss.shape == ()
    loss.backward()
    assert all(p.grad is None or p.grad.device == dev for p in model.parameters())
