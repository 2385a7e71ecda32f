"""Decoders and the block KV cache (Fast-dVLA) on real tiny models."""

import pytest
import torch

from vla.config import DecodeConfig, load_model_config
from vla.decoding import decode
from vla.model import DVLA
from vla.objectives import masked_kl


def _model(preset="tiny_block", seed=0, sharpen=40.0, **ov):
    cfg = load_model_config(preset, ov)
    torch.manual_seed(seed)
    m = DVLA(cfg, 50).eval()
    # sharpen the untrained head so decoding sees a mix of confident and unconfident tokens
    with torch.no_grad():
        m.head.weight.mul_(sharpen)
    return m


def _prefix(m, B=2, seed=0):
    cfg = m.cfg
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(B, len(cfg.cameras), 3, cfg.image_size, cfg.image_size, generator=g)
    txt = torch.randint(3, 40, (B, cfg.max_text_len), generator=g)
    tv = torch.ones(B, cfg.max_text_len, dtype=torch.bool)
    st = torch.randn(B, cfg.state_dim, generator=g)
    return imgs, txt, tv, st


class Recorder:
    """Wraps model.action_logits to log every pass (slots and input tokens)."""

    def __init__(self, m):
        self.m, self.calls, self.orig = m, [], m.action_logits

    def __enter__(self):
        def wrapped(cache, tokens, slots, mode=None, commit=0, **kw):
            self.calls.append((slots.clone(), tokens.clone(), commit))
            return self.orig(cache, tokens, slots, mode=mode, commit=commit, **kw)

        self.m.action_logits = wrapped
        return self

    def __exit__(self, *a):
        self.m.action_logits = self.orig


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_cached_logits_equal_uncached(seed):
    """Random decode states: k leading blocks committed through the cache, later blocks partly masked."""
    m = _model(seed=seed, sharpen=1.0)
    cfg = m.cfg
    A, bs = cfg.n_action_tokens, cfg.block_size
    g = torch.Generator().manual_seed(100 + seed)
    imgs, txt, tv, st = _prefix(m, B=2, seed=seed)
    tokens = torch.randint(0, cfg.num_bins, (2, A), generator=g)
    k = int(torch.randint(1, cfg.n_blocks - 1, (1,), generator=g))
    later = torch.arange(A) >= k * bs
    tokens[(torch.rand(2, A, generator=g) < 0.6) & later] = cfg.mask_id
    with torch.no_grad():
        full, _ = m(imgs, txt, tv, st, tokens)  # uncached block-causal forward
        cache = m.encode_prefix(imgs, txt, tv, st)
        # commit blocks one pass at a time, as the decoders do (clean block at the front of a pass)
        for j in range(k):
            s = torch.arange(j * bs, (j + 2) * bs)
            m.action_logits(cache, tokens[:, s], s, commit=bs)
        rest = torch.arange(k * bs, A)
        inc = m.action_logits(cache, tokens[:, rest], rest)
    torch.testing.assert_close(inc, full[:, k * bs:], atol=1e-5, rtol=0)


