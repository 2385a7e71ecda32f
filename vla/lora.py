"""Low-rank adapters for the backbone's Linear layers (distillation and capability-vector finetuning options).

W x  ->  W x + (alpha / r) * B (A x), W frozen, A (r, in) small random, B (out, r) zero: the update starts at 0.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        lin = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        return lin


def wrap_linears(module: nn.Module, rank: int, alpha: float = 16.0) -> int:
    """Wrap every targeted Linear inside `module` (their base weights frozen). Returns the number of wrapped layers."""
    n = 0
    for name, mod in list(module.named_modules()):
        for child_name, child in list(mod.named_children()):
            if child_name in TARGETS and isinstance(child, nn.Linear):
                setattr(mod, child_name, LoRALinear(child, rank, alpha))
                n += 1
    if n == 0:
        raise ValueError("lora: no Linear layer named like q_proj/k_proj/... found in the backbone")
    return n


def apply_lora(model: nn.Module, rank: int, alpha: float = 16.0) -> int:
    """Wrap every targeted Linear of model.backbone; freeze everything else. Returns the number of wrapped layers."""
    for p in model.parameters():
        p.requires_grad_(False)
    return wrap_linears(model.backbone, rank, alpha)


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain copy of the model with every adapter folded into its Linear (checkpoint keys as without LoRA)."""
    out = copy.deepcopy(model)
    for name, mod in list(out.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, LoRALinear):
                setattr(mod, child_name, child.merged())
    for p in out.parameters():
        p.requires_grad_(True)
    return out
