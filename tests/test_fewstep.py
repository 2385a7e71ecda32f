"""Few-step distillation (the fewstep objective, `vla distill --few-step`): the teacher's decoded chunks as targets,
the student's inputs, and a real toy run in which a one-pass student learns to decode what the teacher's K passes do."""

import json

import pytest
import torch
from demo_helpers import write_synthetic_demos

from vla.config import DataConfig, PrefixConfig, TrainConfig
from vla.decoding import decode
from vla.objectives import mask_fewstep, teacher_chunks
from vla.policy import Policy
from vla.train import Trainer, train

pytestmark = pytest.mark.slow  # training runs

SMALL = {"preset": "tiny", "num_layers": 1, "image_size": 32, "vision_channels": (8, 16, 32)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_demos(str(tmp_path_factory.mktemp("data") / "demos.hdf5"), n=6, T=10, seed=1,
                                 valid_every=100)


@pytest.fixture(scope="module")
def teacher(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = TrainConfig.build(model=SMALL, data=DataConfig(paths=(dataset,)), out_dir=str(out), steps=30, batch_size=8,
                            optim={"lr": 1e-3, "warmup_steps": 2}, log_every=10, val_every=0, save_every=0, seed=3,
                            threads=1)
    train(cfg, progress=False)
    return str(out / "policy")


def _fewstep_cfg(dataset, teacher, out, **kw):
    base = dict(model=SMALL, data=DataConfig(paths=(dataset,)), out_dir=str(out), objective="fewstep", init=teacher,
                distill={"teacher": teacher}, steps=2, batch_size=6, optim={"warmup_steps": 1}, log_every=1,
                val_every=0, save_every=0, seed=5, threads=1, decode={"decoder": "parallel", "steps": 1})
    base.update(kw)
    return TrainConfig.build(**base)


def test_teacher_chunks_are_what_the_teacher_decodes_one_sample_at_a_time(dataset, teacher, tmp_path):
    """Batched targets equal the served decode of each sample alone (the schedule is per row), with and without a
    given prefix, and given tokens stay the given ones."""
    tr = Trainer(_fewstep_cfg(dataset, teacher, tmp_path / "s"), progress=False)
    batch = tr._batch(tr.train_data, torch.Generator().manual_seed(0), augment=False)
    model, dcfg = tr.teacher, tr.teacher_decode
    assert dcfg.steps == Policy.from_pretrained(teacher).decode_cfg.steps and dcfg.temperature == 0.0
    B, A = batch["action_tokens"].shape
    known = torch.full((B, A), -1, dtype=torch.long)
    known[::2, :14] = batch["action_tokens"][::2, :14]  # every other sample: its first two steps given
    for kn in (None, known):
        chunks = teacher_chunks(model, batch, dcfg, kn)  # (B, A)
        for b in range(B):
            one = {k: v[b:b + 1] for k, v in batch.items()}
            cache = model.encode_prefix(one["images"], one["text_ids"], one["text_valid"], one["state"])
            alone, _ = decode(model, cache, dcfg, known=None if kn is None else kn[b:b + 1])
            assert torch.equal(chunks[b], alone[0]), b
        if kn is not None:
            assert torch.equal(chunks[::2, :14], batch["action_tokens"][::2, :14])


def test_fewstep_inputs_mask_the_teachers_chunk_and_keep_the_given_prefix(dataset, teacher, tmp_path):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (400, 56), generator=g)
    n, m = mask_fewstep(tokens, 256, 1.0, 1e-3, g)
    assert bool(m.all()) and bool((n == 256).all())
    n, m = mask_fewstep(tokens, 256, 0.5, 1e-3, g)
    full = m.all(dim=1).float().mean()
    assert 0.4 < float(full) < 0.65  # half fully masked, the rest at a random ratio (rarely all)
    assert torch.equal(n[~m], tokens[~m]) and bool((n[m] == 256).all())
    # every sample fully masked apart from its given steps: the leading clean tokens are exactly the given ones
    tr = Trainer(_fewstep_cfg(dataset, teacher, tmp_path / "s", prefix=PrefixConfig(prob=1.0, max_steps=3),
                              distill={"teacher": teacher, "full_mask_prob": 1.0}), progress=False)
    batch = tr._batch(tr.train_data, torch.Generator().manual_seed(1), augment=False)
    noised, masked, chunk = tr._fewstep_inputs(batch, torch.Generator().manual_seed(2))
    assert bool((noised[:, :7] != tr.mcfg.mask_id).any())  # prob 1: some samples got given steps
    for b in range(chunk.shape[0]):
        k = int((noised[b] != tr.mcfg.mask_id).sum())
        assert k % 7 == 0 and bool((noised[b, k:] == tr.mcfg.mask_id).all())  # whole steps, at the front
        # the given steps are the ground truth, inpainted by the teacher, with no loss on them
        assert torch.equal(chunk[b, :k], batch["action_tokens"][b, :k]) and not bool(masked[b, :k].any())
    assert bool(masked.any(dim=1).all())


def _agreement(policy_or_model, model_decode, batch, teacher_model, teacher_dcfg) -> float:
    ref = teacher_chunks(teacher_model, batch, teacher_dcfg)
    got = teacher_chunks(policy_or_model, batch, model_decode)
    return float((ref == got).float().mean())


def test_vla_distill_few_step_student_decodes_in_one_pass_what_the_teacher_does_in_eight(dataset, teacher, tmp_path):
    """The real run, through the CLI: the student keeps the teacher's attention, is saved with the parallel decoder
    at --passes passes, and its one-pass chunks agree with the teacher's eight-pass chunks more than the teacher's own
    one-pass chunks do (the student starts from the teacher's weights, so that is where it starts)."""
    from vla.cli import main

    out = tmp_path / "fewstep"
    rc = main(["distill", "--few-step", "--teacher", teacher, "--out", str(out), "--steps", "60", "--no-progress",
               "--set", "batch_size=8", "--set", "optim.lr=0.001", "--set", "val_every=0", "--set", "save_every=0",
               "--set", "threads=1", "--set", "optim.warmup_steps=2"])
    assert rc == 0
    cfg = json.load(open(out / "policy" / "config.json"))
    t_cfg = json.load(open(f"{teacher}/config.json"))
    assert cfg["model"]["attention"] == t_cfg["model"]["attention"] == "bidirectional"
    assert (cfg["decode"]["decoder"], cfg["decode"]["steps"]) == ("parallel", 1)
    assert cfg["train"]["objective"] == "fewstep"
    t_pol, s_pol = Policy.from_pretrained(teacher), Policy.from_pretrained(str(out / "policy"))
    tr = Trainer(_fewstep_cfg(dataset, teacher, tmp_path / "probe"), progress=False)
    g = torch.Generator().manual_seed(11)
    batch = tr._batch(tr.train_data, g, augment=False)
    one = t_pol.decode_cfg.__class__(decoder="parallel", steps=1)
    before = _agreement(t_pol.model, one, batch, t_pol.model, tr.teacher_decode)
    after = _agreement(s_pol.model, s_pol.decode_cfg, batch, t_pol.model, tr.teacher_decode)
    assert (1 - after) < 0.5 * (1 - before), (before, after)  # at least half the disagreement gone
    metrics = open(out / "metrics.csv").read()
    assert "fewstep_ce" in metrics and "agree_teacher" in metrics
