"""Capability vectors (CapVector, arXiv 2605.10903; docs/CAPVECTOR.md).

    extract   gamma = theta_aux - theta_sft over tensors both checkpoints hold with equal shapes (fp32), auxiliary
              heads excluded; metadata: base model config hash, per-tensor norms, sources.
    merge     theta_meta = theta_base + sum_i alpha_i * gamma_i; alpha a scalar or per parameter-name pattern
              (fnmatch globs, first match wins, "*" as default).
    penalty   L_orth = sum over tensors of cos^2(gamma, theta - theta_meta)  ("cosine", default)
                    or  sum over tensors of <gamma, theta - theta_meta>^2   ("inner")
              With LoRA only the A matrices are trainable: the update of W is B @ A, and the penalty compares
              gamma's row space with A's rows (see OrthogonalPenalty).
    inspect   per-layer norms, cosine with another vector, a PNG of where the vector lives.

Vectors are safetensors files; metadata is a JSON string under the "capvector" key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os

import torch

from vla.atomic import write_atomic
from vla.policy import Policy, read_checkpoint_files

AUX_PREFIXES = ("aux_head.", "aux.")


def config_hash(model_cfg: dict) -> str:
    """Hash of the architecture fields (not paths, not attention mode: a block-causal student shares weights)."""
    keep = {k: v for k, v in model_cfg.items() if k not in ("backbone_path", "attention", "dropout")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _load_weights(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    config, _, _ = read_checkpoint_files(path)
    return load_file(os.path.join(path, "model.safetensors")), config


def _base_of(config: dict) -> str | None:
    train = config.get("train") or {}
    return train.get("init")


def extract(aux_ckpt: str, sft_ckpt: str, out: str | None = None, require_same_base: bool = True) -> tuple[dict, dict]:
    """gamma = theta_aux - theta_sft. Refuses different architectures, and different bases when both are recorded."""
    wa, ca = _load_weights(aux_ckpt)
    ws, cs = _load_weights(sft_ckpt)
    ha, hs = config_hash(ca["model"]), config_hash(cs["model"])
    if ha != hs:
        diff = sorted(k for k in set(ca["model"]) | set(cs["model"]) if ca["model"].get(k) != cs["model"].get(k))
        raise ValueError(f"extract: {aux_ckpt} and {sft_ckpt} have different architectures (fields {diff})")
    ba, bs = _base_of(ca), _base_of(cs)
    if require_same_base and ba and bs and os.path.abspath(ba) != os.path.abspath(bs):
        raise ValueError(f"extract: the two finetunes start from different bases ({ba} vs {bs})")
    gamma, skipped = {}, []
    for name, t in wa.items():
        if name.startswith(AUX_PREFIXES) or name not in ws or ws[name].shape != t.shape:
            skipped.append(name)
            continue
        if not t.is_floating_point():
            continue
        gamma[name] = t.float() - ws[name].float()
    meta = {
        "base_config_hash": ha,
        "model": ca["model"],
        "aux": aux_ckpt,
        "sft": sft_ckpt,
        "base": ba,
        "skipped": skipped,
        "norms": {k: float(v.norm()) for k, v in gamma.items()},
        "total_norm": float(torch.sqrt(sum((v.double() ** 2).sum() for v in gamma.values()))),
    }
    if out:
        save_vector(gamma, meta, out)
    return gamma, meta


def save_vector(gamma: dict[str, torch.Tensor], meta: dict, path: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tensors = {k: v.contiguous() for k, v in gamma.items()}
    write_atomic(path, lambda p: save_file(tensors, p, metadata={"capvector": json.dumps(meta)}))


def load_vector(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: capability vector not found")
    with safe_open(path, framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("capvector", "{}"))
        gamma = {k: f.get_tensor(k) for k in f.keys()}
    return gamma, meta


def parse_alpha(spec: str | float | None) -> list[tuple[str, float]]:
    """"1.0" -> [("*", 1.0)]; "backbone.layers.*=0.5,*=1.0" -> patterns in order (first match wins)."""
    if spec is None:
        return [("*", 1.0)]
    if isinstance(spec, (int, float)):
        return [("*", float(spec))]
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            pat, val = part.rsplit("=", 1)
            out.append((pat.strip(), float(val)))
        else:
            out.append(("*", float(part)))
    return out


def alpha_for(name: str, rules: list[tuple[str, float]]) -> float:
    for pat, val in rules:
        if fnmatch.fnmatch(name, pat):
            return val
    return 0.0


def merge(base_ckpt: str, vectors: list[str], alphas: list[str | float] | None, out: str) -> dict:
    """theta_meta = theta_base + sum_i alpha_i * gamma_i, written as a full policy checkpoint at `out`."""

    base = Policy.from_pretrained(base_ckpt)
    _, bcfg = _load_weights(base_ckpt)
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    alphas = alphas or [1.0] * len(vectors)
    if len(alphas) not in (1, len(vectors)):
        raise ValueError(f"alpha: give one value or one per vector ({len(vectors)}), got {len(alphas)}")
    if len(alphas) == 1:
        alphas = alphas * len(vectors)
    report = {"base": base_ckpt, "vectors": []}
    for vec_path, a in zip(vectors, alphas):
        gamma, meta = load_vector(vec_path)
        if meta.get("base_config_hash") and meta["base_config_hash"] != config_hash(bcfg["model"]):
            raise ValueError(f"merge: {vec_path} was extracted from a different architecture than {base_ckpt}")
        rules = parse_alpha(a)
        applied = 0
        for name, g in gamma.items():
            if name not in state:
                raise ValueError(f"merge: {vec_path} holds {name!r}, which {base_ckpt} does not have")
            if state[name].shape != g.shape:
                raise ValueError(f"merge: {name!r} has shape {tuple(g.shape)} in {vec_path}, "
                                 f"{tuple(state[name].shape)} in the base")
            al = alpha_for(name, rules)
            if al != 0.0:
                state[name] = (state[name].float() + al * g.float()).to(state[name].dtype)
                applied += 1
        report["vectors"].append({"path": vec_path, "alpha": str(a), "tensors": applied})
    base.model.load_state_dict(state)
    extra = {"capvector_merge": report, "train": {"init": base_ckpt}}
    base.save_pretrained(out, extra=extra)
    return report


# --------------------------------------------------------------------------------------------------------------
class OrthogonalPenalty:
    """L_orth over the parameters gamma covers; theta_meta is the model's weights at construction time.

    cosine: sum_t cos^2(gamma_t, Delta_t), Delta_t = theta_t - theta_meta_t  (scale-free; zero for Delta = 0)
    inner:  sum_t <gamma_t, Delta_t>^2
    Cost per step: one dot product and one norm per covered tensor (no extra forward pass); the trainer adds the
    gradient in closed form (`add_grad_`), the autograd form (`__call__`) serves LoRA and the gradcheck.
    LoRA: a wrapped Linear's W is frozen and Delta W = (alpha/r) B A; the penalty uses the A matrices:
          sum over rows i of A of cos^2(A_i, P gamma) with P gamma the dominant right-singular direction of gamma.
    """

    def __init__(self, model: torch.nn.Module, gamma: dict[str, torch.Tensor], form: str = "cosine",
                 eps: float = 1e-12):
        if form not in ("cosine", "inner"):
            raise ValueError(f"form: expected 'cosine' or 'inner', got {form!r}")
        self.form, self.eps = form, eps
        params = dict(model.named_parameters())
        missing = [k for k in gamma if k not in params]
        if len(missing) == len(gamma):
            raise ValueError("capvector: no tensor of the vector matches a model parameter (different model?)")
        self.names = [k for k in gamma if k in params]
        for k in self.names:
            if tuple(gamma[k].shape) != tuple(params[k].shape):
                raise ValueError(f"capvector: {k!r} has shape {tuple(gamma[k].shape)}, "
                                 f"the model {tuple(params[k].shape)}")
        # in each parameter's own dtype and device (float64 modules give an exact gradcheck)
        self.gamma = {k: gamma[k].to(params[k].device, params[k].dtype) for k in self.names}
        self.g_norm2 = {k: (g * g).sum().detach() for k, g in self.gamma.items()}
        self.meta = {k: params[k].detach().clone() for k in self.names}

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        total = self.compute(dict(model.named_parameters()))
        if total is None:  # nothing trainable is covered (e.g. LoRA): the LoRA penalty applies instead
            return lora_orth_penalty(model, self.gamma, self.eps)
        return total

    @torch.no_grad()
    def add_grad_(self, model: torch.nn.Module, weight: float) -> float | None:
        """Adds weight * d(penalty)/d(theta) to the .grad of every covered trainable parameter, in closed form and
        without autograd, and returns the penalty. The same value and gradient as `weight * self(model)` through
        backward (tests/test_capvector.py), at a few passes over the covered weights instead of an autograd graph
        of ~6 nodes per tensor. None if nothing covered is trainable (LoRA: use the autograd path, `self(model)`).

        cosine: d/dDelta [dot^2 / (|Delta|^2 |g|^2 + eps)] = 2 dot / den * g - 2 dot^2 |g|^2 / den^2 * Delta
        inner:  d/dDelta [dot^2] = 2 dot * g
        """
        params = dict(model.named_parameters())
        names = [k for k in self.names if k in params and params[k].requires_grad]
        if not names:
            return None
        ps = [params[k] for k in names]
        gs = [self.gamma[k] for k in names]
        deltas = torch._foreach_sub(ps, [self.meta[k] for k in names])  # Delta_t = theta_t - theta_meta_t
        dots = torch.stack([torch.dot(d.reshape(-1), g.reshape(-1)) for d, g in zip(deltas, gs)])  # (T,)
        if self.form == "inner":
            terms = dots * dots
            coef_g, coef_d = 2 * dots, torch.zeros_like(dots)
        else:
            gg = torch.stack([self.g_norm2[k] for k in names])  # (T,)
            dd = torch.stack([torch.dot(d.reshape(-1), d.reshape(-1)) for d in deltas])  # (T,)
            den = dd * gg + self.eps
            terms = dots * dots / den
            coef_g, coef_d = 2 * dots / den, -2 * dots * dots * gg / (den * den)
        for p, d, g, a, b in zip(ps, deltas, gs, (weight * coef_g).tolist(), (weight * coef_d).tolist()):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(g, alpha=a)
            if b != 0.0:
                p.grad.add_(d, alpha=b)
        return float(terms.sum())

    def compute(self, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The penalty for named tensors (parameters or stand-ins); None if none of gamma's tensors is trainable."""
        total = None
        for k in self.names:
            p = params.get(k)
            if p is None or not p.requires_grad:
                continue
            delta = p - self.meta[k]
            dot = (delta * self.gamma[k]).sum()
            if self.form == "inner":
                term = dot * dot
            else:
                term = dot * dot / ((delta * delta).sum() * self.g_norm2[k] + self.eps)
            total = term if total is None else total + term
        return total