def test_committed_kv_is_from_the_clean_pass():
    """The cache holds a finished block's KV from the pass that fed it clean: equal to an uncached forward over
    the final tokens. KV from the pass that revealed its last tokens (inputs still [MASK]) would differ."""
    m = _model(seed=3, sharpen=1.0)
    cfg = m.cfg
    imgs, txt, tv, st = _prefix(m, B=1, seed=3)
    with torch.no_grad():
        cache = m.encode_prefix(imgs, txt, tv, st)
        with Recorder(m) as rec:
            tokens, _ = decode(m, cache, DecodeConfig(decoder="block"))
        ref = m.encode_prefix(imgs, txt, tv, st)
        A = cfg.n_action_tokens
        m.action_logits(ref, tokens, torch.arange(A), commit=A)
    n = cache.length
    assert n > ref.prefix_len  # blocks were committed
    for layer in range(cfg.num_layers):
        torch.testing.assert_close(cache.keys[layer], ref.keys[layer][:, :, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(cache.values[layer], ref.values[layer][:, :, :n], atol=1e-5, rtol=0)
    # every commit happened in a pass whose committed tokens were all revealed
    commits = [(s, t, c) for s, t, c in rec.calls if c]
    assert commits and all(bool((t[:, :c] != cfg.mask_id).all()) for _, t, c in commits)
    # the alternative (KV of the pass where block 0 still had masked inputs) is not the same KV
    first_slots, first_tokens, _ = rec.calls[0]
    assert bool((first_tokens == cfg.mask_id).any())
    alt = m.encode_prefix(imgs, txt, tv, st)
    m.action_logits(alt, first_tokens, first_slots, commit=cfg.block_size)
    assert not torch.allclose(alt.keys[-1], ref.keys[-1][:, :, : alt.length], atol=1e-4)


@pytest.mark.parametrize("tau_add,tau_act", [(1.0, 1.0), (1.0, 0.0)])
def test_extreme_thresholds_make_pipelined_block(tau_add, tau_act):
    """With one row, pipelined decoding whose next block starts only when the current one is finished is block
    decoding, pass for pass. With two rows the tokens are still the same, but a row that finishes a block early
    starts its next one while block decoding waits in lockstep, so pipelined may need fewer passes, never more."""
    m = _model(seed=4)
    for B in (1, 2):
        imgs, txt, tv, st = _prefix(m, B=B, seed=4)
        with torch.no_grad():
            tb, sb = decode(m, m.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder="block"))
            tp, sp = decode(m, m.encode_prefix(imgs, txt, tv, st),
                            DecodeConfig(decoder="pipelined", tau_add=tau_add, tau_act=tau_act))
        assert torch.equal(tb, tp), B
        if B == 1:
            assert sb["nfe"] == sp["nfe"]
        else:
            assert sp["nfe"] <= sb["nfe"]


@pytest.mark.parametrize("decoder,preset,extra", [("parallel", "tiny", {}), ("parallel-cached", "tiny", {}),
                                                  ("block", "tiny_block", {}), ("pipelined", "tiny_block", {}),
                                                  ("pipelined", "tiny_block", {"start_blocks": 4}),
                                                  ("parallel", "tiny_block", {})])
def test_every_token_revealed_exactly_once(decoder, preset, extra):
    m = _model(preset, seed=5)
    cfg = m.cfg
    imgs, txt, tv, st = _prefix(m, B=2, seed=5)
    with torch.no_grad(), Recorder(m) as rec:
        tokens, stats = decode(m, m.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder=decoder, steps=6, **extra))
    assert tokens.shape == (2, cfg.n_action_tokens)
    assert bool((tokens != cfg.mask_id).all()) and bool((tokens >= 0).all())
    assert stats["nfe"] == len(rec.calls)
    # once an input token is revealed it never changes and never goes back to [MASK]
    seen = torch.full_like(tokens, cfg.mask_id)
    for slots, toks, _ in rec.calls:
        prev = seen[:, slots]
        known = prev != cfg.mask_id
        assert torch.equal(toks[known], prev[known])
        seen[:, slots] = torch.where(toks != cfg.mask_id, toks, prev)
    final_known = seen != cfg.mask_id
    assert torch.equal(seen[final_known], tokens[final_known])


def test_pipelined_overlaps_blocks_and_saves_passes():
    m = _model(seed=6)
    imgs, txt, tv, st = _prefix(m, B=1, seed=6)
    with torch.no_grad(), Recorder(m) as rec:
        _, sp = decode(m, m.encode_prefix(imgs, txt, tv, st),
                       DecodeConfig(decoder="pipelined", tau_add=0.3, tau_act=0.5, tau_conf=1.0))
        # tau_conf=1: only the schedule reveals (half the rest per pass), whatever a random model's confidences are
        _, sb = decode(m, m.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder="block", tau_conf=1.0))
    widths = [len(s) for s, _, _ in rec.calls[: sp["nfe"]]]
    assert max(widths) > 2 * m.cfg.block_size  # several blocks in flight in one pass
    assert sp["nfe"] < sb["nfe"]


def test_start_blocks_puts_blocks_in_flight_from_the_first_pass():
    """start_blocks = k: the first pass queries k blocks (block 0 fully active, the others semi-active); with
    tau_conf 1 the semi-active blocks reveal nothing, so the first pass reveals exactly what start_blocks = 1 does."""
    m = _model(seed=6)
    imgs, txt, tv, st = _prefix(m, B=1, seed=6)
    bs = m.cfg.block_size
    firsts = {}
    for k in (1, 3):
        with torch.no_grad(), Recorder(m) as rec:
            decode(m, m.encode_prefix(imgs, txt, tv, st),
                   DecodeConfig(decoder="pipelined", tau_conf=1.0, start_blocks=k))
        firsts[k] = rec.calls
        assert len(rec.calls[0][0]) == k * bs
    # pass 2 inputs: what pass 1 revealed (block 0 only in both)
    _, t1, _ = firsts[1][1]
    _, t3, _ = firsts[3][1]
    assert torch.equal(t1[:, :bs], t3[:, :bs]) and bool((t3[:, bs:] == m.cfg.mask_id).all())
    with pytest.raises(ValueError, match="start_blocks"):
        DecodeConfig(decoder="pipelined", start_blocks=0)


