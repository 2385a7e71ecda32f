"""Noising and losses. One training loop (vla/train.py) composes these.

diffusion          t ~ U(0, 1) per sample; each action token masked with prob (1 - eps) t + eps; CE on masked tokens.
diffusion_forcing  one mask ratio per block, non-decreasing along the chunk (t1 ~ U(a, b), non-negative capped
                   increments). With prob `df.clean_past_prob` the inference pattern instead: blocks before a
                   random block j clean, block j partly masked, blocks after j fully masked.
distill            the same noised input to a frozen bidirectional teacher and the block-causal student; KL(teacher
                   || student) on masked positions (optionally plus CE on the ground truth).
fewstep            few-step distillation: the frozen teacher decodes each sample with its own K passes (greedy, the
                   given prefix inpainted); the student, from the teacher's weights, learns to reach that decoded
                   chunk from any subset of it, the fully masked one with prob `distill.full_mask_prob`: CE
                   against the teacher's tokens. One or two passes then decode what the teacher's K do.
aux                an MLP head on vision-token hidden states of one layer: object positions ("spatial") or the end
                   effector's position k steps ahead ("eef_future"); MSE, weight `aux.weight`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vla.config import ModelConfig, TrainConfig


def mask_uniform(tokens: torch.Tensor, mask_id: int, eps: float, g: torch.Generator | None):
    """tokens (B, A) -> (noised (B, A), masked (B, A) bool). The draws come from the CPU generator `g` (the same
    masks on any device), then move to the tokens' device."""
    B, A = tokens.shape
    t = torch.rand(B, 1, generator=g)
    p = (1 - eps) * t + eps
    masked = (torch.rand(B, A, generator=g) < p).to(tokens.device)
    return tokens.masked_fill(masked, mask_id), masked


def block_ratios(B: int, nb: int, cfg: TrainConfig, g: torch.Generator | None) -> torch.Tensor:
    """(B, nb) per-block mask ratios, non-decreasing along the chunk."""
    a, b = cfg.df.first
    first = a + (b - a) * torch.rand(B, 1, generator=g)
    inc = cfg.df.max_increment * torch.rand(B, nb - 1, generator=g)
    ratios = torch.cat([first, first + inc.cumsum(dim=1)], dim=1).clamp(max=1.0)
    # the inference pattern: clean past, current block partly masked, future fully masked
    pattern = torch.rand(B, generator=g) < cfg.df.clean_past_prob
    if bool(pattern.any()):
        j = torch.randint(0, nb, (B,), generator=g)
        cur = cfg.eps + (1 - cfg.eps) * torch.rand(B, generator=g)
        blk = torch.arange(nb)[None]
        pat = torch.where(blk < j[:, None], 0.0, torch.where(blk == j[:, None], cur[:, None], 1.0))
        ratios = torch.where(pattern[:, None], pat, ratios)
    return ratios


def mask_blockwise(tokens: torch.Tensor, mask_id: int, block_size: int, cfg: TrainConfig, g):
    B, A = tokens.shape
    nb = A // block_size
    ratios = block_ratios(B, nb, cfg, g).repeat_interleave(block_size, dim=1)  # (B, A)
    masked = torch.rand(B, A, generator=g) < ratios  # drawn on the CPU generator, as in mask_uniform
    # at least one masked token per sample, so every sample contributes to the loss
    none = ~masked.any(dim=1)
    if bool(none.any()):
        masked[none, -1] = True
    masked = masked.to(tokens.device)
    return tokens.masked_fill(masked, mask_id), masked


def noise(tokens: torch.Tensor, model_cfg: ModelConfig, cfg: TrainConfig, g):
    if cfg.objective == "diffusion" and model_cfg.attention == "bidirectional":
        noised, masked = mask_uniform(tokens, model_cfg.mask_id, cfg.eps, g)
    else:
        noised, masked = mask_blockwise(tokens, model_cfg.mask_id, model_cfg.block_size, cfg, g)
    if cfg.prefix.prob > 0:
        noised, masked = give_prefix(tokens, noised, masked, model_cfg, cfg, g)
    return noised, masked


