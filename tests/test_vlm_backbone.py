"""Vision-language backbones from a local Hugging Face directory (vla/vlm.py), through transformers' own classes.

Each test builds a tiny random instance of the class from a config (2 decoder layers of 64, a 1-layer 32-wide SigLIP
tower, 32 px images) and saves it like a downloaded model (config.json, model.safetensors, tokenizer, image
processor config); no hub is reachable here, so the weights are random, the code path is the real one: the VLM's
vision tower and connector make the image tokens, our instruction / state / action tokens follow in its language
model, the discrete-diffusion head decodes, under our block-causal mask with the prefix KV cache.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from demo_helpers import write_synthetic_demos
import pytest
import torch
from safetensors.torch import load_file

from robot_bridge.client import PolicyClient
from robot_bridge.serving.server import PolicyServer
from vla.config import load_model_config, load_train_config
from vla.model import DVLA, config_from_hf
from vla.policy import Policy
from vla.train import Trainer
from vla.vlm import save_random_vlm, tokens_per_image

KINDS = ["smolvlm", "idefics3", "paligemma"]
WORDS = ("pick", "up", "the", "red", "cube", "lift")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four short demos (random 32 px images, smooth actions) in the robomimic layout the trainer reads."""
    return write_synthetic_demos(str(tmp_path_factory.mktemp("data") / "demos.hdf5"), n=4, T=10,
                                 label=lambda i: ("Lift", "lift the cube" if i % 2 else "pick up the red cube"))


def _train_cfg(dataset, hf, out, **model):
    # the same merge `vla train --config lift_tiny --set model.backbone_path=<dir> ...` does
    over = {"model": {"backbone_path": hf, "image_size": 32, **model}, "data": {"paths": [dataset]},
            "out_dir": str(out), "steps": 3, "batch_size": 2, "warmup_steps": 1, "log_every": 1, "val_every": 0,
            "save_every": 0, "threads": 1, "seed": 3}
    return load_train_config("lift_tiny", over)


