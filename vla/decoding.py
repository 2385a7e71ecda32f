"""Chunk decoders: iterative unmasking of H*D action tokens against a cached prefix.

    parallel         bidirectional baseline: K passes over every action token, confidence-ordered reveals on a
                     cosine (or linear) schedule; nothing of the action part is cached.
    parallel-cached  Fast-dLLM-style approximation: after the first pass, revealed tokens keep the KV computed
                     when they were still masked (refreshed every `cache_refresh` passes); only masked tokens
                     are recomputed. Cheaper, not exact under bidirectional attention.
    block            block by block (block-causal models): each block is unmasked on its own, revealing at
                     least 1/n of its remaining tokens per pass; a finished block joins the cache.
    pipelined        Fast-dVLA (docs/ARCHITECTURE.md, "Decoding"; the paper's Algorithm 1): several blocks in flight;
                     a new block is appended (semi-active) once the newest is tau_add decoded; it becomes fully
                     active once its predecessor is tau_act decoded; semi-active blocks reveal tokens with
                     confidence >= tau_conf, fully active ones at least max(1, ceil(remaining / n)).
                     `start_blocks` > 1 (ours, not the paper's) starts the first pass with that many blocks
                     in flight, the later ones semi-active: a block-causal student trained with diffusion
                     forcing has seen later blocks noisier than earlier ones, and its confident tokens there
                     save passes (the paper's rule adds at most one block per pass).

KV commit rule (block and pipelined): a block whose tokens are all revealed is fed as clean tokens in the next
pass, at the front of the query, and the KV of that pass is committed. Blocks are committed strictly in order:
a finished block behind an unfinished one stays in flight. So the cache always equals what an uncached
block-causal forward over the same tokens computes.

Inpainting (real-time chunking, docs/ARCHITECTURE.md "Real-time chunking"): every decoder takes `known` (B, A') long,
the token id where a token is given and -1 elsewhere (the actions that will run while this chunk is decoded, as
the first d steps). Given tokens start revealed and are never changed; the reveal schedules count only the unknown
ones; block-causal decoders commit fully given leading blocks to the cache in their first pass, as clean blocks.

Every decoder returns token ids (B, A') and stats {"nfe": action passes, "prefix_passes": 1, "tokens": A'}.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vla.config import DecodeConfig
from vla.kv_cache import KVCache


def _confidence(logits: torch.Tensor, temperature: float, generator: torch.Generator | None):
    """logits (B, Q, V) -> predictions (B, Q) and their probabilities (B, Q)."""
    logits = logits.float()
    if temperature > 0:
        probs = torch.softmax(logits / temperature, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        pred = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
        conf = probs.gather(-1, pred[..., None])[..., 0]
    else:
        probs = torch.softmax(logits, dim=-1)
        conf, pred = probs.max(dim=-1)
    return pred, conf


def _reveal_top(tokens, revealed, pred, conf, counts):
    """Reveal, per row b, the counts[b] most confident still-masked positions. All tensors (B, Q)."""
    score = conf.masked_fill(revealed, -1.0)
    order = score.argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    chosen = (rank < counts[:, None]) & ~revealed
    tokens[chosen] = pred[chosen]
    revealed |= chosen
    return chosen


def _schedule_counts(revealed: torch.Tensor, s: int, K: int, A, schedule: str) -> torch.Tensor:
    """Tokens to reveal per row at parallel step s of K: down to A*cos(pi/2*(s+1)/K) still masked (or linear);
    everything at the last step; at least one. A: the tokens to decode, an int or per row (B,) (given tokens
    excluded)."""
    frac = (s + 1) / K
    keep = math.cos(math.pi / 2 * frac) if schedule == "cosine" else 1.0 - frac
    A = torch.as_tensor(A, device=revealed.device)
    target_masked = torch.zeros_like(A) if s == K - 1 else torch.floor(A * keep).long()
    return torch.clamp((~revealed).sum(dim=1) - target_masked, min=1)


def _n_tokens(model_cfg, dcfg: DecodeConfig) -> int:
    A = model_cfg.n_action_tokens
    if dcfg.decode_steps is None:
        return A
    m = int(dcfg.decode_steps)
    if not 1 <= m <= model_cfg.chunk_size:
        raise ValueError(f"decode_steps: expected 1..{model_cfg.chunk_size}, got {m}")
    if model_cfg.attention != "block_causal" and m < model_cfg.chunk_size:
        raise ValueError(
            "decode_steps: only a block-causal model can stop early exactly (a bidirectional model's early tokens "
            "attend to later ones)"
        )
    if dcfg.decoder in ("parallel", "parallel-cached") and m < model_cfg.chunk_size:
        raise ValueError(
            f"decode_steps: not exact with the {dcfg.decoder!r} decoder (it attends across the whole span it decodes "
            "and reveals by confidence there, so the first steps differ from a full decode); use the 'block' or "
            "'pipelined' decoder"
        )
    n = m * model_cfg.action_dim
    bs = model_cfg.block_size
    return min(A, ((n + bs - 1) // bs) * bs)


# --------------------------------------------------------------------------------------------------------------
def check_known(known: torch.Tensor | None, B: int, A: int, vocab: int) -> torch.Tensor | None:
    """known (B, k <= A) long, -1 = unknown -> (B, A) padded with -1; None stays None."""
    if known is None:
        return None
    if known.ndim != 2 or known.shape[0] != B or known.shape[1] > A:
        raise ValueError(f"known: expected (B={B}, k <= {A}) token ids, got {tuple(known.shape)}")
    if bool(((known < -1) | (known >= vocab)).any()):
        raise ValueError(f"known: token ids must be -1 (unknown) or in 0..{vocab - 1}")
    out = torch.full((B, A), -1, dtype=torch.long, device=known.device)
    out[:, :known.shape[1]] = known
    return out


def _blank(cfg, cache: KVCache, dcfg: DecodeConfig, known=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Action tokens (B, A) all [MASK] except the given ones, and their revealed flags (B, A), on the cache's
    device."""
    B = cache.prefix_valid.shape[0]
    A = _n_tokens(cfg, dcfg)
    dev = cache.prefix_valid.device
    tokens = torch.full((B, A), cfg.mask_id, dtype=torch.long, device=dev)
    revealed = torch.zeros(B, A, dtype=torch.bool, device=dev)
    known = check_known(known, B, A, cfg.mask_id)
    if known is not None:
        known = known.to(dev)
        revealed = known >= 0
        tokens[revealed] = known[revealed]
    return tokens, revealed


