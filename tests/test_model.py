"""The dVLA model and the Policy API on tiny real configs."""

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from vla.config import load_model_config
from vla.model import DVLA
from vla.policy import CheckpointError, Policy


def _inputs(cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = cfg.image_size
    imgs = torch.rand(B, len(cfg.cameras), 3, S, S, generator=g)
    txt = torch.randint(3, 40, (B, cfg.max_text_len), generator=g)
    tv = torch.ones(B, cfg.max_text_len, dtype=torch.bool)
    tv[0, 5:] = False
    st = torch.randn(B, cfg.state_dim, generator=g)
    toks = torch.randint(0, cfg.num_bins, (B, cfg.n_action_tokens), generator=g)
    toks[torch.rand(toks.shape, generator=g) < 0.5] = cfg.mask_id
    return imgs, txt, tv, st, toks


@pytest.mark.parametrize("preset", ["tiny", "tiny_block"])
def test_prefix_kv_reuse_matches_full_forward(preset):
    cfg = load_model_config(preset)
    torch.manual_seed(0)
    m = DVLA(cfg, 50).eval()
    imgs, txt, tv, st, toks = _inputs(cfg)
    with torch.no_grad():
        full, _ = m(imgs, txt, tv, st, toks)
        cache = m.encode_prefix(imgs, txt, tv, st)
        slots = torch.arange(cfg.n_action_tokens)
        for _ in range(3):  # the cache is reused unchanged across denoising passes
            inc = m.action_logits(cache, toks, slots)
            torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)
        assert cache.length == cfg.prefix_len


def test_vision_film_conditions_pixels_on_the_instruction():
    """vision_film: the stems' features depend on the instruction's valid tokens only; cache == full forward."""
    cfg = replace(load_model_config("tiny"), vision_film=True)
    torch.manual_seed(0)
    m = DVLA(cfg, 50).eval()
    imgs, txt, tv, st, toks = _inputs(cfg)
    n_vis = cfg.n_vision_tokens
    with torch.no_grad():
        base = m.embed_prefix(imgs, txt, st, tv).tokens[:, :n_vis]
        txt2 = txt.clone()
        txt2[:, 1] = (txt[:, 1] + 1 - 3) % 37 + 3  # another word in every row
        assert torch.equal(m.embed_prefix(imgs, txt2, st, tv).tokens[:, :n_vis], base)  # zero-init FiLM: the plain stem
        for stem in m.vision:
            torch.nn.init.normal_(stem.film.weight, std=0.05)
        base = m.embed_prefix(imgs, txt, st, tv).tokens[:, :n_vis]
        other = m.embed_prefix(imgs, txt2, st, tv).tokens[:, :n_vis]
        assert (other - base).abs().amax(dim=(1, 2)).min() > 1e-3  # the words reach the pixels
        pad = txt.clone()
        pad[0, 5:] = 7  # row 0's padding (tv[0, 5:] is False) must not matter
        torch.testing.assert_close(m.embed_prefix(imgs, pad, st, tv).tokens[:1, :n_vis], base[:1], atol=1e-6, rtol=0)
        full, _ = m(imgs, txt, tv, st, toks)
        inc = m.action_logits(m.encode_prefix(imgs, txt, tv, st), toks, torch.arange(cfg.n_action_tokens))
        torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_vision_target_token():
    """vision_target: one more prefix token carrying the predicted named-object position; the action loss does not
    train the target head (its input to the backbone is detached), its own loss does; cache == full forward."""
    cfg = replace(load_model_config("tiny"), vision_film=True, vision_target=True)
    base_cfg = load_model_config("tiny")
    assert cfg.n_vision_tokens == base_cfg.n_vision_tokens + 1 and cfg.prefix_len == base_cfg.prefix_len + 1
    torch.manual_seed(0)
    m = DVLA(cfg, 50)
    imgs, txt, tv, st, toks = _inputs(cfg)
    logits, out = m(imgs, txt, tv, st, toks)
    assert out.target.shape == (3, 2) and out.vision_hidden is None  # returned, not kept on the module
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is None for p in m.target_head.parameters())  # no action gradient into the head
    assert m.target_embed[0].weight.grad.abs().sum() > 0  # ...but the token is used
    m.zero_grad()
    m(imgs, txt, tv, st, toks)[1].target.pow(2).sum().backward()
    assert m.target_head.mlp[-1].weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        p1, t1 = m.embed_prefix(imgs, txt, st, tv)
        p2, t2 = m.embed_prefix(imgs.flip(-1), txt, st, tv)  # another picture: another position, another token
        assert (t2 - t1).abs().max() > 1e-4
        n = cfg.n_vision_tokens
        assert (p2[:, n - 1] - p1[:, n - 1]).abs().max() > 1e-4
        full, _ = m(imgs, txt, tv, st, toks)
        inc = m.action_logits(m.encode_prefix(imgs, txt, tv, st), toks, torch.arange(cfg.n_action_tokens))
        torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_prefix_does_not_depend_on_actions():
    cfg = load_model_config("tiny")
    m = DVLA(cfg, 50).eval()
    imgs, txt, tv, st, toks = _inputs(cfg)
    with torch.no_grad():
        a = m.encode_prefix(imgs, txt, tv, st)
        toks2 = torch.randint(0, cfg.num_bins, toks.shape)
        l1 = m.action_logits(a, toks, torch.arange(cfg.n_action_tokens))
        f1, _ = m(imgs, txt, tv, st, toks)
        f2, _ = m(imgs, txt, tv, st, toks2)
    torch.testing.assert_close(l1, f1, atol=1e-5, rtol=0)
    assert not torch.allclose(f1, f2)  # actions do matter to action logits...