def _inputs(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(B, len(cfg.cameras), 3, cfg.image_size, cfg.image_size, generator=g)
    txt = torch.tensor([[2, 3, 4, 5, 6, 7], [2, 8, 5, 7, 0, 0]])[:B]
    tv = txt != 0
    st = torch.randn(B, cfg.state_dim, generator=g)
    toks = torch.randint(0, cfg.num_bins, (B, cfg.n_action_tokens), generator=g)
    toks[torch.rand(toks.shape, generator=g) < 0.5] = cfg.mask_id
    return imgs, txt, tv, st, toks


def _obs(seed: int, instruction: str = "pick up the red cube") -> dict:
    rng = np.random.default_rng(seed)
    return {"images": {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in ("agentview", "wrist")},
            "state": rng.normal(size=9).astype(np.float32), "instruction": instruction}


@pytest.mark.parametrize("kind", KINDS)
def test_vlm_backbone_trains_reloads_exactly_and_serves_a_chunk(dataset, tmp_path, kind):
    hf = save_random_vlm(str(tmp_path / kind), kind, words=WORDS)
    tower_before = {k: v for k, v in load_file(os.path.join(hf, "model.safetensors")).items()
                    if "vision_model" in k or "vision_tower" in k}
    tr = Trainer(_train_cfg(dataset, hf, tmp_path / "run"), progress=False)
    m = tr.model
    assert m.cfg.backbone == kind and m.vlm_vision is not None and len(m.vision) == 0
    assert m.cfg.vision_tokens_per_image == tokens_per_image(m.vlm_config) > 0
    assert m.cfg.n_vision_tokens == 2 * m.cfg.vision_tokens_per_image
    assert type(tr.text_tok).__name__ == "HFTokenizer"  # the VLM's own tokenizer reads the instruction
    final = tr.train()
    # the vision tower stayed frozen (default), the connector and the language model trained
    tower = dict(m.vlm_vision.tower.named_parameters())
    assert len(tower) > 0 and not any(p.requires_grad for p in tower.values())
    assert len(tower_before) == len(tower)
    for n, p in tower.items():  # the saved model's key for a tower parameter ends with the parameter's own name
        (key,) = [k for k in tower_before if k.endswith("." + n)]
        torch.testing.assert_close(p.detach(), tower_before[key], rtol=0, atol=0)
    assert all(p.requires_grad for p in m.vlm_vision.connector.parameters())
    assert all(p.requires_grad for p in m.backbone.parameters())
    m.eval()
    x = _inputs(m.cfg)
    with torch.no_grad():
        before, _ = m(*x)
    shutil.rmtree(hf)  # the "downloaded model" is gone: config, processor and weights come from the checkpoint
    q = Policy.from_pretrained(final)
    assert q.model.vlm_config.model_type == kind
    assert os.path.isfile(os.path.join(final, "processor", "preprocessor_config.json"))
    assert "preprocessor_config.json" in q.model.processor_files
    with torch.no_grad():
        after, _ = q.model.eval()(*x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # served through the real server and client over loopback: the same chunk as in-process decoding
    obs = _obs(1)
    want = q.infer(obs)["actions"]
    srv = PolicyServer(q, bind="tcp://127.0.0.1:0").start()
    try:
        with PolicyClient(srv.address, timeout_ms=30_000, retries=0) as cl:
            got = cl.infer(obs)
    finally:
        srv.stop()
    assert got["actions"].shape == (8, 7) and np.all(np.isfinite(got["actions"]))
    np.testing.assert_array_equal(got["actions"], want)


@pytest.mark.parametrize("kind", ["smolvlm", "paligemma"])
def test_block_causal_mask_and_prefix_cache_on_a_vlm(tmp_path, kind):
    """Fast-dVLA on a VLM: prefix KV computed once and reused, blocks committed one pass at a time, every pass equal
    to the full block-causal forward; a later block never changes an earlier block's logits."""
    hf = save_random_vlm(str(tmp_path / kind), kind, words=WORDS)
    cfg = config_from_hf(load_model_config("tiny_block", {"backbone_path": hf, "image_size": 32}), hf)
    torch.manual_seed(0)
    m = DVLA(cfg, 9).eval()
    imgs, txt, tv, st, toks = _inputs(cfg)
    bs, A = cfg.block_size, cfg.n_action_tokens
    with torch.no_grad():
        full, _ = m(imgs, txt, tv, st, toks)
        changed = toks.clone()
        changed[:, bs:] = cfg.mask_id - 1 - changed[:, bs:].clamp(max=cfg.mask_id - 1)  # every later token differs
        other, _ = m(imgs, txt, tv, st, changed)
        torch.testing.assert_close(other[:, :bs], full[:, :bs], atol=1e-5, rtol=0)
        assert (other[:, bs:] - full[:, bs:]).abs().max() > 1e-3
        for fast in (True, False):  # vla.fast_layers' lean path and transformers' own modules
            m.fast_inference = fast
            cache = m.encode_prefix(imgs, txt, tv, st)
            assert cache.prefix_len == cfg.n_vision_tokens + txt.shape[1] + 1
            for j in range(A // bs):
                s = torch.arange(j * bs, (j + 1) * bs)
                inc = m.action_logits(cache, toks[:, s], s, commit=bs, span=(j * bs, (j + 1) * bs))
                torch.testing.assert_close(inc, full[:, s], atol=1e-4, rtol=0)
        # and the pipelined decoder runs on it end to end
        from vla.config import DecodeConfig
        from vla.decoding import decode

        tokens, stats = decode(m, m.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder="pipelined"),
                               torch.Generator().manual_seed(0))
        assert tokens.shape == (2, A) and int(tokens.max()) < cfg.num_bins and stats["nfe"] >= 1


@pytest.mark.parametrize("mode", ["lora", "frozen"])
def test_lora_or_frozen_language_model_and_exact_reload(dataset, tmp_path, mode):
    hf = save_random_vlm(str(tmp_path / "smolvlm"), "smolvlm", words=WORDS)
    tr = Trainer(_train_cfg(dataset, hf, tmp_path / "run", backbone_finetune=mode, backbone_lora_rank=4,
                            vision_frozen=True), progress=False)
    m = tr.model
    start = {k: v.clone() for k, v in m.state_dict().items()}
    final = tr.train()
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    lm = {f"backbone.{n}" for n, _ in m.backbone.named_parameters()}
    if mode == "lora":
        assert trained & lm and all("lora_" in n for n in trained & lm)
        assert any("lora_b" in n and not torch.equal(m.state_dict()[n], start[n]) for n in trained & lm)
    else:
        assert not trained & lm
    for n in lm - trained:  # frozen language-model weights did not move
        torch.testing.assert_close(m.state_dict()[n], start[n], rtol=0, atol=0)
    assert any(not torch.equal(m.state_dict()[n], start[n]) for n in trained if n.startswith("head."))
    m.eval()
    x = _inputs(m.cfg)
    with torch.no_grad():
        before, _ = m(*x)
    q = Policy.from_pretrained(final)
    with torch.no_grad():
        after, _ = q.model.eval()(*x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_vla_train_cli_on_a_downloaded_smolvlm_directory(dataset, tmp_path):
    """The user's command: `vla train --config lift_tiny --data ... --set model.backbone_path=<dir>`; backbone_layers
    keeps the first layers only (SmolVLA keeps 16 of 32); a directory that is not a VLM is a clear error."""
    from vla.cli import main

    hf = save_random_vlm(str(tmp_path / "SmolVLM2-tiny"), "smolvlm", words=WORDS)
    out = tmp_path / "run"
    rc = main(["train", "--config", "lift_tiny", "--data", dataset, "--out", str(out), "--steps", "2", "--threads", "1",
               "--no-progress", "--set", f"model.backbone_path={hf}", "--set", "model.image_size=32",
               "--set", "model.backbone_layers=1", "--set", "batch_size=2", "--set", "val_every=0",
               "--set", "save_every=0", "--set", "warmup_steps=1"])
    assert rc == 0
    p = Policy.from_pretrained(str(out))
    assert p.cfg.backbone == "smolvlm" and len(p.model.backbone.layers) == 1 == p.cfg.num_layers
    assert p.predict_action_chunk(_obs(2)).shape == (8, 7)
    # finetuning it further (`vla train --init`): the backbone is rebuilt from the checkpoint's VLM config
    rc = main(["train", "--config", "lift_tiny", "--data", dataset, "--out", str(tmp_path / "ft"), "--init", str(out),
               "--steps", "1", "--threads", "1", "--no-progress", "--set", "batch_size=2", "--set", "val_every=0",
               "--set", "save_every=0", "--set", "warmup_steps=1"])
    assert rc == 0
    ft = Policy.from_pretrained(str(tmp_path / "ft"))
    assert ft.cfg.backbone == "smolvlm" and ft.model.vlm_config.text_config.num_hidden_layers == 1
    tower = {k: v for k, v in ft.model.state_dict().items() if k.startswith("vlm_vision.tower.")}
    assert tower and all(torch.equal(v, p.model.state_dict()[k]) for k, v in tower.items())  # frozen, carried over
    bad = tmp_path / "not_a_vlm"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match=r"backbone_path: .* holds a 'bert' model"):
        config_from_hf(load_model_config("tiny"), str(bad))


def test_backbone_layers_keeps_the_first_decoder_layers_and_reloads(tmp_path):
    """model.backbone_layers on a local Llama directory: its first n layers (the weights of those layers), saved and
    rebuilt with n layers."""
    from test_hf_backbone import _hf_dir, _inputs as _llama_inputs
    from vla.normalization import StateNormalizer
    from vla.tokenizers import ActionTokenizer, HFTokenizer

    hf = _hf_dir(tmp_path, "llama")
    full = DVLA(config_from_hf(load_model_config("tiny", {"backbone_path": hf, "text_tokenizer": "hf"}), hf), 11)
    mcfg = config_from_hf(load_model_config("tiny", {"backbone_path": hf, "text_tokenizer": "hf",
                                                      "backbone_layers": 1}), hf)
    assert mcfg.num_layers == 1
    m = DVLA(mcfg, 11).eval()
    assert len(m.backbone.layers) == 1 == m.backbone.config.num_hidden_layers
    first = full.backbone.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(m.backbone.layers[0].self_attn.q_proj.weight, first, rtol=0, atol=0)
    tok = HFTokenizer(hf)
    p = Policy(m, ActionTokenizer(-np.ones(7), np.ones(7)), StateNormalizer(-np.ones(9), np.ones(9)), tok)
    out = str(tmp_path / "policy")
    p.save_pretrained(out)
    q = Policy.from_pretrained(out)
    assert len(q.model.backbone.layers) == 1
    with torch.no_grad():
        after, before = q.model.eval()(*_llama_inputs(q.model))[0], m(*_llama_inputs(m))[0]
    torch.testing.assert_close(after, before, rtol=0, atol=0)
