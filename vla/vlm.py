"""Vision-language backbones from a local Hugging Face directory, through transformers' own classes.

    images (B, n_cam, 3, S, S) [0, 1] ──resize to the tower's size, its mean/std──► (B*n_cam, 3, S', S')
        ──the VLM's vision tower (frozen by default) + connector──► (B, n_cam * T, d)   T tokens per camera
    then our instruction, state and action tokens; the VLM's language model is the decoder stack (vla.model.DVLA's
    `backbone`: its layers, rotary table, norm and embeddings), run with our block-causal mask and prefix KV cache.

Supported: Idefics3 and SmolVLM (SigLIP tower, pixel-shuffle connector, Llama decoder) and PaliGemma (SigLIP tower,
linear projector, Gemma decoder). The VLM's language-model head is not used (the action head decodes).
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

VLM_TYPES = ("idefics3", "smolvlm", "paligemma")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "chat_template.json", "chat_template.jinja")


def model_type_of(path: str) -> str | None:
    """The model_type in a local directory's config.json (None without one)."""
    p = os.path.join(path, "config.json")
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        return json.load(f).get("model_type")


def _parts(vlm_model, kind: str):
    """The base VLM (Idefics3Model / SmolVLMModel / PaliGemmaModel) -> (vision tower, connector, language model)."""
    if kind in ("idefics3", "smolvlm"):
        return vlm_model.vision_model, vlm_model.connector, vlm_model.text_model
    return vlm_model.vision_tower, vlm_model.multi_modal_projector, vlm_model.language_model


def tokens_per_image(hf_cfg) -> int:
    v = hf_cfg.vision_config
    n = (v.image_size // v.patch_size) ** 2
    return n // (hf_cfg.scale_factor ** 2) if hf_cfg.model_type in ("idefics3", "smolvlm") else n


def image_norm(path: str | None) -> tuple[list[float], list[float]]:
    """The image processor's mean and std (preprocessor_config.json); SigLIP's 0.5 / 0.5 without one."""
    p = os.path.join(path, "preprocessor_config.json") if path else None
    if p and os.path.isfile(p):
        with open(p) as f:
            d = json.load(f)
        mean, std = d.get("image_mean", [0.5] * 3), d.get("image_std", [0.5] * 3)
        return [float(x) for x in mean], [float(x) for x in std]
    return [0.5] * 3, [0.5] * 3


class VisionTokens(nn.Module):
    """(N, 3, S, S) in [0, 1] -> (N, T, d): the VLM's vision tower and connector on the whole frame (no tiling),
    resized to the tower's image size and normalised with the processor's mean and std (buffers: saved, exact)."""

    def __init__(self, kind: str, tower: nn.Module, connector: nn.Module, image_size: int, mean, std):
        super().__init__()
        self.kind = kind
        self.tower = tower
        self.connector = connector
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-1] != self.image_size or img.shape[-2] != self.image_size:
            img = F.interpolate(img, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = ((img - self.mean) / self.std).to(self.mean.dtype)  # (N, 3, S', S')
        h = self.tower(pixel_values=x).last_hidden_state  # (N, patches, d_vision)
        return self.connector(h)  # (N, T, d)


def _attn(cfg) -> None:
    cfg._attn_implementation = "sdpa"
    for sub in ("text_config", "vision_config"):
        if getattr(cfg, sub, None) is not None:
            getattr(cfg, sub)._attn_implementation = "sdpa"


def load_vlm(path: str | None = None, saved: dict | None = None, layers: int | None = None):
    """A VLM from a local directory (its weights) or from a checkpoint's saved config (random weights the checkpoint's
    model.safetensors then fills) -> (language model, VisionTokens, the VLM's config).

    layers: keep only the language model's first n layers (SmolVLA keeps 16 of SmolVLM's 32)."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if saved is not None:
        kind = saved.get("model_type")
        if kind not in VLM_TYPES:
            raise ValueError(f"backbone_config.json: model_type {kind!r}; expected one of {VLM_TYPES}")
        cfg = CONFIG_MAPPING[kind].from_dict(dict(saved))
        _attn(cfg)
        full = AutoModelForImageTextToText.from_config(cfg)
        mean, std = [0.5] * 3, [0.5] * 3  # the buffers come from the checkpoint
    else:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        if cfg.model_type not in VLM_TYPES:
            raise ValueError(f"backbone_path: {path} holds a {cfg.model_type!r} model; expected one of {VLM_TYPES}")
        full = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, attn_implementation="sdpa")
        cfg = full.config
        mean, std = image_norm(path)
    tower, connector, lm = _parts(full.model, cfg.model_type)
    keep_layers(lm, cfg.text_config, layers)
    lm.config = cfg.text_config
    vis = VisionTokens(cfg.model_type, tower, connector, cfg.vision_config.image_size, mean, std)
    return lm, vis, cfg


def keep_layers(lm: nn.Module, text_config, layers: int | None) -> None:
    """Keep only the decoder's first `layers` layers (model.backbone_layers), its config saying so."""
    if layers is None or layers >= len(lm.layers):
        return
    lm.layers = lm.layers[:layers]
    text_config.num_hidden_layers = layers
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = text_config.layer_types[:layers]


def processor_files(path: str) -> dict[str, str]:
    """The directory's processor files (image processor, processor, chat template) by name -> their text."""
    out = {}
    for name in PROCESSOR_FILES:
        p = os.path.join(path, name)
        if os.path.isfile(p):
            with open(p) as f:
                out[name] = f.read()
    return out


# --------------------------------------------------------------------------------------------------------------
# random instances from configs: tests, benchmarks and GPU runs without a download
SHAPES = {
    # a few layers, hidden 64 (language) and 32 (vision), 32 px images: small enough for tests on a CPU
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=97),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=32, patch_size=8), scale_factor=2),
    # SmolVLM2-500M's shapes (SmolVLA's backbone): 960-wide, 32-layer SmolLM2 decoder; SigLIP 768-wide, 12 layers,
    # 512 px, patch 16; pixel shuffle 4 -> 64 tokens per image
    "smolvlm-500m": dict(text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                   num_attention_heads=15, num_key_value_heads=5, head_dim=64, vocab_size=49280,
                                   rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
                         vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                     num_attention_heads=12, image_size=512, patch_size=16), scale_factor=4),
}


