"""The discrete-diffusion VLA, top to bottom.

    images (B, n_cam, 3, S, S) ──conv stem per camera──► (B, n_cam*(g*g+1), d)  g = S / vision_stride, +1 keypoints
                               or a vision-language backbone's tower + connector (vla.vlm) ──► (B, n_cam*T, d)
    text ids (B, L)            ──backbone.embed_tokens──► (B, L, d)
                               or a frozen pretrained encoder's per-token states, projected (vla.text_encoder)
    state (B, state_dim)       ──MLP──────────────────► (B, 1, d)
    action ids (B, A)          ──embed + slot embed───► (B, A, d)          A = H * D, id num_bins = [MASK]
    [prefix (P) | actions (A)] ──transformers decoder layers, explicit 4D float mask + position ids──► (B, P+A, d)
    action hidden              ──norm (backbone) + linear──► logits (B, A, num_bins)

The prefix never attends to action tokens (vla.masks), so its KV is computed once per chunk (`encode_prefix`)
and every denoising pass runs only the action tokens it needs against that cache (`action_logits`).
With a vision-language backbone, `backbone` is its language model (the same layers, rotary table and norm that the
masks, the cache and vla.fast_layers use) and `vlm_vision` its vision tower and connector.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vla.config import ModelConfig
from vla.fast_layers import FastStack
from vla.fast_layers import supported as fast_supported
from vla.kv_cache import KVCache
from vla.masks import action_table, full_mask, query_mask


class Prefix(NamedTuple):
    """DVLA.embed_prefix's result: the prefix tokens and, with model.vision_target, the target head's prediction."""

    tokens: torch.Tensor  # (B, P, d)
    target: torch.Tensor | None  # (B, 2 * target_objects) normalised x, y per object; None without vision_target


class LossInputs(NamedTuple):
    """What DVLA.forward returns beside the logits for the training losses (returned, not kept on the module)."""

    vision_hidden: torch.Tensor | None  # (B, n_vis, d) the capture_layer's vision-token hidden states, if asked
    target: torch.Tensor | None  # (B, 2 * target_objects) the target head's prediction (vision_target)


def backbone_config(cfg: ModelConfig, vocab_size: int):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=max(512, cfg.prefix_len + cfg.n_action_tokens),
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_dropout=cfg.dropout,
        tie_word_embeddings=False,
        **({"bos_token_id": None, "eos_token_id": None} if vocab_size < 3 else {}),
    )
    if cfg.backbone == "qwen2":
        return Qwen2Config(**common)
    return LlamaConfig(**common)


def config_from_hf(cfg: ModelConfig, path: str) -> ModelConfig:
    """Take the backbone's sizes from a local Hugging Face model directory: a Llama / Qwen2 decoder, or a
    vision-language model (vla.vlm.VLM_TYPES), whose language model's sizes, image tokens per camera and tokenizer
    then take the place of the preset's."""
    from transformers import AutoConfig

    from vla.vlm import VLM_TYPES, tokens_per_image

    hf = AutoConfig.from_pretrained(path, local_files_only=True)
    kind = getattr(hf, "model_type", "")
    if kind not in ("llama", "qwen2") + VLM_TYPES:
        raise ValueError(f"backbone_path: {path} holds a {kind!r} model; expected a 'llama' or 'qwen2' decoder or a "
                         f"vision-language model ({', '.join(VLM_TYPES)})")
    vlm = {}
    if kind in VLM_TYPES:
        if cfg.text_encoder != "words":
            raise ValueError(f"text_encoder: {cfg.text_encoder!r} with a vision-language backbone ({kind}); its own "
                             f"embeddings read the instruction: expected 'words'")
        vlm = dict(vision_tokens_per_image=tokens_per_image(hf), vision_film=False, vision_target=False,
                   text_tokenizer="hf" if _has_tokenizer(path) else cfg.text_tokenizer)
        hf = hf.text_config
    n_layers = hf.num_hidden_layers if cfg.backbone_layers is None else min(cfg.backbone_layers, hf.num_hidden_layers)
    return dataclasses.replace(
        cfg,
        backbone=kind,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=n_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        rope_theta=float((getattr(hf, "rope_parameters", None) or {}).get("rope_theta", cfg.rope_theta)),
        **vlm,
    )