def decode_parallel(model, cache: KVCache, dcfg: DecodeConfig, generator=None, known=None):
    cfg = model.cfg
    tokens, revealed = _blank(cfg, cache, dcfg, known)  # (B, A)
    A = tokens.shape[1]
    todo = (~revealed).sum(dim=1)  # (B,) tokens to decode
    slots = torch.arange(A, device=tokens.device)
    K = dcfg.steps
    nfe = 0
    for s in range(K):
        if bool(revealed.all()):
            break
        logits = model.action_logits(cache, tokens, slots, span=(0, A))
        nfe += 1
        pred, conf = _confidence(logits, dcfg.temperature, generator)
        _reveal_top(tokens, revealed, pred, conf, _schedule_counts(revealed, s, K, todo, dcfg.schedule))
    return tokens, {"nfe": nfe, "prefix_passes": 1, "tokens": A}


def decode_parallel_cached(model, cache: KVCache, dcfg: DecodeConfig, generator=None, known=None):
    """Approximate cache under bidirectional attention: revealed tokens keep stale KV between refreshes."""
    cfg = model.cfg
    tokens, revealed = _blank(cfg, cache, dcfg, known)  # (B, A)
    B, A = tokens.shape
    todo = (~revealed).sum(dim=1)  # (B,)
    dev = tokens.device
    K = dcfg.steps
    nfe = 0
    base_len = cache.length
    base_slots = cache.slots
    for s in range(K):
        if bool(revealed.all()):
            break
        refresh = s == 0 or (dcfg.cache_refresh and s % dcfg.cache_refresh == 0) or B > 1
        if refresh:
            # full pass; keep every token's KV as the stale cache for the next passes
            cache.crop(base_len, base_slots)
            slots = torch.arange(A, device=dev)
            logits_all = model.action_logits(cache, tokens, slots, mode="bidirectional", commit=A, span=(0, A))
            q_slots = slots
            logits = logits_all
        else:
            # query only masked slots (same set for the single sample); keys: prefix + stale KV of all A slots
            q_slots = (~revealed[0]).nonzero()[:, 0]
            logits = model.action_logits(cache, tokens[:, q_slots], q_slots, mode="bidirectional")
        nfe += 1
        pred, conf = _confidence(logits, dcfg.temperature, generator)
        counts = _schedule_counts(revealed, s, K, todo, dcfg.schedule)
        sub_tok, sub_rev = tokens[:, q_slots].clone(), revealed[:, q_slots].clone()
        _reveal_top(sub_tok, sub_rev, pred, conf, counts)
        tokens[:, q_slots], revealed[:, q_slots] = sub_tok, sub_rev
    cache.crop(base_len, base_slots)
    return tokens, {"nfe": nfe, "prefix_passes": 1, "tokens": A}


