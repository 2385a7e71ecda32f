"""KV cache for chunk decoding: the prefix, then finished action blocks, appended only on commit.

transformers' attention layers call `cache.update(k, v, layer_idx)` and attend over what it returns. This
cache returns [stored | new] but stores nothing until `commit(n)`, so a denoising pass leaves it unchanged
unless it is told which of the pass's tokens are final. That makes "which forward pass's KV is committed"
explicit: vla.decoding commits a block's KV from the first pass in which the block is fed fully revealed
(clean) tokens, which is exactly the KV an uncached block-causal forward over the clean chunk would compute.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, prefix_valid: torch.Tensor, n_layers: int):
        self.prefix_valid = prefix_valid  # (B, P) bool
        self.prefix_len = prefix_valid.shape[1]
        self.keys: list[torch.Tensor | None] = [None] * n_layers  # (B, heads, T, head_dim)
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self._new_k: list[torch.Tensor | None] = [None] * n_layers
        self._new_v: list[torch.Tensor | None] = [None] * n_layers
        self.slots = torch.zeros(0, dtype=torch.long, device=prefix_valid.device)  # committed action slots
        self._committed_prefix = False

    # transformers Cache protocol (the part the attention layers use)
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self._new_k[layer_idx] = key_states
        self._new_v[layer_idx] = value_states
        if self.keys[layer_idx] is None:
            return key_states, value_states
        return (
            torch.cat([self.keys[layer_idx], key_states], dim=2),
            torch.cat([self.values[layer_idx], value_states], dim=2),
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        k = self.keys[layer_idx]
        return 0 if k is None else k.shape[2]

    # ours
    def commit(self, n: int, slots: torch.Tensor | None = None) -> None:
        """Keep the KV of the first n tokens of the last pass. The first commit is the prefix (no slots)."""
        for i, (k, v) in enumerate(zip(self._new_k, self._new_v)):
            k, v = k[:, :, :n], v[:, :, :n]
            if self.keys[i] is None:
                self.keys[i], self.values[i] = k, v
            else:
                self.keys[i] = torch.cat([self.keys[i], k], dim=2)
                self.values[i] = torch.cat([self.values[i], v], dim=2)
        if not self._committed_prefix:
            self._committed_prefix = True
            if n != self.prefix_len:
                raise ValueError(f"commit: the first commit must be the prefix ({self.prefix_len} tokens), got {n}")
        else:
            if slots is None or len(slots) != n:
                raise ValueError("commit: action commits need their slot indices")
            self.slots = torch.cat([self.slots, slots.to(self.slots.device)])
        self.discard()

    def discard(self) -> None:
        n = len(self._new_k)
        self._new_k, self._new_v = [None] * n, [None] * n

    @property
    def length(self) -> int:
        return self.get_seq_length(0)
