"""Attention masks for the VLA sequence [prefix (P) | action tokens (A = H*D)].

Rules (docs/ARCHITECTURE.md):
  * prefix queries see the valid prefix keys (text padding is hidden), never an action token;
  * action queries see the valid prefix and, among action keys,
      - "bidirectional": every action token;
      - "block_causal":  every token of their own block and of earlier blocks, never a later block.
Masks are additive float tensors (B, 1, Q, K): 0 where allowed, finfo(dtype).min where blocked (a 4D bool mask
is silently wrong with transformers' eager kernel).
"""

from __future__ import annotations

import torch


def action_allowed(query_slots: torch.Tensor, key_slots: torch.Tensor, block_size: int, mode: str) -> torch.Tensor:
    """(Q,) x (K,) action slot indices -> (Q, K) bool: may query slot q attend to key slot k?"""
    if mode == "bidirectional":
        return torch.ones(len(query_slots), len(key_slots), dtype=torch.bool, device=query_slots.device)
    if mode == "block_causal":
        return (key_slots[None, :] // block_size) <= (query_slots[:, None] // block_size)
    raise ValueError(f"mode: expected 'bidirectional' or 'block_causal', got {mode!r}")


def to_additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min)


def full_mask(prefix_valid: torch.Tensor, n_action: int, block_size: int, mode: str,
              dtype=torch.float32) -> torch.Tensor:
    """Mask for one forward over the whole sequence (training, reference). prefix_valid: (B, P) bool ->
    (B, 1, P+A, P+A)."""
    B, P = prefix_valid.shape
    dev = prefix_valid.device
    slots = torch.arange(n_action, device=dev)
    L = P + n_action
    allowed = torch.zeros(B, L, L, dtype=torch.bool, device=dev)
    allowed[:, :, :P] = prefix_valid[:, None, :]  # every query sees the valid prefix
    allowed[:, P:, P:] = action_allowed(slots, slots, block_size, mode)[None]
    # a padded prefix query must still see something: let it see itself (its output is never used)
    idx = torch.arange(P, device=dev)
    allowed[:, idx, idx] = True
    return to_additive(allowed[:, None], dtype)


def query_mask(
    prefix_valid: torch.Tensor,
    cached_slots: torch.Tensor,
    query_slots: torch.Tensor,
    block_size: int,
    mode: str,
    dtype=torch.float32,
) -> torch.Tensor:
    """Mask for an incremental pass: keys = [prefix (P) | cached action slots (C) | query slots (Q)], queries = Q.

    prefix_valid: (B, P) bool; cached_slots: (C,); query_slots: (Q,) -> (B, 1, Q, P+C+Q).
    """
    B, P = prefix_valid.shape
    Q = len(query_slots)
    keys = torch.cat([cached_slots, query_slots])
    act = action_allowed(query_slots, keys, block_size, mode)  # (Q, C+Q)
    allowed = torch.cat([prefix_valid[:, None, :].expand(B, Q, P), act[None].expand(B, Q, len(keys))], dim=2)
    return to_additive(allowed[:, None], dtype)


def action_table(prefix_valid: torch.Tensor, n_action: int, block_size: int, mode: str,
                 dtype=torch.float32) -> torch.Tensor:
    """Every incremental pass's mask at once, for caches whose committed slots are 0 .. C-1 and whose query is
    the contiguous slots q0 .. q0+Q-1 with q0 = C (what the block and pipelined decoders run):
    query_mask(...) == table[:, :, q0:q0+Q, :P+q0+Q]. prefix_valid (B, P) bool -> (B, 1, A, P+A) additive."""
    B, P = prefix_valid.shape
    slots = torch.arange(n_action, device=prefix_valid.device)
    allowed = torch.cat([prefix_valid[:, None, :].expand(B, n_action, P),
                         action_allowed(slots, slots, block_size, mode)[None].expand(B, n_action, n_action)], dim=2)
    return to_additive(allowed[:, None], dtype)