def save_random_vlm(out: str, kind: str, shape: str = "tiny", words: tuple[str, ...] = (), seed: int = 0) -> str:
    """A randomly initialised `kind` VLM of `shape` (SHAPES) saved like a downloaded model: config.json,
    model.safetensors, a word-level tokenizer over `words` and preprocessor_config.json. Returns `out`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (AutoModelForImageTextToText, GemmaConfig, Idefics3Config, LlamaConfig,
                              PaliGemmaConfig, PreTrainedTokenizerFast, SiglipVisionConfig, SmolVLMConfig)

    sh = SHAPES[shape]
    vocab = ["[PAD]", "[UNK]", "[BOS]"] + [w for w in words if w not in ("[PAD]", "[UNK]", "[BOS]")]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                            bos_token="[BOS]").save_pretrained(out)
    text, vision = dict(sh["text"]), dict(sh["vision"])
    if kind in ("idefics3", "smolvlm"):
        cls = SmolVLMConfig if kind == "smolvlm" else Idefics3Config
        cfg = cls(text_config=LlamaConfig(**text, pad_token_id=0).to_dict(), vision_config=vision,
                  scale_factor=sh["scale_factor"], image_token_id=text["vocab_size"] - 1)
    elif kind == "paligemma":
        text.pop("rope_parameters", None)
        cfg = PaliGemmaConfig(text_config=GemmaConfig(**text, pad_token_id=0).to_dict(),
                              vision_config=SiglipVisionConfig(**vision).to_dict(), projection_dim=text["hidden_size"],
                              hidden_size=text["hidden_size"], vocab_size=text["vocab_size"],
                              image_token_index=text["vocab_size"] - 1)
    else:
        raise ValueError(f"kind: expected one of {VLM_TYPES}, got {kind!r}")
    torch.manual_seed(seed)
    AutoModelForImageTextToText.from_config(cfg).save_pretrained(out)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                   "size": {"longest_edge": vision["image_size"]}}, f)
    return out