# --------------------------------------------------------------------------------------------------------------
def _np_confidence(logits: torch.Tensor, temperature: float, generator):
    """logits (B, Q, V) -> numpy predictions (B, Q) int64 and confidences (B, Q) float32."""
    pred, conf = _confidence(logits, temperature, generator)
    return pred.cpu().numpy(), conf.cpu().numpy()


def _np_fully_active_choice(r, c, tau_conf: float, n: int):
    """The fully active rule on numpy blocks (..., D'): which still-masked tokens to reveal. Per block,
    threshold = min(tau_conf, k-th best confidence), k = max(1, ceil(remaining / n)) (never more than remain)."""
    remaining = (~r).sum(axis=-1)  # (...)
    k = np.minimum(np.maximum(np.ceil(remaining / n).astype(np.int64), 1), remaining)
    score = np.where(r, np.float32(-1.0), c)
    ranked = -np.sort(-score, axis=-1)
    kth = np.take_along_axis(ranked, np.maximum(k - 1, 0)[..., None], axis=-1)[..., 0]  # k-th best confidence
    thr = np.minimum(kth, np.float32(tau_conf))
    return (score >= thr[..., None]) & ~r & (remaining > 0)[..., None]


def _np_reveal_fully_active(t, r, p, c, tau_conf: float, n: int) -> None:
    """The fully active rule on rows (B', D'), in place on t (ids) and r (revealed flags)."""
    chosen = _np_fully_active_choice(r, c, tau_conf, n)
    t[chosen] = p[chosen]
    r |= chosen


class _Chunk:
    """Decode state on the host: token ids and revealed flags as numpy (B, A); passes feed slices to the model.

    A pass's bookkeeping (which tokens to reveal, block states) runs over a handful of numbers per block, where
    each torch op costs more than the arithmetic; numpy does it at a fraction of the cost, and the GPU (if any)
    only runs the model."""

    def __init__(self, cfg, cache: KVCache, dcfg: DecodeConfig, known=None):
        tokens, revealed = _blank(cfg, cache, dcfg, known)  # (B, A): [MASK] except the given tokens
        self.tokens, self.revealed = tokens.cpu().numpy(), revealed.cpu().numpy()
        self.B, self.A = self.tokens.shape
        self.dev = cache.prefix_valid.device
        self.slots = torch.arange(self.A, device=self.dev)

    def logits(self, model, cache, lo: int, hi: int, commit: int = 0) -> torch.Tensor:
        """One pass over slots lo .. hi-1 (the cache holds slots 0 .. lo-1): logits (B, hi-lo, bins)."""
        tok = torch.from_numpy(self.tokens[:, lo:hi]).to(self.dev)
        return model.action_logits(cache, tok, self.slots[lo:hi], commit=commit, span=(lo, hi))

    def result(self) -> torch.Tensor:
        return torch.from_numpy(self.tokens).to(self.dev)


