"""vla.fast_layers: the lean decode path computes what transformers' modules compute, and never goes stale."""

import pytest
import torch

from vla.config import load_model_config
from vla.lora import apply_lora
from vla.model import DVLA


def _setup(backbone="llama", preset="tiny_block", seed=0, **ov):
    cfg = load_model_config(preset, {"backbone": backbone, **ov})
    torch.manual_seed(seed)
    m = DVLA(cfg, 50).eval()
    g = torch.Generator().manual_seed(seed)
    B = 2
    imgs = torch.rand(B, len(cfg.cameras), 3, cfg.image_size, cfg.image_size, generator=g)
    txt = torch.randint(3, 40, (B, cfg.max_text_len), generator=g)
    tv = torch.ones(B, cfg.max_text_len, dtype=torch.bool)
    tv[1, -3:] = False  # padded text in one row
    st = torch.randn(B, cfg.state_dim, generator=g)
    tokens = torch.randint(0, cfg.num_bins + 1, (B, cfg.n_action_tokens), generator=g)  # some [MASK]
    return m, (imgs, txt, tv, st), tokens


def _cached_passes(m, inputs, tokens):
    """Prefix, one committed block, then the rest: what the block/pipelined decoders run."""
    bs, A = m.cfg.block_size, m.cfg.n_action_tokens
    with torch.no_grad():
        cache = m.encode_prefix(*inputs)
        s0 = torch.arange(0, 2 * bs)
        first = m.action_logits(cache, tokens[:, s0], s0, commit=bs)
        rest = torch.arange(bs, A)
        second = m.action_logits(cache, tokens[:, rest], rest)
        full, _ = m(*inputs, tokens)
    return first, second, full


def _both(m, inputs, tokens):
    m.fast_inference = False
    ref = _cached_passes(m, inputs, tokens)
    m.fast_inference = True
    fast = _cached_passes(m, inputs, tokens)
    return ref, fast


@pytest.mark.parametrize("backbone,preset", [("llama", "tiny_block"), ("qwen2", "tiny_block"), ("llama", "tiny")])
def test_fast_path_equals_transformers(backbone, preset):
    m, inputs, tokens = _setup(backbone, preset)
    ref, fast = _both(m, inputs, tokens)
    assert m.__dict__.get("_fast"), "the fast path did not run"
    for r, f in zip(ref, fast):
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)


def test_fast_path_follows_in_place_weight_updates():
    m, inputs, tokens = _setup()
    _both(m, inputs, tokens)  # builds the fused weights
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))  # what an optimizer step does between evaluations
    ref, fast = _both(m, inputs, tokens)
    for r, f in zip(ref, fast):
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)


def test_lora_wrapped_backbone_falls_back_to_transformers():
    m, inputs, tokens = _setup()
    _both(m, inputs, tokens)
    apply_lora(m, rank=2)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_b" in name:
                p.normal_()  # a non-zero LoRA update the fused weights would miss
    ref, fast = _both(m, inputs, tokens)
    assert not m.__dict__["_fast"].ok
    for r, f in zip(ref, fast):
        torch.testing.assert_close(f, r, atol=0, rtol=0)


def test_fast_path_follows_replaced_parameters():
    """A weight swapped for a new Parameter (no in-place version bump) still invalidates the fused matrices."""
    m, inputs, tokens = _setup()
    _both(m, inputs, tokens)
    proj = m.backbone.layers[0].mlp.down_proj
    proj.weight = torch.nn.Parameter(proj.weight.detach() + 0.1 * torch.randn_like(proj.weight))
    ref, fast = _both(m, inputs, tokens)
    for r, f in zip(ref, fast):
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)