def lora_orth_penalty(model: torch.nn.Module, gamma: dict[str, torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """For each LoRA-wrapped Linear whose base weight gamma covers: sum_i cos^2(A_i, v), v = top right-singular
    vector of gamma (the input direction the capability uses)."""
    from vla.lora import LoRALinear

    terms = []
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALinear):
            key = f"{name}.base.weight" if f"{name}.base.weight" in gamma else f"{name}.weight"
            if key not in gamma:
                continue
            g = gamma[key]
            v = torch.linalg.svd(g, full_matrices=False).Vh[0]  # (in,)
            a = mod.lora_a  # (r, in)
            cos = (a @ v) / (a.norm(dim=1) * v.norm() + eps)
            terms.append((cos * cos).sum())
    if not terms:
        return torch.zeros((), requires_grad=True)
    return torch.stack(terms).sum()


# --------------------------------------------------------------------------------------------------------------
def inspect(path: str, other: str | None = None, png: str | None = None) -> dict:
    gamma, meta = load_vector(path)
    layers: dict[str, float] = {}
    for name, g in gamma.items():
        group = _group(name)
        layers[group] = layers.get(group, 0.0) + float((g.double() ** 2).sum())
    layers = {k: v**0.5 for k, v in layers.items()}
    report = {
        "path": path,
        "tensors": len(gamma),
        "parameters": int(sum(g.numel() for g in gamma.values())),
        "total_norm": float(sum(layers[k] ** 2 for k in layers) ** 0.5),
        "norm_by_group": layers,
        "base_config_hash": meta.get("base_config_hash"),
    }
    if other:
        g2, _ = load_vector(other)
        common = [k for k in gamma if k in g2 and g2[k].shape == gamma[k].shape]
        dot = sum(float((gamma[k].double() * g2[k].double()).sum()) for k in common)
        n1 = sum(float((gamma[k].double() ** 2).sum()) for k in common) ** 0.5
        n2 = sum(float((g2[k].double() ** 2).sum()) for k in common) ** 0.5
        report["cosine_with"] = {"path": other, "cosine": dot / (n1 * n2 + 1e-30), "common_tensors": len(common)}
    if png:
        _plot(layers, png, os.path.basename(path))
        report["png"] = png
    return report


def _group(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "backbone" and len(parts) > 2 and parts[1] == "layers":
        return f"layer {int(parts[2]):02d}"
    if parts[0] == "backbone":
        return "text embed" if "embed" in name else "backbone other"
    return {"vision": "vision", "camera_embed": "vision", "state_proj": "state", "action_embed": "action embed",
            "action_slot": "action embed", "head": "head"}.get(parts[0], parts[0])


def _plot(groups: dict[str, float], png: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(groups, key=lambda k: (not k.startswith(("vision", "state", "text")), k))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(names)), [groups[n] for n in names], color="#3a7bd5")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("||gamma|| (L2)")
    ax.set_title(f"where the capability vector lives: {title}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)) or ".", exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
