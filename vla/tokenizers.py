"""Action and text tokenizers. Both serialize to JSON next to the weights; no downloads.

ActionTokenizer: per-dimension q01/q99 normalization to [-1, 1], clipping, `num_bins` uniform bins; a chunk
(H, D) becomes H*D token ids in [0, num_bins); id `num_bins` is [MASK]. Detokenize maps ids to bin centres.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


# --------------------------------------------------------------------------------------------------------------
@dataclass
class ActionTokenizer:
    low: np.ndarray  # (D,) q01 per dimension
    high: np.ndarray  # (D,) q99 per dimension
    num_bins: int = 256

    def __post_init__(self):
        self.low = np.asarray(self.low, dtype=np.float64)
        self.high = np.asarray(self.high, dtype=np.float64)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(f"low/high: expected two (D,) arrays, got {self.low.shape} and {self.high.shape}")
        # a constant dimension (q01 == q99) still needs a non-zero range to normalize
        self.high = np.where(self.high - self.low < 1e-6, self.low + 1e-6, self.high)

    @property
    def dim(self) -> int:
        return len(self.low)

    @property
    def mask_id(self) -> int:
        return self.num_bins

    @property
    def bin_width(self) -> np.ndarray:
        """(D,) width of one bin in action units."""
        return (self.high - self.low) / self.num_bins

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """(..., D) actions -> [-1, 1], clipped."""
        return np.clip(2.0 * (actions - self.low) / (self.high - self.low) - 1.0, -1.0, 1.0)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) + 1.0) / 2.0 * (self.high - self.low) + self.low

    def tokenize(self, actions: np.ndarray) -> np.ndarray:
        """(..., H, D) float -> (..., H*D) int64 ids in [0, num_bins)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1] != self.dim:
            raise ValueError(f"actions: expected last dimension {self.dim}, got shape {a.shape}")
        x = self.normalize(a)
        ids = np.floor((x + 1.0) / 2.0 * self.num_bins).astype(np.int64)
        ids = np.clip(ids, 0, self.num_bins - 1)
        return ids.reshape(*a.shape[:-2], -1)

    def detokenize(self, ids: np.ndarray, horizon: int | None = None) -> np.ndarray:
        """(..., H*D) ids -> (..., H, D) float32 at bin centres. [MASK] ids are an error."""
        ids = np.asarray(ids)
        if np.any(ids >= self.num_bins) or np.any(ids < 0):
            raise ValueError(f"ids: expected values in [0, {self.num_bins}), got a [MASK] or out-of-range id")
        x = (ids.astype(np.float64) + 0.5) / self.num_bins * 2.0 - 1.0
        x = x.reshape(*ids.shape[:-1], -1, self.dim)
        if horizon is not None and x.shape[-2] != horizon:
            raise ValueError(f"ids: expected {horizon * self.dim} tokens, got {ids.shape[-1]}")
        return self.unnormalize(x).astype(np.float32)

    def to_json(self) -> dict:
        return {"type": "uniform_bins", "num_bins": self.num_bins, "low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "ActionTokenizer":
        return cls(low=np.array(d["low"]), high=np.array(d["high"]), num_bins=int(d["num_bins"]))

    @classmethod
    def from_stats(cls, stats: dict, num_bins: int = 256) -> "ActionTokenizer":
        return cls(low=np.array(stats["q01"]), high=np.array(stats["q99"]), num_bins=num_bins)


# --------------------------------------------------------------------------------------------------------------
PAD, UNK, BOS = "<pad>", "<unk>", "<bos>"
_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class TextTokenizer:
    """Interface: encode(text, max_len) -> (ids (L,), valid (L,)); vocab_size; to_json()."""

    vocab_size: int
    pad_id: int = 0

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self._ids(text)[:max_len]
        out = np.full(max_len, self.pad_id, dtype=np.int64)
        out[: len(ids)] = ids
        valid = np.zeros(max_len, dtype=bool)
        valid[: len(ids)] = True
        return out, valid

    def encode_batch(self, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.encode(t, max_len) for t in texts]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _ids(self, text: str) -> list[int]:
        raise NotImplementedError

    def to_json(self) -> dict:
        raise NotImplementedError


class WordTokenizer(TextTokenizer):
    """Lower-cased words and punctuation; vocabulary built from the training instructions (plus any seed words)."""

    def __init__(self, vocab: list[str]):
        if vocab[:3] != [PAD, UNK, BOS]:
            vocab = [PAD, UNK, BOS] + [w for w in vocab if w not in (PAD, UNK, BOS)]
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)
        self.pad_id, self.unk_id, self.bos_id = 0, 1, 2

    @staticmethod
    def words(text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())

    def grown(self, texts: list[str]) -> "WordTokenizer":
        """This vocabulary plus the new words of `texts`, appended: every old word keeps its id (finetuning)."""
        new: dict[str, None] = {}
        for t in texts:
            for w in self.words(t):
                if w not in self.index:
                    new.setdefault(w, None)
        return WordTokenizer(self.vocab + sorted(new))

    @classmethod
    def fit(cls, texts: list[str], extra_words: list[str] = ()) -> "WordTokenizer":
        seen: dict[str, None] = {}
        for t in list(texts) + list(extra_words):
            for w in cls.words(t):
                seen.setdefault(w, None)
        return cls(sorted(seen))

    def _ids(self, text: str) -> list[int]:
        return [self.bos_id] + [self.index.get(w, self.unk_id) for w in self.words(text)]

    def to_json(self) -> dict:
        return {"type": "word", "vocab": self.vocab}


class ByteTokenizer(TextTokenizer):
    """UTF-8 bytes shifted by 3 (0 pad, 1 unk, 2 bos)."""

    vocab_size = 259

    def _ids(self, text: str) -> list[int]:
        return [2] + [b + 3 for b in text.encode("utf-8")]

    def to_json(self) -> dict:
        return {"type": "byte"}


class HFTokenizer(TextTokenizer):
    """A tokenizer from a local Hugging Face model directory (never downloads)."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self.path = str(path)
        self.tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.vocab_size = len(self.tok)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=True)["input_ids"])

    def to_json(self) -> dict:
        return {"type": "hf", "path": self.path}


def text_tokenizer_from_json(d: dict, checkpoint_dir: str | None = None) -> TextTokenizer:
    kind = d.get("type")
    if kind == "word":
        return WordTokenizer(d["vocab"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        import os

        path = d["path"]
        if checkpoint_dir and os.path.isdir(os.path.join(checkpoint_dir, "text_tokenizer")):
            path = os.path.join(checkpoint_dir, "text_tokenizer")
        return HFTokenizer(path)
    raise ValueError(f"tokenizer.json: unknown text tokenizer type {kind!r}; expected 'word', 'byte' or 'hf'")


# Words of everyday tabletop instructions, seeded into every word vocabulary next to the training data's own words
# (the model library knows English, not the simulator's task list).
COMMON_WORDS = ("pick up lift put place stack move push open close the a an cube block can bin box door drawer on in "
                "into onto to from of and with left right top bottom front back").split()


def instruction_vocabulary() -> list[str]:
    """Words seeded into a word vocabulary: everyday instruction words and every palette colour, so a colour absent
    from the training data is not <unk>."""
    from vla.palette import PALETTE

    return list(COMMON_WORDS) + list(PALETTE)