def prefix_given(B: int, model_cfg: ModelConfig, cfg: TrainConfig, g, device=None) -> torch.Tensor:
    """Training-time prefix conditioning (real-time chunking): with probability cfg.prefix.prob per sample, the first
    d ~ U{0..d_max} action steps are given, as when the actions that run during decoding are inpainted. Returns the
    given flags (B, A) bool; draws from the CPU generator."""
    D, H = model_cfg.action_dim, model_cfg.chunk_size
    A = model_cfg.n_action_tokens
    d_max = min(H - 1, cfg.prefix.max_steps if cfg.prefix.max_steps is not None else H // 2)
    use = torch.rand(B, generator=g) < cfg.prefix.prob
    d = torch.randint(0, d_max + 1, (B,), generator=g) * use  # (B,) steps given
    return (torch.arange(A)[None] < (d * D)[:, None]).to(device)  # (B, A)


def apply_given(tokens, noised, masked, given, mask_id: int):
    """Given positions hold their clean tokens and carry no loss; at least one token stays masked. All (B, A)."""
    noised = torch.where(given, tokens, noised)
    masked = masked & ~given
    none = ~masked.any(dim=1)
    if bool(none.any()):  # everything after the prefix happened to be clean: mask the last token
        masked[none, -1] = True
        noised[none, -1] = mask_id
    return noised, masked


def give_prefix(tokens, noised, masked, model_cfg: ModelConfig, cfg: TrainConfig, g):
    """prefix_given + apply_given: the first d steps of some samples clean, with no loss. All (B, A)."""
    given = prefix_given(tokens.shape[0], model_cfg, cfg, g, tokens.device)
    return apply_given(tokens, noised, masked, given, model_cfg.mask_id)


@torch.no_grad()
def teacher_chunks(teacher, batch: dict, dcfg, known: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher's own decode of every sample in the batch, as at inference (its cached prefix, its decoder and
    passes; `known` (B, A) ids or -1 inpainted): the few-step student's targets (B, A)."""
    from vla.decoding import decode

    cache = teacher.encode_prefix(batch["images"], batch["text_ids"], batch["text_valid"], batch["state"])
    tokens, _ = decode(teacher, cache, dcfg, known=known)
    return tokens


def mask_fewstep(tokens: torch.Tensor, mask_id: int, full_prob: float, eps: float, g):
    """The few-step student's inputs: each sample fully masked with prob `full_prob` (the one-pass case), else masked
    uniformly at a random ratio (the states a later pass starts from). tokens (B, A) -> (noised, masked)."""
    noised, masked = mask_uniform(tokens, mask_id, eps, g)
    full = (torch.rand(tokens.shape[0], generator=g) < full_prob).to(tokens.device)  # (B,)
    masked = masked | full[:, None]
    return tokens.masked_fill(masked, mask_id), masked


def masked_ce(logits: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """logits (B, A, V), target (B, A), masked (B, A) bool -> mean CE over masked positions."""
    if not bool(masked.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[masked].float(), target[masked])


def masked_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, masked: torch.Tensor, T: float = 1.0):
    """KL(teacher || student) per masked position, averaged. Zero when the two distributions agree."""
    if not bool(masked.any()):
        return student_logits.sum() * 0.0
    t = F.log_softmax(teacher_logits[masked].float() / T, dim=-1)
    s = F.log_softmax(student_logits[masked].float() / T, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * (T * T)


class AuxHead(nn.Module):
    """Vision-token hidden states (B, n_vis, d) -> targets (B, out). Exists only while training with `aux`."""

    def __init__(self, n_vis: int, d: int, out: int, width: int = 64):
        super().__init__()
        self.proj = nn.Linear(d, width)
        self.mlp = nn.Sequential(nn.Linear(n_vis * width, 256), nn.GELU(), nn.Linear(256, out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(F.gelu(self.proj(h)).flatten(1))


class AttnPoolAuxHead(nn.Module):
    """Vision-token hidden states (B, n_vis, d) -> targets (B, 3 * n_query), one learned query per 3-D target.

    Each query attends over the vision tokens and reads its target from the pooled value, so the head can only
    succeed by finding the object's token, which works for layouts it has not seen; the flattening MLP head
    (AuxHead) can fit each training layout on its own and memorise.
    """

    def __init__(self, n_vis: int, d: int, out: int, width: int = 64):
        super().__init__()
        if out % 3:
            raise ValueError(f"aux head: expected 3-D targets (out divisible by 3), got out={out}")
        self.query = nn.Parameter(torch.randn(out // 3, width) * 0.02)  # (Q, w)
        self.key = nn.Linear(d, width)
        self.value = nn.Linear(d, width)
        self.out = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 3))
        self.scale = width ** -0.5

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        att = torch.einsum("qw,bnw->bqn", self.query, self.key(h)).mul(self.scale).softmax(-1)  # (B, Q, n_vis)
        pooled = torch.einsum("bqn,bnw->bqw", att, self.value(h))  # (B, Q, w)
        return self.out(pooled).flatten(1)  # (B, 3Q)


def make_aux_head(kind: str, n_vis: int, d: int, out: int) -> nn.Module:
    """kind: "mlp" (AuxHead) | "attn" (AttnPoolAuxHead)."""
    if kind == "mlp":
        return AuxHead(n_vis, d, out)
    if kind == "attn":
        return AttnPoolAuxHead(n_vis, d, out)
    raise ValueError(f"aux.head: expected 'mlp' or 'attn', got {kind!r}")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where `valid` (same shape, bool or 0/1) is set; 0 if none are."""
    valid = valid.float()
    return ((pred - target) ** 2 * valid).sum() / valid.sum().clamp(min=1.0)


def target_columns(n_objects: int) -> list[int]:
    """Columns of the flattened object positions (B, 9) = 3 rows of (x, y, z) holding the first n rows' x, y."""
    return [3 * i + j for i in range(n_objects) for j in (0, 1)]


def aux_loss(head: nn.Module, vis_hidden: torch.Tensor, batch: dict, kind: str, eef_stats: dict | None = None):
    pred = head(vis_hidden)
    if kind == "spatial":
        return masked_mse(pred, batch["object_pos"], batch["object_valid"])
    target = batch["eef_future"]  # (B, 3) metres; centre/scale with dataset stats
    dev = target.device
    mean = torch.tensor(eef_stats["mean"][:3], device=dev) if eef_stats else 0.0
    std = torch.tensor(eef_stats["std"][:3], device=dev) + 1e-3 if eef_stats else 1.0
    return F.mse_loss(pred, (target - mean) / std)
