"""A lean inference path through a transformers Llama/Qwen2 decoder stack, for cached chunk decoding.

At decode time a pass runs 7-56 action tokens through a ~2.6M-parameter stack, so on a CPU its cost is set
by the number of kernel launches and small matmuls, not by FLOPs. transformers' layers spend three matmuls on
q/k/v and two on gate/up, recompute the rotary table every pass, and run RMSNorm as five ops. This path uses
the same weights, fused once into one [q|k|v] matrix and one [gate|up] matrix and stored transposed (rebuilt
whenever a weight changes in place, e.g. an optimizer step between evaluations), a rotary table computed once,
`F.rms_norm` and one SDPA call, and computes the same function: tests/test_fast_layers.py checks it against
the transformers forward.

Why transposed: `F.linear(x, W)` with W (out, in) multiplies by W^T; a contiguous transposed copy (in, out) makes
it a plain row-major `x @ W^T`, the cheaper matmul for these small shapes (7-56 rows, 192-1024 columns) on a CPU;
the decoded actions stay the same (benchmarks/decode_ab.py compares the two paths).

Only for inference (no autograd); training always runs transformers' modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supported(backbone) -> bool:
    cfg = backbone.config
    return (
        getattr(cfg, "model_type", "") in ("llama", "qwen2")
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and not getattr(cfg, "use_sliding_window", False)
        and (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default") == "default"
    )


class FastStack:
    """Fused weights of one backbone, with a version key so they never go stale."""

    def __init__(self, backbone):
        self.backbone = backbone
        self._key = None
        self._layers: list[tuple] = []
        self._cos = self._sin = None
        self.ok = False

    def _version_key(self):
        """Identity of every module that holds a fused weight (a LoRA wrap replaces it) and identity, in-place
        version and dtype of every tensor the fused path reads: any change means rebuild."""
        bb = self.backbone
        key = [id(bb.norm), id(bb.norm.weight), bb.norm.weight._version, bb.norm.weight.dtype,
               id(bb.rotary_emb.inv_freq)]
        for layer in bb.layers:
            a, m = layer.self_attn, layer.mlp
            for mod in (layer.input_layernorm, layer.post_attention_layernorm, a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                        m.gate_proj, m.up_proj, m.down_proj):
                key.append(id(mod))
                for t in (getattr(mod, "weight", None), getattr(mod, "bias", None)):
                    if t is not None:
                        key += [id(t), t._version, t.dtype]
        return tuple(key)

    def _build(self) -> bool:
        """Fuse the weights; False when a projection is not a plain nn.Linear (e.g. LoRA-wrapped)."""
        bb = self.backbone
        layers = []
        for layer in bb.layers:
            a, m = layer.self_attn, layer.mlp
            projs = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
            if any(type(p) is not torch.nn.Linear for p in projs) or m.gate_proj.bias is not None:
                return False
            w_qkv = _t(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0))  # (d, (nh+2nkv)*hd)
            b_qkv = None
            if a.q_proj.bias is not None:
                b_qkv = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], 0).detach()
            w_gu = _t(torch.cat([m.gate_proj.weight, m.up_proj.weight], 0))  # (d, 2*I)
            layers.append((
                layer.input_layernorm.weight.detach(), layer.input_layernorm.variance_epsilon,
                w_qkv, b_qkv, _t(a.o_proj.weight), None if a.o_proj.bias is None else a.o_proj.bias.detach(),
                layer.post_attention_layernorm.weight.detach(), layer.post_attention_layernorm.variance_epsilon,
                w_gu, _t(m.down_proj.weight),
            ))
        self._layers = layers
        self._heads = _heads(bb.config)
        self._final = (bb.norm.weight.detach(), bb.norm.variance_epsilon)
        cfg = bb.config
        rot = bb.rotary_emb
        n_pos = int(cfg.max_position_embeddings)
        pos = torch.arange(n_pos, device=rot.inv_freq.device, dtype=torch.float)
        freqs = pos[:, None] * rot.inv_freq.float()[None]  # (n_pos, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (n_pos, hd)
        dtype = bb.norm.weight.dtype
        self._cos = (emb.cos() * rot.attention_scaling).to(dtype)
        self._sin = (emb.sin() * rot.attention_scaling).to(dtype)
        return True

    def refresh(self) -> bool:
        key = self._version_key()
        if key != self._key:
            self.ok = self._build()
            self._key = key
        return self.ok

    @torch.no_grad()
    def run(self, h: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor | None, cache,
            pos_start: int | None = None) -> torch.Tensor:
        """h (B, Q, d), mask (B, 1, Q, K) additive float, position_ids (B, Q) -> final-normed hidden (B, Q, d).

        pos_start: every row's positions are pos_start .. pos_start + Q - 1 (position_ids may then be None).
        Call refresh() first (it returns False where this path cannot run).
        """
        if not self.ok:
            raise RuntimeError("FastStack.run: call refresh() first; it must return True")
        nh, nkv, hd = self._heads
        B, Q, d = h.shape
        if pos_start is not None:
            cos = self._cos[pos_start:pos_start + Q][:, None]  # (Q, 1, hd): broadcasts over (B, Q, heads, hd)
            sin = self._sin[pos_start:pos_start + Q][:, None]
        else:
            cos = self._cos[position_ids][:, :, None]  # (B, Q, 1, hd)
            sin = self._sin[position_ids][:, :, None]
        n_qk, half = (nh + nkv) * hd, hd // 2
        for i, (w_in, eps_in, w_qkv, b_qkv, w_o, b_o, w_post, eps_post, w_gu, w_down) in enumerate(self._layers):
            x = _rms(h, w_in, eps_in)
            y = _mm(x, w_qkv, b_qkv)  # (B, Q, (nh+2nkv) hd): [q | k | v]
            qk = y[..., :n_qk].view(B, Q, nh + nkv, hd)  # q and k heads side by side: RoPE'd together
            qk = torch.addcmul(qk * cos, torch.cat([-qk[..., half:], qk[..., :half]], dim=-1), sin)
            q = qk[:, :, :nh].transpose(1, 2)  # (B, nh, Q, hd)
            k = qk[:, :, nh:].transpose(1, 2)  # (B, nkv, Q, hd)
            v = y[..., n_qk:].view(B, Q, nkv, hd).transpose(1, 2)
            if cache is not None:
                k, v = cache.update(k, v, i)  # (B, nkv, K, hd)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=hd**-0.5, enable_gqa=nkv != nh)
            h = h + _mm(o.transpose(1, 2).reshape(B, Q, nh * hd), w_o, b_o)
            x = _rms(h, w_post, eps_post)
            g, u = torch.matmul(x, w_gu).chunk(2, dim=-1)  # (B, Q, I) each
            h = h + torch.matmul(F.silu(g) * u, w_down)
        return _rms(h, *self._final)


def _t(w: torch.Tensor) -> torch.Tensor:
    """A Linear's weight (out, in) -> its transpose (in, out), contiguous."""
    return w.detach().t().contiguous()


def _mm(x: torch.Tensor, wt: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) @ wt (in, out) [+ b (out,)] -> (..., out): F.linear(x, wt.T, b)."""
    y = torch.matmul(x, wt)
    return y if b is None else y + b


def _heads(cfg) -> tuple[int, int, int]:
    nh = cfg.num_attention_heads
    return nh, cfg.num_key_value_heads or nh, getattr(cfg, "head_dim", None) or cfg.hidden_size // nh


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    # transformers normalizes in float32 and casts back before the weight
    return w * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)