def test_tiny_model_overfits_fixed_batch():
    cfg = load_model_config("tiny", {"num_layers": 2})
    torch.manual_seed(0)
    m = DVLA(cfg, 50)
    imgs, txt, tv, st, _ = _inputs(cfg, B=4)
    target = torch.randint(0, cfg.num_bins, (4, cfg.n_action_tokens))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    from vla.objectives import masked_ce

    masked = torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) < 0.6
    noised = target.masked_fill(masked, cfg.mask_id)
    first = None
    for _ in range(120):
        logits, _ = m(imgs, txt, tv, st, noised)
        loss = masked_ce(logits, target, masked)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0 and float(loss.detach()) < 0.1


def _obs(S=64, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": {c: rng.integers(0, 256, (S, S, 3), dtype=np.uint8) for c in ("agentview", "wrist")},
        "state": rng.normal(size=9).astype(np.float32) * 0.1,
        "instruction": "pick up the red cube",
    }


@pytest.mark.parametrize("preset,decoder", [("tiny", "parallel"), ("tiny_block", "pipelined")])
def test_save_load_identical(tmp_path, preset, decoder):
    p = Policy.untrained(preset, seed=3)
    p.set_decode(decoder=decoder)
    p.save_pretrained(str(tmp_path / "ckpt"))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["backbone_config.json", "config.json", "model.safetensors",
                                                  "normalization.json", "tokenizer.json"]
    q = Policy.from_pretrained(str(tmp_path / "ckpt"))
    assert q.decode_cfg == p.decode_cfg and q.cfg == p.cfg
    for s in range(3):
        p.reset(), q.reset()
        a, b = p.predict_action_chunk(_obs(seed=s)), q.predict_action_chunk(_obs(seed=s))
        assert a.shape == (8, 7) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_half_precision_checkpoint(tmp_path):
    """A float16 checkpoint is half the size and loads back into a float32 model with every weight rounded."""
    from safetensors.torch import load_file

    p = Policy.untrained("tiny", seed=4)
    p.save_pretrained(str(tmp_path / "f32"))
    p.save_pretrained(str(tmp_path / "f16"), dtype="float16")
    s32, s16 = (os.path.getsize(tmp_path / d / "model.safetensors") for d in ("f32", "f16"))
    assert s16 < 0.55 * s32
    assert all(v.dtype == torch.float16 for v in load_file(str(tmp_path / "f16" / "model.safetensors")).values())
    q = Policy.from_pretrained(str(tmp_path / "f16"))
    for k, v in p.model.state_dict().items():
        w = q.model.state_dict()[k]
        assert w.dtype == torch.float32
        torch.testing.assert_close(w, v.half().float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="dtype"):
        p.save_pretrained(str(tmp_path / "bad"), dtype="int8")


def test_select_action_queue_and_reset():
    p = Policy.untrained("tiny")
    p.n_action_steps = 3
    o = _obs()
    chunk = p.predict_action_chunk(o)
    p.reset()
    acts = [p.select_action(o) for _ in range(3)]
    np.testing.assert_array_equal(np.stack(acts), chunk[:3])
    assert len(p._queue) == 0
    p.select_action(o)
    p.reset()
    assert len(p._queue) == 0
    info = p.infer(o)
    assert {"model_ms", "decode_ms", "prefix_ms", "total_ms", "nfe"} <= set(info["timing"])


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda o: o["images"].pop("wrist"), "wrist"),
        (lambda o: o.pop("state"), "state"),
        (lambda o: o.__setitem__("state", np.zeros(5, np.float32)), "(9,)"),
        (lambda o: o["images"].__setitem__("agentview", np.zeros((64, 64, 3), np.float32)), "agentview"),
        (lambda o: o["images"].__setitem__("agentview", np.zeros((64, 64), np.uint8)), "(H, W, 3)"),
        (lambda o: o["state"].__setitem__(2, np.nan), "NaN"),
        (lambda o: o.__setitem__("instruction", 3), "instruction"),
    ],
)
def test_bad_observations(mutate, needle):
    p = Policy.untrained("tiny")
    o = _obs()
    mutate(o)
    with pytest.raises(ValueError) as e:
        p.infer(o)
    assert needle in str(e.value)


