"""The one training loop: masked-diffusion finetuning, diffusion forcing, distillation, auxiliary objectives and
capability-vector regularisation are all options of it (vla/objectives.py, vla/capvector.py).

    vla train --config configs/train/<name>.yaml [--resume] [key=value overrides]
    torchrun --nproc_per_node 2 -m vla.cli train --config ...      (DDP: gloo on CPU, nccl on GPU)

Checkpoints: <out_dir>/checkpoints/step_<N>/ hold a loadable policy (vla.Policy.from_pretrained) plus
train_state.json, optimizer.safetensors and rng_rank<r>.safetensors, so `--resume` continues exactly
(optimizer, scheduler, every RNG, step). <out_dir>/policy is the final policy; metrics.csv and loss.png beside it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from vla.config import ModelConfig, TrainConfig, from_dict, model_fields, preset_model_config, to_dict
from vla.data import DemoBatches, load_training_data
from vla.model import DVLA, count_parameters
from vla.normalization import StateNormalizer
from vla.objectives import (
    apply_given, aux_loss, make_aux_head, mask_fewstep, masked_ce, masked_kl, masked_mse, noise, prefix_given,
    target_columns, teacher_chunks,
)
from vla.atomic import write_atomic, write_json_atomic
from vla.jsonio import jsonable
from vla.policy import Policy, check_n_action_steps
from vla.sizing import data_dims, fit_model_to_data
from vla.tokenizers import ActionTokenizer, ByteTokenizer, HFTokenizer, WordTokenizer, instruction_vocabulary


# --------------------------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------------------------
def _dist_setup() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available()
              else torch.device("cpu"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# --------------------------------------------------------------------------------------------------------------
# building the policy pieces
# --------------------------------------------------------------------------------------------------------------
def resolve_model_config(cfg: TrainConfig, dims: dict) -> ModelConfig:
    """The run's model config, resolved once, before the data loads (its cameras and image size choose the frames).
    dims: the data's (vla.sizing.data_dims). Each step overrides the one before:

      1. the preset (cfg.model's "preset"); with cfg.init, the init checkpoint's model config instead (its
         backbone_path dropped: the weights come from the checkpoint);
      2. the model fields cfg.model sets: the recipe's (over the recipes it extends), then `--set model.<field>` and
         a subcommand's own (`vla distill`: block-causal attention), merged in that order by load_train_config;
      3. without init, or with init_refit: the data's cameras, state and action sizes and a block_size that fits
         them, for the fields step 2 does not set (one it sets that disagrees with the data is an error);
      4. without init: model.backbone_path's sizes (its Hugging Face config).
    """
    fields = model_fields(cfg.model)
    if cfg.init:
        from vla.policy import read_checkpoint_files

        config, _, _ = read_checkpoint_files(cfg.init)
        base = from_dict(ModelConfig, config["model"], where=f"{cfg.init}: model.")
        mcfg = replace(base, backbone_path=None, **fields)
        if not cfg.init_refit:
            return mcfg
        return fit_model_to_data(mcfg, dims, cfg.data.paths[0], explicit=set(fields))
    mcfg = fit_model_to_data(preset_model_config(cfg.model), dims, cfg.data.paths[0], explicit=set(fields))
    if mcfg.backbone_path:
        from vla.model import config_from_hf

        mcfg = config_from_hf(mcfg, mcfg.backbone_path)
    return mcfg


class Components(NamedTuple):
    """What a run trains and saves: the model and its processors; init_report (a refit --init: what was
    re-initialised, grown and dropped) goes into the final checkpoint's config.json under "init"."""

    model: DVLA
    action_tokenizer: ActionTokenizer
    state_normalizer: StateNormalizer
    text_tokenizer: object
    init_report: dict | None = None


def build_components(cfg: TrainConfig, mcfg: ModelConfig, train_demos, stats) -> Components:
    """The model (config mcfg, from resolve_model_config) and its processors: new, fitted to the training data, or
    from `cfg.init` (its weights; with init_refit its processors refitted to the data)."""
    if cfg.init and cfg.init_refit:
        return _refit_from(cfg, train_demos, stats, mcfg)
    if cfg.init:
        base = Policy.from_pretrained(cfg.init)
        model = DVLA(mcfg, base.text_tokenizer.vocab_size, saved_backbone=_vlm_backbone(base))
        model.load_state_dict(base.model.state_dict())
        return Components(model, base.action_tokenizer, base.state_normalizer, base.text_tokenizer)
    if mcfg.text_encoder != "words":  # a pretrained instruction encoder reads its own tokenizer's ids
        from vla.text_encoder import encoder_tokenizer

        text_tok = encoder_tokenizer(mcfg)
    elif mcfg.text_tokenizer == "hf":
        if not mcfg.backbone_path:
            raise ValueError("text_tokenizer: 'hf' needs model.backbone_path (a local Hugging Face model dir)")
        text_tok = HFTokenizer(mcfg.backbone_path)
    elif mcfg.text_tokenizer == "byte":
        text_tok = ByteTokenizer()
    else:
        text_tok = WordTokenizer.fit([d.instruction for d in train_demos], instruction_vocabulary())
    model = DVLA(mcfg, text_tok.vocab_size)
    action_tok = ActionTokenizer.from_stats(stats["actions"], num_bins=mcfg.num_bins)
    state_norm = StateNormalizer.from_stats(stats["state"])
    return Components(model, action_tok, state_norm, text_tok)


def _refit_from(cfg: TrainConfig, train_demos, stats, mcfg: ModelConfig) -> Components:
    """Finetune `cfg.init` on new data: processors refitted to it (actions' q01/q99 bins, state normaliser), the word
    vocabulary grown by its new words (old ids kept), the model sized by it (mcfg, resolve_model_config). Weights
    load by name where the shapes agree; a grown text embedding keeps its old rows; the rest is re-initialised, and
    listed (Components.init_report, saved in the checkpoint's config.json under "init")."""
    base = Policy.from_pretrained(cfg.init)
    text_tok = base.text_tokenizer
    if isinstance(text_tok, WordTokenizer):
        text_tok = text_tok.grown([d.instruction for d in train_demos])
    action_tok = ActionTokenizer.from_stats(stats["actions"], num_bins=mcfg.num_bins)
    state_norm = StateNormalizer.from_stats(stats["state"])
    model = DVLA(mcfg, text_tok.vocab_size, saved_backbone=_vlm_backbone(base))
    old = base.model.state_dict()
    new = model.state_dict()
    reinit, grown = [], []
    for k, v in new.items():
        w = old.get(k)
        if w is None:
            reinit.append(k)
        elif w.shape == v.shape:
            new[k] = w
        elif k.endswith("embed_tokens.weight") and w.shape[1:] == v.shape[1:] and w.shape[0] < v.shape[0]:
            new[k] = torch.cat([w, v[w.shape[0]:]])  # old words keep their rows; new words start fresh
            grown.append(k)
        else:
            reinit.append(k)
    model.load_state_dict(new, strict=True)
    dropped = sorted(k for k in old if k not in new)
    modules = sorted({k.rsplit(".", 1)[0] for k in reinit})
    report = {"from": cfg.init, "refit": ["action_tokenizer", "state_normalizer"]
              + (["text_vocabulary"] if text_tok is not base.text_tokenizer else []),
              "reinitialized": modules, "grown": grown, "dropped": dropped,
              "new_words": [w for w in getattr(text_tok, "vocab", []) if w not in getattr(
                  base.text_tokenizer, "index", {})]}
    print(f"[vla train] --init {cfg.init}: processors refitted to the data; re-initialised modules: "
          f"{', '.join(modules) or 'none'}; grown: {', '.join(grown) or 'none'}; dropped: "
          f"{', '.join(dropped[:8]) or 'none'}{' ...' if len(dropped) > 8 else ''}", flush=True)
    return Components(model, action_tok, state_norm, text_tok, report)


def _vlm_backbone(base: Policy) -> dict | None:
    """A vision-language base's saved config (its backbone is rebuilt from it, not from preset sizes)."""
    return base.model.saved_backbone_config() if base.model.vlm_config is not None else None


def _param_groups(modules: list[torch.nn.Module], weight_decay: float):
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "embed" in name or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig):
    warmup, floor = cfg.optim.warmup_steps, cfg.optim.min_lr_ratio

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        prog = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog))

    return f