def test_decode_steps_is_exact_prefix_of_full_decode():
    m = _model(seed=7)
    imgs, txt, tv, st = _prefix(m, B=1, seed=7)
    with torch.no_grad():
        full, sf = decode(m, m.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder="block"))
        part, sp = decode(m, m.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder="block", decode_steps=3))
    assert part.shape[1] == 3 * m.cfg.action_dim
    assert torch.equal(part, full[:, : part.shape[1]])
    assert sp["nfe"] < sf["nfe"]
    for dec in ("parallel", "parallel-cached"):  # bidirectional decoders on a block-causal model: not exact, refused
        with pytest.raises(ValueError, match=f"not exact with the '{dec}' decoder"):
            decode(m, m.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder=dec, decode_steps=3))
    bidir = _model("tiny", seed=7)
    with pytest.raises(ValueError, match="block-causal"):
        decode(bidir, bidir.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder="parallel", decode_steps=3))
    with pytest.raises(ValueError, match="block-causal"):
        decode(bidir, bidir.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder="pipelined"))


@pytest.mark.parametrize("decoder", ["parallel", "pipelined"])
def test_deterministic_under_seed(decoder):
    m = _model("tiny_block", seed=8)
    imgs, txt, tv, st = _prefix(m, B=2, seed=8)
    outs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(42)
        with torch.no_grad():
            t, _ = decode(m, m.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder=decoder, temperature=1.0), g)
        outs.append(t)
    assert torch.equal(outs[0], outs[1])
    g = torch.Generator().manual_seed(43)
    with torch.no_grad():
        t3, _ = decode(m, m.encode_prefix(imgs, txt, tv, st), DecodeConfig(decoder=decoder, temperature=1.0), g)
    assert not torch.equal(outs[0], t3)


def test_distillation_loss_zero_for_identical_bidirectional_student():
    teacher = _model("tiny", seed=9)
    student = _model("tiny", seed=9)
    cfg = teacher.cfg
    imgs, txt, tv, st = _prefix(teacher, B=3, seed=9)
    tokens = torch.randint(0, cfg.num_bins, (3, cfg.n_action_tokens))
    masked = torch.rand(tokens.shape) < 0.5
    noised = tokens.masked_fill(masked, cfg.mask_id)
    with torch.no_grad():
        t, _ = teacher(imgs, txt, tv, st, noised, mode="bidirectional")
        s, _ = student(imgs, txt, tv, st, noised, mode="bidirectional")
        s_causal, _ = student(imgs, txt, tv, st, noised, mode="block_causal")
    assert float(masked_kl(t, s, masked)) < 1e-6
    assert float(masked_kl(t, s_causal, masked)) > 1e-4  # the block-causal view differs: something to distill


def test_kv_cache_grows_and_crops_without_changing_logits():
    """A cache whose buffers start too small grows mid-chunk and gives the same logits and committed KV;
    crop forgets committed blocks and later passes overwrite what it dropped."""
    m = _model(seed=4, sharpen=1.0)
    cfg = m.cfg
    A, bs = cfg.n_action_tokens, cfg.block_size
    imgs, txt, tv, st = _prefix(m, B=2, seed=4)
    tokens = torch.randint(0, cfg.num_bins, (2, A), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        big = m.encode_prefix(imgs, txt, tv, st)
        small = m.encode_prefix(imgs, txt, tv, st, capacity=1)  # the prefix, then every pass, outgrows it
        for c in (big, small):
            for j in range(3):
                s = torch.arange(j * bs, (j + 1) * bs)
                c.out = m.action_logits(c, tokens[:, s], s, commit=bs, span=(j * bs, (j + 1) * bs))
        torch.testing.assert_close(small.out, big.out, atol=1e-6, rtol=0)
        assert small.length == big.length == big.prefix_len + 3 * bs
        assert small.capacity == small.length < big.capacity  # it grew, pass by pass
        for layer in range(cfg.num_layers):
            torch.testing.assert_close(small.keys[layer], big.keys[layer], atol=1e-6, rtol=0)
        # crop back to one committed block: the next pass equals a fresh cache's pass over the same state
        big.crop(big.prefix_len + bs, torch.arange(bs))
        rest = torch.arange(bs, A)
        after_crop = m.action_logits(big, tokens[:, rest], rest, span=(bs, A))
        fresh = m.encode_prefix(imgs, txt, tv, st)
        s0 = torch.arange(bs)
        m.action_logits(fresh, tokens[:, s0], s0, commit=bs)
        torch.testing.assert_close(after_crop, m.action_logits(fresh, tokens[:, rest], rest), atol=1e-5, rtol=0)
