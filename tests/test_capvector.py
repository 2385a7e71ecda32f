"""Capability vectors: exact arithmetic, refusal of mismatched models, the orthogonal penalty and its gradient."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vla.capvector import OrthogonalPenalty, extract, inspect, load_vector, merge, parse_alpha
from vla.policy import Policy

pytestmark = pytest.mark.slow  # finetunes: `make test` runs them, `make test-fast` skips them

TINY = dict(num_layers=1, image_size=32, vision_channels=(8, 16, 32))


def _ckpt(path, seed, base=None, perturb=0.0, extra_tensors=None, **ov):
    p = Policy.untrained("tiny", seed=0, **{**TINY, **ov})
    if base is not None:
        p.model.load_state_dict(load_file(os.path.join(base, "model.safetensors")))
    if perturb:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for t in p.model.parameters():
                t.add_(torch.randn(t.shape, generator=g) * perturb)
    p.save_pretrained(path, extra={"train": {"init": base}} if base else None)
    if extra_tensors:
        w = load_file(os.path.join(path, "model.safetensors"))
        w.update(extra_tensors)
        save_file(w, os.path.join(path, "model.safetensors"))
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("cv")
    base = _ckpt(str(d / "base"), 0)
    sft = _ckpt(str(d / "sft"), 1, base=base, perturb=0.01)
    aux = _ckpt(str(d / "aux"), 2, base=base, perturb=0.01,
                extra_tensors={"aux_head.mlp.0.weight": torch.ones(4, 4)})
    return d, base, sft, aux


def test_extract_is_exact_and_excludes_aux_head(ckpts):
    d, base, sft, aux = ckpts
    gamma, meta = extract(aux, sft, out=str(d / "vec.safetensors"))
    wa, ws = load_file(f"{aux}/model.safetensors"), load_file(f"{sft}/model.safetensors")
    assert "aux_head.mlp.0.weight" not in gamma and "aux_head.mlp.0.weight" in meta["skipped"]
    for k, g in gamma.items():
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, wa[k].float() - ws[k].float(), atol=0, rtol=0)
    g2, meta2 = load_vector(str(d / "vec.safetensors"))
    assert g2.keys() == gamma.keys() and meta2["base_config_hash"] == meta["base_config_hash"]
    assert abs(meta2["norms"]["head.weight"] - float(gamma["head.weight"].norm())) < 1e-4


def test_merge_then_extract_against_base_gives_alpha_gamma(ckpts):
    d, base, sft, aux = ckpts
    gamma, _ = extract(aux, sft, out=str(d / "vec2.safetensors"))
    merge(base, [str(d / "vec2.safetensors")], [0.7], str(d / "meta"))
    back, _ = extract(str(d / "meta"), base)
    for k in gamma:
        torch.testing.assert_close(back[k], 0.7 * gamma[k], atol=1e-6, rtol=1e-5)
    # the merged checkpoint is a plain policy: no auxiliary head anywhere, loads and runs
    w = load_file(str(d / "meta" / "model.safetensors"))
    assert not any(k.startswith("aux") for k in w)
    p = Policy.from_pretrained(str(d / "meta"))
    obs = {"images": {c: np.zeros((32, 32, 3), np.uint8) for c in ("agentview", "wrist")},
           "state": np.zeros(9, np.float32), "instruction": "lift the cube"}
    assert p.predict_action_chunk(obs).shape == (8, 7)
    assert not any("aux" in n for n, _ in p.model.named_parameters())


def test_merge_per_pattern_alpha_and_several_vectors(ckpts):
    d, base, sft, aux = ckpts
    g, _ = extract(aux, sft, out=str(d / "v3.safetensors"))
    merge(base, [str(d / "v3.safetensors"), str(d / "v3.safetensors")], ["head.*=2.0,*=0", "1.0"], str(d / "m2"))
    back, _ = extract(str(d / "m2"), base)
    torch.testing.assert_close(back["head.weight"], 3.0 * g["head.weight"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(back["state_proj.0.weight"], 1.0 * g["state_proj.0.weight"], atol=1e-6, rtol=1e-5)
    assert parse_alpha("backbone.*=0.5,1.0") == [("backbone.*", 0.5), ("*", 1.0)]


def test_mismatched_models_refused(ckpts, tmp_path):
    d, base, sft, aux = ckpts
    other = _ckpt(str(tmp_path / "other"), 3, hidden_size=128, intermediate_size=256)
    with pytest.raises(ValueError, match="different architectures"):
        extract(other, sft)
    other_base = _ckpt(str(tmp_path / "base2"), 4, perturb=0.01)
    sft2 = _ckpt(str(tmp_path / "sft2"), 5, base=other_base, perturb=0.01)
    with pytest.raises(ValueError, match="different bases"):
        extract(aux, sft2)
    gamma, _ = extract(aux, sft, out=str(tmp_path / "v.safetensors"))
    with pytest.raises(ValueError, match="different architecture"):
        merge(other, [str(tmp_path / "v.safetensors")], None, str(tmp_path / "bad"))


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))


def test_orthogonal_penalty_zero_positive_and_gradcheck():
    torch.manual_seed(0)
    m = _Toy()
    gamma = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.randn(5, dtype=torch.float64)}
    pen = OrthogonalPenalty(m, gamma, form="cosine")
    assert float(pen(m).detach()) == 0.0  # no update yet
    with torch.no_grad():  # an update orthogonal to gamma, tensor by tensor
        for name, p in m.named_parameters():
            r = torch.randn_like(p)
            g = gamma[name]
            p.add_(r - (r * g).sum() / (g * g).sum() * g)
    assert abs(float(pen(m).detach())) < 1e-20
    with torch.no_grad():
        m.a.add_(0.3 * gamma["a"])
    assert float(pen(m).detach()) > 1e-3
    inner = OrthogonalPenalty(_Toy(), gamma, form="inner")
    t = _Toy()
    with torch.no_grad():
        t.a.copy_(inner.meta["a"] + 0.1 * gamma["a"])
        t.b.copy_(inner.meta["b"])
    expected = float((0.1 * (gamma["a"] * gamma["a"]).sum()) ** 2)
    assert abs(float(inner(t).detach()) - expected) < 1e-9

    # gradient of both forms against finite differences (autograd path), then the closed form against it
    for form in ("cosine", "inner"):
        base = _Toy()
        pen = OrthogonalPenalty(base, gamma, form=form)
        a = (pen.meta["a"] + 0.1 * torch.randn(3, 4, dtype=torch.float64)).requires_grad_()
        b = (pen.meta["b"] + 0.1 * torch.randn(5, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: pen.compute({"a": a, "b": b}), (a, b))
        with torch.no_grad():
            base.a.copy_(a), base.b.copy_(b)
        pen(base).backward()  # the module path gives the same gradient
        ga, gb = torch.autograd.grad(pen.compute({"a": a, "b": b}), (a, b))
        torch.testing.assert_close(base.a.grad, ga)
        torch.testing.assert_close(base.b.grad, gb)
        # the closed-form gradient the trainer adds after backward: same value, same gradient, added to .grad
        prior = torch.randn(3, 4, dtype=torch.float64)
        base.a.grad = prior.clone()
        base.b.grad = None
        value = pen.add_grad_(base, 0.7)
        assert abs(value - float(pen.compute({"a": a, "b": b}).detach())) < 1e-12
        torch.testing.assert_close(base.a.grad, prior + 0.7 * ga)
        torch.testing.assert_close(base.b.grad, 0.7 * gb)
        assert value > 1e-6  # a random update is not orthogonal: the check above compared non-zero gradients


def test_inspect_reports_and_plots(ckpts, tmp_path):
    d, base, sft, aux = ckpts
    extract(aux, sft, out=str(tmp_path / "v.safetensors"))
    extract(sft, aux, out=str(tmp_path / "neg.safetensors"))
    r = inspect(str(tmp_path / "v.safetensors"), other=str(tmp_path / "neg.safetensors"), png=str(tmp_path / "v.png"))
    assert abs(r["cosine_with"]["cosine"] + 1.0) < 1e-6  # gamma vs -gamma
    assert "layer 00" in r["norm_by_group"] and "vision" in r["norm_by_group"]
    assert os.path.getsize(tmp_path / "v.png") > 1000
    json.dumps(r)
