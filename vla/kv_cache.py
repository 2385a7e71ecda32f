"""KV cache for chunk decoding: the prefix, then finished action blocks, appended only on commit.

transformers' attention layers call `cache.update(k, v, layer_idx)` and attend over what it returns. This
cache returns [stored | new] but stores nothing until `commit(n)`, so a denoising pass leaves it unchanged
unless it is told which of the pass's tokens are final. That makes "which forward pass's KV is committed"
explicit: vla.decoding commits a block's KV from the first pass in which the block is fed fully revealed
(clean) tokens, which is exactly the KV an uncached block-causal forward over the clean chunk would compute.

Storage: one preallocated buffer per layer for keys and one for values, (B, heads, capacity, head_dim). A pass
writes its new KV right behind the committed part and attends over a view of [committed | new]; committing
the first n of them only moves the committed length, discarding leaves them to be overwritten. No pass
concatenates or copies what is already stored (a chunk runs several passes of 7-56 tokens, and a growing
`torch.cat` per layer and pass would copy the whole cache every time).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, prefix_valid: torch.Tensor, n_layers: int, capacity: int | None = None):
        """prefix_valid (B, P) bool; capacity: tokens the buffers hold before they grow (default P + 128)."""
        self.prefix_valid = prefix_valid  # (B, P) bool
        self.prefix_len = prefix_valid.shape[1]
        self.capacity = int(capacity) if capacity else self.prefix_len + 128
        self._k: list[torch.Tensor | None] = [None] * n_layers  # (B, heads, capacity, head_dim)
        self._v: list[torch.Tensor | None] = [None] * n_layers
        self._len = 0  # committed tokens (prefix + committed action slots), the same in every layer
        self._new = [0] * n_layers  # tokens of the current pass written behind the committed part, per layer
        self.slots = torch.zeros(0, dtype=torch.long, device=prefix_valid.device)  # committed action slots
        self.n_slots = 0  # len(self.slots)
        self.slots_contiguous = True  # committed action slots are exactly 0 .. n_slots - 1, in that order
        self._committed_prefix = False
        self.masks: dict = {}  # per-chunk mask tables (vla.masks.action_table), keyed by mode
        self.fast = None  # the model's lean path (vla.fast_layers.FastStack), checked once for this chunk; None: off

    # transformers Cache protocol (the part the attention layers use)
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """key/value_states (B, heads, Q, head_dim) -> keys/values over [committed | these Q] (views)."""
        L, Q = self._len, key_states.shape[2]
        k, v = self._k[layer_idx], self._v[layer_idx]
        if k is None or L + Q > k.shape[2]:
            k, v = self._grow(layer_idx, key_states, L + Q)
        k[:, :, L:L + Q].copy_(key_states)
        v[:, :, L:L + Q].copy_(value_states)
        self._new[layer_idx] = Q
        return k[:, :, :L + Q], v[:, :, :L + Q]

    def _grow(self, i: int, like: torch.Tensor, need: int):
        B, H, _, hd = like.shape
        cap = max(need, self.capacity)
        k = like.new_empty(B, H, cap, hd)
        v = like.new_empty(B, H, cap, hd)
        if self._k[i] is not None:
            k[:, :, :self._len].copy_(self._k[i][:, :, :self._len])
            v[:, :, :self._len].copy_(self._v[i][:, :, :self._len])
        self._k[i], self._v[i] = k, v
        self.capacity = cap
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._len

    # ours
    def commit(self, n: int, slots: torch.Tensor | None = None, first_slot: int | None = None) -> None:
        """Keep the KV of the first n tokens of the last pass. The first commit is the prefix (no slots).

        first_slot: the caller's promise that `slots` is first_slot .. first_slot + n - 1 (spares a check)."""
        if any(q < n for q in self._new):
            raise ValueError(f"commit: {n} tokens asked, the last pass wrote {min(self._new)} in some layer")
        if not self._committed_prefix:
            if n != self.prefix_len:
                raise ValueError(f"commit: the first commit must be the prefix ({self.prefix_len} tokens), got {n}")
            self._committed_prefix = True
        else:
            if slots is None or len(slots) != n:
                raise ValueError("commit: action commits need their slot indices")
            if self.slots_contiguous:
                if first_slot is None:
                    want = torch.arange(self.n_slots, self.n_slots + n, device=slots.device)
                    self.slots_contiguous = bool(torch.equal(slots, want))
                else:
                    self.slots_contiguous = first_slot == self.n_slots
            self.slots = torch.cat([self.slots, slots.to(self.slots.device)])
            self.n_slots += n
        self._len += n
        self.discard()

    def discard(self) -> None:
        self._new = [0] * len(self._new)

    def crop(self, length: int, slots: torch.Tensor) -> None:
        """Forget everything committed after the first `length` tokens; `slots` are the action slots kept."""
        if not self.prefix_len <= length <= self._len:
            raise ValueError(f"crop: length must be in [{self.prefix_len}, {self._len}], got {length}")
        self._len = length
        self.slots = slots
        self.n_slots = len(slots)
        self.slots_contiguous = bool(torch.equal(slots, torch.arange(self.n_slots, device=slots.device)))
        self.discard()

    @property
    def length(self) -> int:
        return self._len

    @property
    def keys(self) -> list[torch.Tensor | None]:
        """Committed keys per layer, (B, heads, length, head_dim) views."""
        return [None if k is None else k[:, :, :self._len] for k in self._k]

    @property
    def values(self) -> list[torch.Tensor | None]:
        return [None if v is None else v[:, :, :self._len] for v in self._v]