def decode_block(model, cache: KVCache, dcfg: DecodeConfig, generator=None, known=None):
    """Block by block (the paper's BlockDiff row). Requires a block-causal model. Finished blocks (decoded, or given
    whole) go clean in front of the next pass and are committed to the cache."""
    cfg = model.cfg
    _require_block_causal(cfg, "block")
    ch = _Chunk(cfg, cache, dcfg, known)
    A, bs = ch.A, cfg.block_size
    nfe = 0
    committed = 0  # blocks [0, committed) are in the cache
    for j in range(A // bs):
        lo, hi = j * bs, (j + 1) * bs
        while not ch.revealed[:, lo:hi].all():
            n_commit = j - committed  # every block before j is finished: fed clean, then committed
            logits = ch.logits(model, cache, committed * bs, hi, commit=n_commit * bs)[:, n_commit * bs:]
            committed = j
            nfe += 1
            pred, conf = _np_confidence(logits, dcfg.temperature, generator)
            t, r = ch.tokens[:, lo:hi], ch.revealed[:, lo:hi]  # views: updated in place
            _np_reveal_fully_active(t, r, pred, conf, dcfg.tau_conf, dcfg.n)
    return ch.result(), {"nfe": nfe, "prefix_passes": 1, "tokens": A}


def decode_pipelined(model, cache: KVCache, dcfg: DecodeConfig, generator=None, known=None):
    """Fast-dVLA inter-block pipelined decoding (batched in lockstep; each row keeps its own block states). Blocks
    given whole count as finished (fully active) and are committed in the first pass; the pipeline starts at each
    row's first unfinished block."""
    cfg = model.cfg
    _require_block_causal(cfg, "pipelined")
    ch = _Chunk(cfg, cache, dcfg, known)
    B, A, bs = ch.B, ch.A, cfg.block_size
    nb = A // bs
    INACTIVE, SEMI, FULL = 0, 1, 2
    status = np.zeros((B, nb), dtype=np.int64)
    given = ch.revealed.reshape(B, nb, bs).all(axis=2)  # (B, nb)
    for b in range(B):
        f = int(np.argmin(given[b])) if not given[b].all() else nb  # the first unfinished block
        status[b, :f] = FULL
        status[b, f:f + dcfg.start_blocks] = SEMI
        if f < nb:
            status[b, f] = FULL
    committed = 0  # blocks [0, committed) are in the cache
    nfe = 0
    while committed < nb:
        done = ch.revealed.reshape(B, nb, bs).all(axis=2)  # (B, nb)
        # leading blocks finished in every row: fed clean at the front of this pass, then committed
        n_commit = 0
        while committed + n_commit < nb and done[:, committed + n_commit].all():
            n_commit += 1
        if committed + n_commit >= nb:
            break  # everything decoded; nothing left to run (commit of the tail is not needed for the output)
        active_any = (status > INACTIVE).any(axis=0)  # (nb,)
        last = int(np.flatnonzero(active_any).max()) if active_any.any() else committed
        hi = max(last + 1, committed + n_commit + 1)
        off = committed * bs
        logits = ch.logits(model, cache, off, hi * bs, commit=n_commit * bs)
        nfe += 1
        committed += n_commit
        pred, conf = _np_confidence(logits, dcfg.temperature, generator)  # (B, Q)
        # every in-flight block [committed, hi) at once, each by its own state: (B, nq, bs) views and slices
        nq = hi - committed
        lo_t = n_commit * bs  # the clean blocks at the front of the query are not revealed again
        t = ch.tokens[:, committed * bs:hi * bs].reshape(B, nq, bs)
        r = ch.revealed[:, committed * bs:hi * bs].reshape(B, nq, bs)
        p = pred[:, lo_t:].reshape(B, nq, bs)
        c = conf[:, lo_t:].reshape(B, nq, bs)
        st = status[:, committed:hi]  # (B, nq)
        chosen = _np_fully_active_choice(r, c, dcfg.tau_conf, dcfg.n) & (st == FULL)[..., None]
        chosen |= (c >= np.float32(dcfg.tau_conf)) & ~r & (st == SEMI)[..., None]
        t[chosen] = p[chosen]
        r |= chosen
        # state transitions, per row (a handful of numbers: plain Python)
        frac = ch.revealed.reshape(B, nb, bs).mean(axis=2).tolist()  # (B, nb)
        for b in range(B):
            fb, sb = frac[b], status[b].tolist()
            newest = max(j for j in range(nb) if sb[j] > INACTIVE)
            if newest + 1 < nb and fb[newest] >= dcfg.tau_add:
                sb[newest + 1] = SEMI
            for j in range(1, nb):
                if sb[j] == SEMI and (fb[j - 1] >= dcfg.tau_act or fb[j - 1] >= 1.0):
                    sb[j] = FULL
            # never stall: when every active block is finished, the next block starts fully active
            if newest + 1 < nb and sb[newest + 1] == INACTIVE and all(f >= 1.0 for f in fb[: newest + 1]):
                sb[newest + 1] = FULL
            status[b] = sb
    return ch.result(), {"nfe": nfe, "prefix_passes": 1, "tokens": A}


def _require_block_causal(cfg, name: str) -> None:
    if cfg.attention != "block_causal":
        raise ValueError(
            f"decoder: {name!r} needs a block-causal model (attention: block_causal); this one is bidirectional. "
            "Use decoder 'parallel', or distill a block-causal student (vla distill)."
        )


DECODER_FNS = {
    "parallel": decode_parallel,
    "parallel-cached": decode_parallel_cached,
    "block": decode_block,
    "pipelined": decode_pipelined,
}


def decode(model, cache: KVCache, dcfg: DecodeConfig, generator=None, known=None):
    """known: (B, k) given token ids for the start of the chunk (-1 = unknown), or None."""
    return DECODER_FNS[dcfg.decoder](model, cache, dcfg, generator, known=known)