# --------------------------------------------------------------------------------------------------------------
# optimizer state <-> safetensors (no pickle)
# --------------------------------------------------------------------------------------------------------------
def optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        self.rank, self.world, self.device = _dist_setup()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        dims = data_dims(cfg.data)  # the first file's cameras, sizes and feature map, read once
        self.mcfg: ModelConfig = resolve_model_config(cfg, dims)
        self.action_space = dims["features"].action_space_record(self.mcfg.action_dim)
        train, valid, stats = load_training_data(cfg.data, self.mcfg, progress=progress and self.rank == 0)
        parts = build_components(cfg, self.mcfg, train, stats)
        self.action_tok, self.state_norm, self.text_tok = parts.action_tokenizer, parts.state_normalizer, \
            parts.text_tokenizer
        self.init_report = parts.init_report
        self.model = parts.model.to(self.device)
        if cfg.n_action_steps is not None:  # before any step, not when the first checkpoint builds the Policy
            check_n_action_steps(cfg.n_action_steps, self.mcfg.chunk_size)
        self.train_data = DemoBatches(train, self.mcfg, self.action_tok, self.state_norm, self.text_tok)
        # the data's statistics, saved with the policy: the files' and the object positions' normalisation
        self.stats = {**stats, "object_pos_norm": self.train_data.object_stats}
        self.valid_data = (
            DemoBatches(valid, self.mcfg, self.action_tok, self.state_norm, self.text_tok, self.train_data.object_stats)
            if valid else None
        )
        self.tasks = sorted(set(self.train_data.tasks))
        if cfg.data.task_sampling == "weighted":
            self.train_data.task_probs(cfg.data.task_weights)  # a task without a weight fails here, not mid-run
        # objective pieces
        self.teacher = None
        if cfg.objective in ("distill", "fewstep"):
            teacher = Policy.from_pretrained(cfg.distill.teacher or cfg.init)
            self.teacher = teacher.model.to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            # fewstep: the teacher decodes as it is served, greedily, with distill.teacher_steps passes if given
            self.teacher_decode = replace(teacher.decode_cfg, temperature=0.0,
                                          steps=cfg.distill.teacher_steps or teacher.decode_cfg.steps)
        self.aux_head = None
        if cfg.aux.kind:
            if not 1 <= cfg.aux.layer <= self.mcfg.num_layers:
                raise ValueError(f"aux.layer: expected 1..{self.mcfg.num_layers} (the model's layers), "
                                 f"got {cfg.aux.layer}")
            out = 9 if cfg.aux.kind == "spatial" else 3
            self.aux_head = make_aux_head(cfg.aux.head, self.mcfg.n_vision_tokens, self.mcfg.hidden_size,
                                          out).to(self.device)
        self.orth = None
        if cfg.orth.capvector:
            from vla.capvector import OrthogonalPenalty, load_vector

            gamma, _ = load_vector(cfg.orth.capvector)
            self.orth = OrthogonalPenalty(self.model, gamma, form=cfg.orth.form)
        # full finetune: train_step adds the penalty's gradient in closed form after backward (same value and
        # gradient as through autograd, cheaper); LoRA: through autograd in compute_loss
        self._orth_direct = self.orth is not None and cfg.lora.rank == 0
        if cfg.lora.rank > 0:
            from vla.lora import apply_lora

            apply_lora(self.model, cfg.lora.rank, cfg.lora.alpha)
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True)
        mods = [self.model] + ([self.aux_head] if self.aux_head is not None else [])
        self.opt = torch.optim.AdamW(_param_groups(mods, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                     betas=tuple(cfg.optim.betas))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)
        self.step = 0
        self.train_seconds = 0.0  # wall time spent in train() across resumes
        self._t_start: float | None = None
        self.ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
        if self.rank == 0:
            os.makedirs(self.ckpt_dir, exist_ok=True)
        if resume:
            self._load_latest()

    # ----- one step -----
    def compute_loss(self, batch: dict, gen: torch.Generator | None, train: bool = True) -> tuple[torch.Tensor, dict]:
        cfg, mcfg = self.cfg, self.mcfg
        target = batch["action_tokens"]
        if cfg.objective == "fewstep":
            noised, masked, chunk = self._fewstep_inputs(batch, gen)
        else:
            noised, masked = noise(target, mcfg, cfg, gen)
        model = self.ddp_model if train else self.model
        capture = cfg.aux.layer if (self.aux_head is not None and train) else None
        logits, out = model(batch["images"], batch["text_ids"], batch["text_valid"], batch["state"], noised,
                            capture_layer=capture)
        metrics = {}
        ce = masked_ce(logits, target, masked)
        metrics["ce"] = float(ce.detach())
        if cfg.objective == "fewstep":
            # CE against the teacher's decoded chunk (the ground-truth CE only as an optional extra)
            fs = masked_ce(logits, chunk, masked)
            metrics["fewstep_ce"] = float(fs.detach())
            metrics["agree_teacher"] = float((logits.argmax(-1) == chunk)[masked].float().mean())
            loss = fs + cfg.distill.ce_weight * ce
        elif cfg.objective == "distill" and train:
            with torch.no_grad():
                t_logits, _ = self.teacher(batch["images"], batch["text_ids"], batch["text_valid"], batch["state"],
                                           noised, mode="bidirectional")
            kl = masked_kl(t_logits, logits, masked, cfg.distill.temperature)
            metrics["kl"] = float(kl.detach())
            loss = kl + cfg.distill.ce_weight * ce
        else:
            loss = ce
        if mcfg.vision_target and cfg.target_weight > 0:
            # (B, 2n): x, y of the first n object rows (row 0 the named object; n = model.target_objects)
            xy = target_columns(mcfg.target_objects)
            tl = masked_mse(out.target, batch["object_pos"][:, xy], batch["object_valid"][:, xy])
            metrics["target"] = float(tl.detach())
            loss = loss + cfg.target_weight * tl
        if capture is not None:
            a = aux_loss(self.aux_head, out.vision_hidden, batch, cfg.aux.kind, self.stats["state"])
            metrics["aux"] = float(a.detach())
            loss = loss + cfg.aux.weight * a
        if self.orth is not None and train and cfg.orth.weight > 0 and not self._orth_direct:
            o = self.orth(self.model)  # LoRA: the penalty on the A matrices, through autograd
            metrics["orth"] = float(o.detach())
            loss = loss + cfg.orth.weight * o
        metrics["loss"] = float(loss.detach())
        return loss, metrics

    def _fewstep_inputs(self, batch: dict, gen: torch.Generator | None):
        """The fewstep objective's student input (B, A), its loss positions (B, A) and the teacher's decoded chunk
        (B, A): with prefix conditioning the teacher inpaints the given ground-truth steps, and they stay given."""
        cfg, mcfg = self.cfg, self.mcfg
        target = batch["action_tokens"]  # (B, A)
        given = prefix_given(target.shape[0], mcfg, cfg, gen, target.device) if cfg.prefix.prob > 0 else None
        known = torch.where(given, target, -1) if given is not None else None
        chunk = teacher_chunks(self.teacher, batch, self.teacher_decode, known)  # (B, A)
        noised, masked = mask_fewstep(chunk, mcfg.mask_id, cfg.distill.full_mask_prob, cfg.eps, gen)
        if given is not None:
            noised, masked = apply_given(chunk, noised, masked, given, mcfg.mask_id)
        return noised, masked, chunk

    def _batch(self, data: DemoBatches, gen: torch.Generator, augment: bool) -> dict:
        idx = data.sample(self.cfg.batch_size, gen, self.cfg.data.task_sampling if augment else "frames",
                          self.cfg.data.task_weights)
        b = data.batch(idx, self.cfg.data.augment_shift if augment else 0, gen, self.cfg.aux.future_steps,
                       self.cfg.data.augment_color if augment else 0.0)
        return {k: v.to(self.device) for k, v in b.items()}

    @torch.no_grad()
    def validate(self) -> float | None:
        if self.valid_data is None or self.cfg.val_batches <= 0:
            return None
        self.model.eval()
        g = torch.Generator().manual_seed(12345)
        losses = [float(self.compute_loss(self._batch(self.valid_data, g, False), g, train=False)[1]["ce"])
                  for _ in range(self.cfg.val_batches)]
        self.model.train()
        return float(np.mean(losses))

    def train(self, stop_after: int | None = None) -> str:
        """Run to cfg.steps (or pause at step `stop_after`: checkpoint written, no final policy)."""
        cfg = self.cfg
        self.model.train()
        if self.rank == 0:
            os.makedirs(cfg.out_dir, exist_ok=True)
            write_json_atomic(os.path.join(cfg.out_dir, "train_config.json"), to_dict(cfg))
            n_params = count_parameters(self.model)
            print(f"[vla train] {n_params / 1e6:.2f}M parameters, {len(self.train_data)} train samples over "
                  f"{len(self.tasks)} task(s) {self.tasks}, world size {self.world}, device {self.device}", flush=True)
        logger = MetricsLogger(cfg.out_dir, enabled=self.rank == 0, resume_step=self.step if self.resume else None)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not self.progress or self.rank != 0,
                   dynamic_ncols=True)
        t_last, n_last = time.time(), 0
        t_start = time.time()
        self._t_start = t_start
        interrupted = False
        try:
            while self.step < cfg.steps and (stop_after is None or self.step < stop_after):
                agg, gnorm = self.train_step()
                n_last += cfg.batch_size * cfg.grad_accum * self.world
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.time() - t_last
                    row = {"step": self.step, "lr": self.sched.get_last_lr()[0], "grad_norm": float(gnorm),
                           "samples_per_s": n_last / max(dt, 1e-9), **agg}
                    if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                        row["val_ce"] = self.validate()
                    logger.log(row)
                    bar.set_postfix(loss=f"{agg['loss']:.3f}", sps=f"{row['samples_per_s']:.0f}")
                    t_last, n_last = time.time(), 0
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            interrupted = True
            if self.rank == 0:
                print(f"\n[vla train] interrupted at step {self.step}; saving a checkpoint to resume from", flush=True)
        bar.close()
        self.save_checkpoint()
        final = os.path.join(cfg.out_dir, "policy")
        paused = self.step < cfg.steps
        if self.rank == 0 and not interrupted and not paused:
            self.train_seconds += time.time() - t_start
            write_json_atomic(os.path.join(cfg.out_dir, "train_summary.json"), {
                "steps": self.step, "train_seconds": round(self.train_seconds, 1),
                "samples_seen": self.step * cfg.batch_size * cfg.grad_accum * self.world,
                "samples_per_s": (self.step * cfg.batch_size * cfg.grad_accum * self.world
                                  / max(self.train_seconds, 1e-9)),
                "threads": torch.get_num_threads(), "world": self.world, "tasks": self.tasks,
                "train_samples": len(self.train_data), "parameters": count_parameters(self.model)})
            extra = {"train": to_dict(cfg), "tasks": self.tasks}
            if self.init_report:
                extra["init"] = self.init_report
            self.policy().save_pretrained(final + ".tmp", extra=extra)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(final + ".tmp", final)
            logger.plot()
        logger.close()
        _barrier(self.world)
        if interrupted:
            raise KeyboardInterrupt
        return final

    def train_step(self) -> tuple[dict[str, float], torch.Tensor]:
        """One optimizer step (grad_accum micro-batches). Returns the step's mean metrics and the gradient norm."""
        cfg = self.cfg
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else _null()
        self.opt.zero_grad(set_to_none=True)
        agg: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = self._batch(self.train_data, self.gen, augment=True)
            sync = micro == cfg.grad_accum - 1 or self.world == 1
            ctx = self.ddp_model.no_sync() if (self.world > 1 and not sync) else _null()
            with ctx, autocast:
                loss, m = self.compute_loss(batch, self.gen)
                (loss / cfg.grad_accum).backward()
            for k, v in m.items():
                agg[k] = agg.get(k, 0.0) + v / cfg.grad_accum
        if self._orth_direct and cfg.orth.weight > 0:
            o = self.orth.add_grad_(self.model, cfg.orth.weight)
            if o is not None:
                agg["orth"] = o
                agg["loss"] = agg["loss"] + cfg.orth.weight * o
        params = [p for g in self.opt.param_groups for p in g["params"]]
        clip = cfg.optim.grad_clip
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else torch.tensor(0.0)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return agg, gnorm

    # ----- checkpoints -----
    def policy(self) -> Policy:
        model = self.model
        if self.cfg.lora.rank > 0:
            from vla.lora import merged_copy

            model = merged_copy(self.model)
        return Policy(model, self.action_tok, self.state_norm, self.text_tok, decode_cfg=self.cfg.decode,
                      n_action_steps=self.cfg.n_action_steps, stats=self.stats, action_space=self.action_space)

    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        d = os.path.join(self.ckpt_dir, f"step_{self.step:06d}")
        if self.rank == 0:
            tmp = d + ".tmp"
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)
            self.policy().save_pretrained(tmp, extra={"train": to_dict(self.cfg), "tasks": self.tasks})
            tensors, meta = optimizer_to_files(self.opt)
            save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
            state = {"step": self.step, "scheduler": self.sched.state_dict(), "optimizer": meta, "world": self.world,
                     "train_seconds": self.train_seconds + (time.time() - self._t_start if self._t_start else 0.0)}
            write_json_atomic(os.path.join(tmp, "train_state.json"), jsonable(state))
            if self.aux_head is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.aux_head.state_dict().items()},
                          os.path.join(tmp, "aux_head.safetensors"))
        _barrier(self.world)
        # every rank writes its own RNG state
        rng = {"generator": self.gen.get_state(), "torch": torch.get_rng_state()}
        save_file(rng, os.path.join(d + ".tmp", f"rng_rank{self.rank}.safetensors"))
        _barrier(self.world)
        if self.rank == 0:
            if os.path.isdir(d):
                shutil.rmtree(d)
            os.replace(d + ".tmp", d)
            write_atomic(os.path.join(self.ckpt_dir, "LATEST"), lambda p: open(p, "w").write(os.path.basename(d)))
            kept = sorted(x for x in os.listdir(self.ckpt_dir) if x.startswith("step_") and not x.endswith(".tmp"))
            for old in kept[: -self.cfg.keep_last] if self.cfg.keep_last > 0 else []:
                shutil.rmtree(os.path.join(self.ckpt_dir, old), ignore_errors=True)
        _barrier(self.world)

    def _load_latest(self) -> None:
        from safetensors.torch import load_file

        latest = os.path.join(self.ckpt_dir, "LATEST")
        if not os.path.exists(latest):
            if self.rank == 0:
                print("[vla train] --resume: no checkpoint yet, starting from scratch", flush=True)
            return
        d = os.path.join(self.ckpt_dir, open(latest).read().strip())
        state = json.load(open(os.path.join(d, "train_state.json")))
        if state.get("world", 1) != self.world:
            raise ValueError(f"{d}: written by {state.get('world')} processes; resume with the same number")
        weights = load_file(os.path.join(d, "model.safetensors"))
        self.model.load_state_dict(weights)
        optimizer_from_files(self.opt, load_file(os.path.join(d, "optimizer.safetensors")), state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.aux_head is not None and os.path.exists(os.path.join(d, "aux_head.safetensors")):
            self.aux_head.load_state_dict(load_file(os.path.join(d, "aux_head.safetensors")))
        rng = load_file(os.path.join(d, f"rng_rank{self.rank}.safetensors"))
        self.gen.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if self.rank == 0:
            print(f"[vla train] resumed from {d} at step {self.step}", flush=True)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class MetricsLogger:
    """metrics.csv (always), TensorBoard (if installed), loss.png on plot()."""

    def __init__(self, out_dir: str, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.csv")
        self.out_dir = out_dir
        self.rows: list[dict] = []
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                self.rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
        elif os.path.exists(self.path):
            os.remove(self.path)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
        except Exception:  # tensorboard not installed: CSV and PNG only
            self.tb = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append({k: ("" if v is None else v) for k, v in row.items()})
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]

        def w(p):
            with open(p, "w", newline="") as f:
                wr = csv.DictWriter(f, fieldnames=keys)
                wr.writeheader()
                wr.writerows(self.rows)

        write_atomic(self.path, w)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def plot(self) -> None:
        if not self.enabled or not self.rows:
            return
        plot_metrics(self.rows, os.path.join(self.out_dir, "loss.png"))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_metrics(rows: list[dict], out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return zip(*pts) if pts else ([], [])

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("ce", "--"), ("val_ce", "o-"), ("kl", ":"), ("aux", "-."), ("target", "-.")):
        xs, ys = series(key)
        xs, ys = list(xs), list(ys)
        if xs and (key != "ce" or any(r.get("kl") not in (None, "") for r in rows)):
            ax.plot(xs, ys, style, label=key, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> str:
    trainer = Trainer(cfg, resume=resume, progress=progress)
    return trainer.train(stop_after=stop_after)