def _has_tokenizer(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, n)) for n in ("tokenizer.json", "tokenizer.model", "vocab.json"))


class ConvStem(nn.Module):
    """(B, 3, S, S) in [0, 1] -> (B, g*g [+1], d).

    Stride-2 conv stages (GroupNorm + GELU, a stride-1 conv in the second) on the image plus two coordinate
    channels; the last conv maps to d at stride `vision_stride` (grid tokens). With `vision_keypoints` K > 0, a
    spatial softmax over the stride-4 feature map gives K expected (x, y) keypoints (robomimic's localisation
    trick), projected to one extra token: cheap, and far more precise than a coarse grid for "where is the cube".
    With `vision_film`, each stage's features are scaled and shifted per channel by the pooled instruction
    (x * (1 + g) + b, g and b from a zero-initialised linear map, so training starts from the plain stem): the
    instruction picks what the stem highlights, so the keypoints and grid tokens can follow the named object.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n_down = cfg.vision_stride.bit_length() - 1
        if 2**n_down != cfg.vision_stride or n_down < 2:
            raise ValueError(f"vision_stride: expected a power of two >= 4, got {cfg.vision_stride}")
        chans = list(cfg.vision_channels)
        chans = (chans + [chans[-1]] * n_down)[: n_down - 1]
        c_in = 3 + (2 if cfg.vision_coords else 0)
        self.coords = cfg.vision_coords
        self.stages = nn.ModuleList()
        for i, c in enumerate(chans):
            layers = [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.GELU()]
            if i == 1:  # the keypoint map's stage gets a second conv
                layers += [nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(min(8, c), c), nn.GELU()]
            self.stages.append(nn.Sequential(*layers))
            c_in = c
        self.film_chans = chans if cfg.vision_film else []
        if cfg.vision_film:
            self.film = nn.Linear(cfg.hidden_size, 2 * sum(chans))
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.out = nn.Conv2d(c_in, cfg.hidden_size, 3, stride=2, padding=1)
        self.pos = nn.Parameter(torch.randn(cfg.grid * cfg.grid, cfg.hidden_size) * 0.02)
        self.n_kp = cfg.vision_keypoints
        if self.n_kp:
            self.kp_conv = nn.Conv2d(chans[1], self.n_kp, 1)
            self.kp_temp = nn.Parameter(torch.zeros(()))  # log temperature of the spatial softmax
            self.kp_proj = nn.Sequential(nn.Linear(2 * self.n_kp, cfg.hidden_size), nn.GELU(),
                                         nn.Linear(cfg.hidden_size, cfg.hidden_size))

    def forward(self, img: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """img (B, 3, S, S); text (B, d) the pooled instruction (needed with vision_film)."""
        x = (img - 0.5) / 0.5  # (B, 3, S, S)
        B, _, S, _ = x.shape
        if self.coords:
            lin = torch.linspace(-1, 1, S, device=x.device, dtype=x.dtype)
            yy, xx = torch.meshgrid(lin, lin, indexing="ij")
            x = torch.cat([x, xx.expand(B, 1, S, S), yy.expand(B, 1, S, S)], dim=1)  # (B, 5, S, S)
        film = None
        if self.film_chans:
            if text is None:
                raise ValueError("ConvStem: vision_film needs the pooled instruction (text)")
            film = self.film(text).split([c for c in self.film_chans for _ in (0, 1)], dim=-1)  # 2 per stage, (B, c)
        kp_feat = None
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if film is not None:
                x = x * (1 + film[2 * i][:, :, None, None]) + film[2 * i + 1][:, :, None, None]
            if i == 1:
                kp_feat = x  # (B, C, S/4, S/4)
        tokens = self.out(x).flatten(2).transpose(1, 2) + self.pos  # (B, g*g, d)
        if not self.n_kp:
            return tokens
        h = self.kp_conv(kp_feat)  # (B, K, H', W')
        Hf, Wf = h.shape[-2:]
        attn = torch.softmax(h.flatten(2) * torch.exp(-self.kp_temp), dim=-1)  # (B, K, H'W')
        ly = torch.linspace(-1, 1, Hf, device=h.device, dtype=h.dtype)
        lx = torch.linspace(-1, 1, Wf, device=h.device, dtype=h.dtype)
        gy, gx = torch.meshgrid(ly, lx, indexing="ij")
        kp = torch.stack([(attn * gx.flatten()).sum(-1), (attn * gy.flatten()).sum(-1)], dim=-1)  # (B, K, 2)
        return torch.cat([tokens, self.kp_proj(kp.flatten(1))[:, None]], dim=1)  # (B, g*g + 1, d)


class TargetHead(nn.Module):
    """The named objects' table positions from pixels and words: image (B, 3, S, S) + pooled instruction (B, d)
    -> (x, y) per object (B, 2 * target_objects), in the order of the demos' object rows (the first named object,
    then e.g. the base cube to put it on), normalised by the dataset's object statistics.

    Its own FiLM-ed conv stem (the locator), trained only by the trainer's `target_weight` loss. A stem shared with
    the policy's vision tokens is taught by the action loss to read the arm, which sits on the target in most
    frames but not on the first frame of a new layout; a stem trained for this alone localises the named cube there
    too (docs/EXPERIMENTS.md, PickColor). Not z: a cube's height barely varies until it is lifted, so a lifted cube
    is an extreme outlier in normalised units that would dominate the loss, and the gripper height is in the state.
    """

    def __init__(self, cfg: ModelConfig, width: int = 32):
        super().__init__()
        d = cfg.hidden_size
        self.stem = ConvStem(dataclasses.replace(cfg, vision_film=True))
        n_tokens = cfg.grid * cfg.grid + (1 if cfg.vision_keypoints else 0)
        self.proj = nn.Linear(d, width)
        self.mlp = nn.Sequential(nn.Linear(n_tokens * width + d, 256), nn.GELU(),
                                 nn.Linear(256, 2 * cfg.target_objects))

    def forward(self, img: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(img, text)  # (B, n, d)
        return self.mlp(torch.cat([F.gelu(self.proj(tokens)).flatten(1), text], dim=1))


def backbone_from_saved_config(saved: dict):
    """A checkpoint's backbone_config.json (the backbone's whole transformers config) -> the same backbone, random
    weights (the checkpoint's model.safetensors fills them): vocabulary size, biases, norm epsilon and all."""
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    kind = saved.get("model_type")
    if kind not in ("llama", "qwen2"):
        raise ValueError(f"backbone_config.json: model_type {kind!r}; expected 'llama' or 'qwen2'")
    bcfg = (Qwen2Config if kind == "qwen2" else LlamaConfig).from_dict(dict(saved))
    bcfg._attn_implementation = "sdpa"
    return (Qwen2Model if kind == "qwen2" else LlamaModel)(bcfg)


def _vlm_tokens(vlm_config) -> int:
    from vla.vlm import tokens_per_image

    return tokens_per_image(vlm_config)


def _check_hf_weights(path: str) -> None:
    names = os.listdir(path) if os.path.isdir(path) else []
    if not any(n.endswith((".safetensors", ".bin")) for n in names):
        raise ValueError(f"backbone_path: {path} has no weights (expected model.safetensors or pytorch_model.bin "
                         f"next to its config.json)" if os.path.isdir(path) else f"backbone_path: {path} not found")


class DVLA(nn.Module):
    def __init__(self, cfg: ModelConfig, text_vocab_size: int, saved_backbone: dict | None = None):
        """saved_backbone: a checkpoint's saved backbone config (Policy.from_pretrained); else the backbone comes
        from cfg.backbone_path (a local Hugging Face directory, its weights loaded) or from the preset's sizes."""
        super().__init__()
        from transformers import AutoModel, LlamaModel, Qwen2Model

        from vla.vlm import VLM_TYPES, load_vlm, model_type_of, processor_files

        self.cfg = cfg
        self.fast_inference = True  # vla.fast_layers for no-grad passes; False runs transformers' modules
        self.vlm_vision = None  # a vision-language backbone's vision tower + connector (vla.vlm.VisionTokens)
        self.vlm_config = None  # ... and its whole transformers config (saved as backbone_config.json)
        self.processor_files: dict[str, str] = {}  # ... and its processor's files (saved under processor/)
        if cfg.text_encoder != "words":  # the pretrained encoder reads the instruction: no word embeddings needed
            text_vocab_size = 1
        saved_kind = (saved_backbone or {}).get("model_type")
        if saved_kind in VLM_TYPES or (saved_backbone is None and cfg.backbone_path
                                       and model_type_of(cfg.backbone_path) in VLM_TYPES):
            if saved_backbone is None:
                _check_hf_weights(cfg.backbone_path)
                self.processor_files = processor_files(cfg.backbone_path)
            self.backbone, self.vlm_vision, self.vlm_config = load_vlm(
                None if saved_backbone is not None else cfg.backbone_path, saved=saved_backbone,
                layers=None if saved_backbone is not None else cfg.backbone_layers)
            if self.backbone.config.hidden_size != cfg.hidden_size or \
                    cfg.vision_tokens_per_image != _vlm_tokens(self.vlm_config):
                raise ValueError("backbone_path: the vision-language model's sizes differ from the model config; "
                                 "build it with config_from_hf")
        elif cfg.vision_tokens_per_image:
            raise ValueError(f"backbone: {cfg.backbone!r} (a vision-language model) is built from backbone_path or "
                             f"from a checkpoint's backbone_config.json; neither was given")
        elif saved_backbone is not None:
            self.backbone = backbone_from_saved_config(saved_backbone)
        elif cfg.backbone_path:
            _check_hf_weights(cfg.backbone_path)
            self.backbone = AutoModel.from_pretrained(cfg.backbone_path, local_files_only=True,
                                                      attn_implementation="sdpa")
            from vla.vlm import keep_layers

            keep_layers(self.backbone, self.backbone.config, cfg.backbone_layers)
            if self.backbone.config.hidden_size != cfg.hidden_size:
                raise ValueError("backbone_path: hidden_size differs from the model config; "
                                 "build it with config_from_hf")
        else:
            bcfg = backbone_config(cfg, text_vocab_size)
            bcfg._attn_implementation = "sdpa"
            self.backbone = (Qwen2Model if cfg.backbone == "qwen2" else LlamaModel)(bcfg)
        self._apply_finetune_mode()
        self.text_encoder = None
        if cfg.text_encoder == "minilm":
            from vla.text_encoder import PretrainedTextEncoder

            self.text_encoder = PretrainedTextEncoder(cfg, cfg.hidden_size)
        d = cfg.hidden_size
        self.vision = nn.ModuleList([] if self.vlm_vision is not None else [ConvStem(cfg) for _ in cfg.cameras])
        self.camera_embed = nn.Parameter(torch.randn(len(cfg.cameras), d) * 0.02)
        if cfg.vision_film or cfg.vision_target:  # pooled instruction -> the stems' FiLM and the target head
            # LayerNorm first: word embeddings start at std 0.02, too small an input for FiLM to learn the colour
            # before the locator settles on a colour-blind cue (the arm)
            self.text_pool = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU())
            if cfg.text_pool == "ordered":  # word + position through text_pool per word, then the mean
                self.text_pool_pos = nn.Parameter(torch.randn(cfg.max_text_len, d) * 0.02)
        if cfg.vision_target:
            self.target_head = TargetHead(cfg)
            self.target_embed = nn.Sequential(nn.Linear(2, d), nn.GELU(), nn.Linear(d, d))  # one token per object
            if cfg.target_objects > 1:  # which object a token holds
                self.target_slot = nn.Parameter(torch.randn(cfg.target_objects, d) * 0.02)
        self.state_proj = nn.Sequential(nn.Linear(cfg.state_dim, d), nn.GELU(), nn.Linear(d, d))
        self.action_embed = nn.Embedding(cfg.num_bins + 1, d)  # id num_bins = [MASK]
        self.action_slot = nn.Parameter(torch.randn(cfg.n_action_tokens, d) * 0.02)  # which (step, dim)
        self.head = nn.Linear(d, cfg.num_bins)
        nn.init.normal_(self.action_embed.weight, std=0.02)

    def _apply_finetune_mode(self) -> None:
        """A vision-language backbone: its vision tower frozen unless cfg.vision_frozen is false; the language model
        fully trained ("full"), through low-rank adapters ("lora", vla.lora) or frozen ("frozen")."""
        cfg = self.cfg
        if self.vlm_vision is not None and cfg.vision_frozen:
            for p in self.vlm_vision.tower.parameters():
                p.requires_grad_(False)
        if cfg.backbone_finetune == "frozen":
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        elif cfg.backbone_finetune == "lora":
            from vla.lora import wrap_linears

            wrap_linears(self.backbone, cfg.backbone_lora_rank, cfg.backbone_lora_alpha)
            for n, p in self.backbone.named_parameters():
                p.requires_grad_("lora_" in n)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vlm_vision is not None and self.cfg.vision_frozen:
            self.vlm_vision.tower.eval()  # frozen: no dropout
        return self

    def saved_backbone_config(self) -> dict:
        """What backbone_config.json holds: the backbone's whole transformers config (a VLM's, vision part too)."""
        return (self.vlm_config if self.vlm_config is not None else self.backbone.config).to_dict()

    def embed_text(self, text_ids: torch.Tensor, text_valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids -> (B, L, d): the pretrained encoder's projected per-token states, or the backbone's
        embeddings."""
        if self.text_encoder is not None:
            return self.text_encoder(text_ids, text_valid)
        return self.backbone.embed_tokens(text_ids)

    def embed_images(self, images: torch.Tensor, pooled: torch.Tensor | None = None) -> list[torch.Tensor]:
        """(B, n_cam, 3, S, S) -> n_cam x (B, T, d): conv stems, or the VLM's tower + connector (all cameras in one
        batch), each camera's tokens offset by its camera embedding."""
        if self.vlm_vision is None:
            stems = [stem(images[:, i], pooled) for i, stem in enumerate(self.vision)]
        else:
            B, n = images.shape[:2]
            tok = self.vlm_vision(images.flatten(0, 1))  # (B*n_cam, T, d)
            stems = list(tok.unflatten(0, (B, n)).unbind(1))
        return [t + self.camera_embed[i] for i, t in enumerate(stems)]

    # ----- embeddings -----
    def embed_prefix(self, images: torch.Tensor, text_ids: torch.Tensor, state: torch.Tensor,
                     text_valid: torch.Tensor | None = None) -> Prefix:
        """images (B, n_cam, 3, S, S) float [0,1]; text_ids (B, L); state (B, state_dim) normalized;
        text_valid (B, L) bool (pooling for vision_film / vision_target; all valid if None) -> Prefix: the tokens
        (B, P, d) and the target head's prediction.

        With vision_target the vision part ends with `target_objects` more tokens: the embedded x, y of each object
        the target head predicts from the first camera's image with its own stem (detached: the tokens carry the
        prediction, the head learns only from its own loss); the prediction itself is Prefix.target (B, 2n).
        """
        cfg = self.cfg
        txt = self.embed_text(text_ids, text_valid)  # (B, L, d)
        pooled = None
        if cfg.vision_film or cfg.vision_target:
            w = torch.ones_like(text_ids, dtype=txt.dtype) if text_valid is None else text_valid.to(txt.dtype)
            w = w[..., None] / w.sum(1, keepdim=True).clamp(min=1)[..., None]  # (B, L, 1) mean weights
            if cfg.text_pool == "ordered":
                pooled = (self.text_pool(txt + self.text_pool_pos[: txt.shape[1]]) * w).sum(1)  # (B, d)
            else:
                pooled = self.text_pool((txt * w).sum(1))  # (B, d)
        vis = self.embed_images(images, pooled if cfg.vision_film else None)  # n_cam x (B, g*g [+1] or T, d)
        target = None
        if cfg.vision_target:
            target = self.target_head(images[:, 0], pooled)  # (B, 2n) normalised x, y per object
            tok = self.target_embed(target.detach().unflatten(1, (cfg.target_objects, 2)))  # (B, n, d)
            vis.append(tok + self.target_slot if cfg.target_objects > 1 else tok)
        st = self.state_proj(state)[:, None]  # (B, 1, d)
        return Prefix(torch.cat(vis + [txt, st], dim=1), target)

    def embed_actions(self, tokens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """tokens (B, Q) ids, slots (Q,) positions within the chunk -> (B, Q, d)."""
        return self.action_embed(tokens) + self.action_slot[slots]

    # ----- the stack -----
    def run_layers(self, h, mask, position_ids, cache: KVCache | None = None, capture_layer: int | None = None,
                   fast: "FastStack | None" = None, pos_start: int | None = None):
        """h (B, Q, d), mask (B, 1, Q, K), position_ids (B, Q) -> (normed hidden (B, Q, d), captured hidden or None).

        Without autograd (decoding) this runs vla.fast_layers' lean path over the same weights: `fast` when the
        caller already refreshed it for this chunk (see fast_stack()), else looked up and refreshed here.
        pos_start: position_ids are pos_start .. pos_start + Q - 1 in every row (lets the lean path slice its
        rotary table instead of gathering it).
        """
        if fast is None and capture_layer is None:
            fast = self.fast_stack()
        if fast is not None and capture_layer is None:
            return fast.run(h, mask, position_ids, cache, pos_start=pos_start), None
        pos_emb = self.backbone.rotary_emb(h, position_ids=position_ids)
        captured = None
        for i, layer in enumerate(self.backbone.layers):
            h = layer(h, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=cache is not None,
                      position_embeddings=pos_emb)
            if capture_layer is not None and i + 1 == capture_layer:
                captured = h
        return self.backbone.norm(h), captured

    def fast_stack(self) -> "FastStack | None":
        """The lean inference path, refreshed against the current weights; None where it cannot run (autograd on,
        fast_inference off, a LoRA-wrapped or unsupported backbone)."""
        if not self.fast_inference or torch.is_grad_enabled():
            return None
        fast = self.__dict__.get("_fast")
        if fast is None:
            fast = self.__dict__["_fast"] = FastStack(self.backbone) if fast_supported(self.backbone) else False
        return fast if fast and fast.refresh() else None

    def prefix_valid(self, text_valid: torch.Tensor) -> torch.Tensor:
        """(B, L) bool -> (B, P) bool: vision and state tokens always valid, text padding not."""
        B = text_valid.shape[0]
        ones_v = torch.ones(B, self.cfg.n_vision_tokens, dtype=torch.bool, device=text_valid.device)
        ones_s = torch.ones(B, 1, dtype=torch.bool, device=text_valid.device)
        return torch.cat([ones_v, text_valid, ones_s], dim=1)

    def forward(self, images, text_ids, text_valid, state, action_tokens, mode: str | None = None,
                capture_layer: int | None = None):
        """Full forward (training). action_tokens (B, A) with [MASK] ids where noised -> (logits (B, A, num_bins),
        LossInputs: with capture_layer that layer's vision-token hidden states (B, n_vis, d), with vision_target the
        target head's prediction (B, 2n)).
        """
        cfg = self.cfg
        mode = mode or cfg.attention
        prefix, target = self.embed_prefix(images, text_ids, state, text_valid)  # (B, P, d), (B, 2n) or None
        slots = torch.arange(cfg.n_action_tokens, device=prefix.device)
        h = torch.cat([prefix, self.embed_actions(action_tokens, slots)], dim=1)  # (B, P+A, d)
        P = prefix.shape[1]
        mask = full_mask(self.prefix_valid(text_valid), cfg.n_action_tokens, cfg.block_size, mode, h.dtype)
        pos = torch.arange(P + cfg.n_action_tokens, device=h.device)[None].expand(h.shape[0], -1)
        out, captured = self.run_layers(h, mask, pos, capture_layer=capture_layer)
        logits = self.head(out[:, P:])  # (B, A, bins)
        vis = captured[:, : cfg.n_vision_tokens] if captured is not None else None
        return logits, LossInputs(vis, target)

    # ----- cached inference -----
    @torch.no_grad()
    def encode_prefix(self, images, text_ids, text_valid, state, capacity: int | None = None) -> KVCache:
        """Run the prefix once; its KV stays in the returned cache for every denoising pass of this chunk.

        The lean path's weights are checked against the model's here, once per chunk (cache.fast), not per pass.
        capacity: tokens the cache's buffers hold before growing (default prefix + 2 chunks: every decoder fits).
        """
        prefix = self.embed_prefix(images, text_ids, state, text_valid).tokens  # (B, P, d)
        B, P, _ = prefix.shape
        pv = self.prefix_valid(text_valid)
        cache = KVCache(prefix_valid=pv, n_layers=len(self.backbone.layers),
                        capacity=capacity or P + 2 * self.cfg.n_action_tokens)
        cache.fast = self.fast_stack()
        mask = full_mask(pv, 0, self.cfg.block_size, "bidirectional", prefix.dtype)  # (B, 1, P, P)
        pos = torch.arange(P, device=prefix.device)[None].expand(B, -1)
        self.run_layers(prefix, mask, pos, cache=cache, fast=cache.fast, pos_start=0)
        cache.commit(P)
        return cache

    @torch.no_grad()
    def action_logits(self, cache: KVCache, tokens: torch.Tensor, slots: torch.Tensor, mode: str | None = None,
                      commit: int = 0, span: tuple[int, int] | None = None) -> torch.Tensor:
        """One denoising pass for action `slots` (Q,) holding `tokens` (B, Q) against the cache.

        Keys: prefix + committed action slots + these Q slots. The KV of the first `commit` query tokens is
        appended to the cache afterwards (finished blocks, fed as clean tokens in this very pass).
        span: (lo, hi) when slots is exactly lo .. hi-1 (the decoders know it): with a cache holding slots
        0 .. lo-1 the mask is a slice of a per-chunk table and the rotary table is sliced, not gathered.
        Returns logits (B, Q, num_bins).
        """
        cfg = self.cfg
        mode = mode or cfg.attention
        h = self.embed_actions(tokens, slots)  # (B, Q, d)
        P = cache.prefix_len
        if span is not None and cache.slots_contiguous and span[0] == cache.n_slots:
            lo, hi = span
            table = cache.masks.get(mode)
            if table is None or table.dtype != h.dtype:
                table = cache.masks[mode] = action_table(cache.prefix_valid, cfg.n_action_tokens, cfg.block_size,
                                                         mode, h.dtype)  # (B, 1, A, P+A)
            mask = table[:, :, lo:hi, :P + hi]  # (B, 1, Q, P+C+Q)
            pos_start = P + lo
        else:
            mask = query_mask(cache.prefix_valid, cache.slots, slots, cfg.block_size, mode, h.dtype)
            pos_start = None
        fast = cache.fast if self.fast_inference else None
        pos = None if fast is not None and pos_start is not None else (P + slots)[None].expand(h.shape[0], -1)
        out, _ = self.run_layers(h, mask, pos, cache=cache, fast=fast, pos_start=pos_start)
        if commit:
            cache.commit(commit, slots[:commit], first_slot=None if pos_start is None else span[0])
        else:
            cache.discard()
        return self.head(out)  # (B, Q, bins)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