def test_checkpoint_errors(tmp_path):
    p = Policy.untrained("tiny")
    d = str(tmp_path / "c")
    p.save_pretrained(d)
    os.remove(os.path.join(d, "normalization.json"))
    with pytest.raises(CheckpointError, match="normalization.json"):
        Policy.from_pretrained(d)
    p.save_pretrained(d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["format_version"] = 99
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(CheckpointError, match="format_version"):
        Policy.from_pretrained(d)
    with pytest.raises(FileNotFoundError):
        Policy.from_pretrained(str(tmp_path / "missing"))


def test_unknown_config_suggests_closest():
    with pytest.raises(ValueError) as e:
        load_model_config("tinny")
    assert "tiny" in str(e.value)
    with pytest.raises(ValueError) as e:
        load_model_config("tiny", {"hiden_size": 3})
    assert "hidden_size" in str(e.value)


def test_local_hf_checkpoint(tmp_path):
    """A user's local Hugging Face model dir (written here: tiny Llama + a word-level fast tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from vla.model import config_from_hf

    hf_dir = str(tmp_path / "hf")
    words = ["[PAD]", "[UNK]", "[BOS]", "pick", "up", "the", "red", "green", "blue", "cube", "lift"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]")
    fast.save_pretrained(hf_dir)
    lcfg = LlamaConfig(vocab_size=len(words), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(lcfg).save_pretrained(hf_dir)
    ref = LlamaForCausalLM.from_pretrained(hf_dir).model.layers[0].self_attn.q_proj.weight

    mcfg = config_from_hf(load_model_config("tiny", {"backbone_path": hf_dir, "text_tokenizer": "hf"}), hf_dir)
    assert mcfg.hidden_size == 64 and mcfg.num_layers == 2 and mcfg.num_kv_heads == 2
    from vla.tokenizers import HFTokenizer

    tok = HFTokenizer(hf_dir)
    m = DVLA(mcfg, tok.vocab_size)
    torch.testing.assert_close(m.backbone.layers[0].self_attn.q_proj.weight, ref)  # weights came from the dir
    ids, valid = tok.encode("pick up the red cube", 8)
    assert valid.sum() == 5 and ids[0] == words.index("pick")
    # a policy built on it saves and reloads with no reference to the original directory
    from vla.normalization import StateNormalizer
    from vla.tokenizers import ActionTokenizer

    p = Policy(m, ActionTokenizer(-np.ones(7), np.ones(7)), StateNormalizer(-np.ones(9), np.ones(9)), tok)
    out = str(tmp_path / "policy")
    p.save_pretrained(out)
    import shutil

    shutil.rmtree(hf_dir)
    q = Policy.from_pretrained(out)
    np.testing.assert_array_equal(q.predict_action_chunk(_obs()), p.predict_action_chunk(_obs()))


def test_shipped_demo_checkpoint_loads_and_says_how_it_was_made():
    """`make demo` serves vla/pretrained/lift_tiny: it must load with no other knowledge and name its recipe."""
    import json

    d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vla", "pretrained", "lift_tiny")
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert "vla train --config configs/train/lift_tiny_aux.yaml" in cfg["reproduce"]
    p = Policy.from_pretrained(d)
    assert p.cfg.attention == "bidirectional" and not any("aux" in k for k in p.model.state_dict())
    a = p.predict_action_chunk(_obs(S=p.cfg.image_size))
    assert a.shape == (p.cfg.chunk_size, 7) and np.all(np.abs(a) <= 1)


def test_shipped_fast_student_is_block_causal_and_decodes_pipelined():
    """`make demo` and the GPU card also use vla/pretrained/lift_tiny_fast, the teacher's distilled student."""
    import json

    d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vla", "pretrained", "lift_tiny_fast")
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert "vla distill --teacher vla/pretrained/lift_tiny" in cfg["reproduce"]
    p = Policy.from_pretrained(d)
    assert p.cfg.attention == "block_causal" and p.decode_cfg.decoder == "pipelined"
    r = p.infer(_obs(S=p.cfg.image_size))
    assert r["actions"].shape == (p.cfg.chunk_size, 7) and np.all(np.abs(r["actions"]) <= 1)
    assert 1 <= r["timing"]["nfe"] <= p.cfg.n_action_tokens


def test_vision_target_two_objects():
    """target_objects 2: one token per object (told apart by a slot embedding), the head predicts both rows' x, y,
    and the loss columns pick rows 0 and 1's x, y out of the flattened (x, y, z) rows."""
    from vla.objectives import target_columns

    assert target_columns(1) == [0, 1] and target_columns(2) == [0, 1, 3, 4]
    one = replace(load_model_config("tiny"), vision_target=True)
    cfg = replace(one, target_objects=2)
    assert cfg.n_vision_tokens == one.n_vision_tokens + 1
    with pytest.raises(ValueError, match="target_objects"):
        replace(one, target_objects=4)
    torch.manual_seed(0)
    m = DVLA(cfg, 50).eval()
    imgs, txt, tv, st, toks = _inputs(cfg)
    with torch.no_grad():
        p, target = m.embed_prefix(imgs, txt, st, tv)
        assert target.shape == (3, 4)
        n = cfg.n_vision_tokens
        pred = target.unflatten(1, (2, 2))
        for k in range(2):  # token n-2+k is object k's embedded x, y plus its slot
            torch.testing.assert_close(p[:, n - 2 + k], m.target_embed(pred[:, k]) + m.target_slot[k])
        full, _ = m(imgs, txt, tv, st, toks)
        inc = m.action_logits(m.encode_prefix(imgs, txt, tv, st), toks, torch.arange(cfg.n_action_tokens))
        torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_text_pool_ordered_tells_word_order_apart():
    """text_pool "mean" is a bag of words: swapping two words ("green ... red" <-> "red ... green") leaves the target
    head's prediction unchanged; "ordered" passes each word with its position through the pooling MLP, so the
    swap changes it. Padding never counts, and the prefix cache still equals a full forward."""
    base = replace(load_model_config("tiny"), vision_target=True, vision_film=True, target_objects=2)
    with pytest.raises(ValueError, match="text_pool"):
        replace(base, text_pool="max")
    imgs, txt, tv, st, toks = _inputs(base, B=1)
    swapped = txt.clone()
    swapped[0, [1, 3]] = txt[0, [3, 1]]  # two words of the valid part (_inputs: tokens 0-4 of row 0)
    assert not torch.equal(swapped, txt)
    padded = txt.clone()
    padded[0, 5:] = 0
    other_pad = padded.clone()
    other_pad[0, 5:] = 7
    for kind, order_matters in (("mean", False), ("ordered", True)):
        cfg = replace(base, text_pool=kind)
        torch.manual_seed(0)
        m = DVLA(cfg, 50).eval()
        with torch.no_grad():
            for p in m.text_pool.parameters():  # a trained-looking pooler (the last Linear starts at the default init)
                p.add_(torch.randn_like(p) * 0.1)
            a = m.embed_prefix(imgs, txt, st, tv).target
            b = m.embed_prefix(imgs, swapped, st, tv).target
            c = m.embed_prefix(imgs, padded, st, tv).target
            torch.testing.assert_close(m.embed_prefix(imgs, other_pad, st, tv).target, c)  # masked-out words: no say
            full, _ = m(imgs, swapped, tv, st, toks)
            inc = m.action_logits(m.encode_prefix(imgs, swapped, tv, st), toks, torch.arange(cfg.n_action_tokens))
            torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)
        assert (not torch.allclose(a, b, atol=1e-6)) == order_matters, kind


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend (inductor) builds its kernels with a C++ compiler")
def test_compiled_policy_decodes_the_same_chunks():
    """Policy.compile_model (torch.compile with inductor, as `vla serve --compile` runs it): the same chunks as the
    eager model, FiLM and the target head included. (A batch of another size compiles again: torch's concern, left
    out here for the minute it costs.)"""
    import numpy as np

    from vla.policy import Policy

    kw = dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=128, vision_film=True,
              vision_target=True, target_objects=2, text_pool="ordered")
    eager, compiled = Policy.untrained("tiny", seed=3, **kw), Policy.untrained("tiny", seed=3, **kw)
    for p in (eager, compiled):
        p.set_decode(steps=2)
    assert compiled.compile_model() > 0
    rng = np.random.default_rng(0)
    obs = [{**eager.example_observation(), "instruction": "pick up the red cube",
            "images": {c: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for c in eager.cfg.cameras},
            "state": rng.normal(size=eager.cfg.state_dim).astype(np.float32)} for _ in range(3)]
    for o in obs:
        np.testing.assert_allclose(compiled.infer(o)["actions"], eager.infer(o)["actions"], atol=1e-6)
