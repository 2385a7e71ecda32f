"""Training batches from demonstration files: everything in memory as flat arrays, sampled with a torch Generator
(its state is saved in checkpoints, so a resumed run draws exactly the batches it would have drawn)."""

from __future__ import annotations

import numpy as np
import torch

from vla.config import DataConfig, ModelConfig
from vla.features import Demo, FeatureMap
from vla.formats import load_demos
from vla.normalization import StateNormalizer
from vla.palette import RGB_PERMS, rename_colors
from vla.stats import dataset_stats
from vla.tokenizers import ActionTokenizer, TextTokenizer


class DemoBatches:
    """Flat arrays over all demos: images per camera (N, S, S, 3) uint8, state (N, 9), chunk index (N, H)."""

    def __init__(
        self,
        demos: list[Demo],
        model_cfg: ModelConfig,
        action_tok: ActionTokenizer,
        state_norm: StateNormalizer,
        text_tok: TextTokenizer,
        object_stats: dict | None = None,
    ):
        if not demos:
            raise ValueError("data: no demonstrations matched (check data.paths, the split masks and data.tasks)")
        H = model_cfg.chunk_size
        self.cfg = model_cfg
        self.images = {c: frames_of([d.images[c] for d in demos]) for c in model_cfg.cameras}
        self.state = state_norm.normalize(np.concatenate([d.state for d in demos]))  # (N, S) normalized
        self.eef = np.concatenate([d.state[:, :3] for d in demos]).astype(np.float32)  # (N, 3) raw
        actions = np.concatenate([d.actions for d in demos])  # (N, D)
        obj = np.concatenate([d.object_pos.reshape(len(d), -1) for d in demos]).astype(np.float32)  # (N, 9)
        self.obj_valid = np.abs(obj) > 0  # unused object rows are exactly zero
        if object_stats is None:
            object_stats = {"mean": obj.mean(0).tolist(), "std": (obj.std(0) + 1e-3).tolist()}
        self.object_stats = object_stats
        self.obj = (obj - np.array(object_stats["mean"], np.float32)) / np.array(object_stats["std"], np.float32)
        chunk_idx, demo_of, end_of = [], [], []
        start = 0
        for i, d in enumerate(demos):
            T = len(d)
            steps = np.minimum(np.arange(T)[:, None] + np.arange(H)[None], T - 1) + start  # (T, H)
            chunk_idx.append(steps)
            demo_of.append(np.full(T, i))
            end_of.append(np.full(T, start + T - 1))
            start += T
        self.chunk_idx = np.concatenate(chunk_idx)  # (N, H) global step indices
        self.demo_of = np.concatenate(demo_of)
        self.end_of = np.concatenate(end_of)
        self.action_tokens = action_tok.tokenize(actions[self.chunk_idx])  # (N, H*D)
        ids, valid = text_tok.encode_batch([d.instruction for d in demos], model_cfg.max_text_len)
        self.text_ids, self.text_valid = ids, valid  # (n_demos, L)
        # colour swaps: per RGB channel order, each demo's instruction with its colour words renamed (or not usable)
        self.color_swaps = []  # (perm (3,), text_ids (n_demos, L), text_valid (n_demos, L), usable (n_demos,) bool)
        for perm in RGB_PERMS[1:]:
            renamed = [rename_colors(d.instruction, perm) for d in demos]
            usable = np.array([r is not None for r in renamed])
            if usable.any():
                pids, pvalid = text_tok.encode_batch([r or "" for r in renamed], model_cfg.max_text_len)
                self.color_swaps.append((perm, pids, pvalid, usable))
        self.tasks = [d.task for d in demos]
        self.n = len(self.state)
        task_names = sorted(set(self.tasks))
        task_of_frame = np.array([task_names.index(self.tasks[i]) for i in self.demo_of])  # (N,)
        self.task_names = task_names
        self.task_frames = [np.nonzero(task_of_frame == t)[0] for t in range(len(task_names))]  # frame ids per task

    def __len__(self) -> int:
        return self.n

    def task_probs(self, task_weights: dict) -> torch.Tensor:
        """{task: weight} -> (n_tasks,) float64 probabilities in self.task_names order; every task needs a weight."""
        missing = [t for t in self.task_names if t not in task_weights]
        unknown = sorted(set(task_weights) - set(self.task_names))
        if missing or unknown:
            raise ValueError(f"data.task_weights: expected a weight for each task in the data {self.task_names}; "
                             f"missing {missing}, not in the data {unknown}")
        w = torch.tensor([float(task_weights[t]) for t in self.task_names], dtype=torch.float64)
        if w.sum() <= 0:
            raise ValueError(f"data.task_weights: expected a weight > 0 for a task in the data, got {task_weights}")
        return w / w.sum()

    def sample(self, batch_size: int, generator: torch.Generator, task_sampling: str = "frames",
               task_weights: dict | None = None) -> np.ndarray:
        """-> (B,) frame indices. "frames": uniform over frames, so long tasks dominate a mixture; "uniform": a task
        uniformly, then a frame of it uniformly (every task gets the same share of the batches); "weighted": a task
        with probability task_weights[task] / sum, then a frame of it uniformly."""
        if task_sampling == "weighted":
            probs = self.task_probs(task_weights or {})  # checked even for one task: a misnamed task is an error
            t = torch.multinomial(probs, batch_size, replacement=True, generator=generator).numpy()
        elif task_sampling == "frames" or len(self.task_frames) == 1:
            return torch.randint(0, self.n, (batch_size,), generator=generator).numpy()
        else:
            t = torch.randint(0, len(self.task_frames), (batch_size,), generator=generator).numpy()
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64).numpy()
        return np.array([self.task_frames[ti][int(ui * len(self.task_frames[ti]))] for ti, ui in zip(t, u)])

    def batch(self, idx: np.ndarray, augment_shift: int = 0, generator: torch.Generator | None = None,
              future_steps: int = 4, augment_color: float = 0.0) -> dict[str, torch.Tensor]:
        """augment_color: probability that a sample whose instruction names colours gets a colour swap: the image's
        RGB channels reordered and the colour words renamed to match (the red cube turns green and is called green),
        so the target, the actions and the object positions stay the same while the word-colour pairing varies."""
        imgs = np.stack([self.images[c][idx] for c in self.cfg.cameras], axis=1)  # (B, n_cam, S, S, 3)
        d = self.demo_of[idx]
        text_ids, text_valid = self.text_ids[d], self.text_valid[d]  # (B, L)
        if augment_color > 0 and self.color_swaps:
            u = torch.rand(len(idx), generator=generator).numpy()
            k = torch.randint(0, len(self.color_swaps), (len(idx),), generator=generator).numpy()
            text_ids, text_valid = text_ids.copy(), text_valid.copy()
            for i in np.nonzero(u < augment_color)[0]:
                perm, pids, pvalid, usable = self.color_swaps[k[i]]
                if usable[d[i]]:
                    imgs[i] = imgs[i][..., list(perm)]
                    text_ids[i], text_valid[i] = pids[d[i]], pvalid[d[i]]
        images = torch.from_numpy(imgs).permute(0, 1, 4, 2, 3).float().div_(255.0)  # (B, n_cam, 3, S, S)
        if augment_shift > 0:
            images = random_shift(images, augment_shift, generator)
        fut = np.minimum(idx + future_steps, self.end_of[idx])
        return {
            "images": images,
            "text_ids": torch.from_numpy(text_ids),
            "text_valid": torch.from_numpy(text_valid),
            "state": torch.from_numpy(self.state[idx]),
            "action_tokens": torch.from_numpy(self.action_tokens[idx]),
            "object_pos": torch.from_numpy(self.obj[idx]),
            "object_valid": torch.from_numpy(self.obj_valid[idx]),
            "eef_future": torch.from_numpy(self.eef[fut]),
        }


class ChunkSampler:
    """(observation, action chunk) samples: action chunk (H, D) from step t, padded with the last action.

    Also returns `is_pad` (H,) bool so losses can ignore padded steps if they wish.
    """

    def __init__(self, demos: list[Demo], horizon: int):
        if not demos:
            raise ValueError("demos: no demonstrations to sample from (check the path, split and task filter)")
        self.demos = demos
        self.horizon = int(horizon)
        self.index = np.array([(i, t) for i, d in enumerate(demos) for t in range(len(d))], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def get(self, k: int) -> dict:
        i, t = self.index[k]
        d = self.demos[i]
        T = len(d)
        steps = np.arange(t, t + self.horizon)
        is_pad = steps >= T
        steps = np.minimum(steps, T - 1)
        return {
            "images": {c: im[t] for c, im in d.images.items()},
            "state": d.state[t],
            "instruction": d.instruction,
            "task": d.task,
            "actions": d.actions[steps],
            "is_pad": is_pad,
            "object_pos": d.object_pos[t],
            "future_eef": d.state[steps, 0:3],
        }


class FrameRows:
    """Frames of many demos addressed by global row without copying them: used when the demos' frames are views of
    an on-disk memmap (vla.formats.frames.FrameCache), so N ranks share the page cache instead of N copies in RAM.
    rows[idx] -> uint8 (B, S, S, 3)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])  # (n_demos + 1,)
        self.shape = (int(self.starts[-1]), *arrays[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(idx))
        d = np.searchsorted(self.starts, idx, side="right") - 1
        return np.stack([self.arrays[di][i - self.starts[di]] for di, i in zip(d, idx)])


def frames_of(arrays: list[np.ndarray]):
    """One camera's frames over all demos: a FrameRows over memmap views (no copy), else one array in RAM."""
    if arrays and all(isinstance(a, np.memmap) for a in arrays):
        return FrameRows(arrays)
    return np.concatenate(arrays)


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """DrQ-style augmentation: replicate-pad by `pad` and crop back at a random offset, per sample.
    images (B, n_cam, 3, S, S) -> same shape."""
    B, C, ch, S, _ = images.shape
    x = images.reshape(B * C, ch, S, S)
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (B * C, 2), generator=generator)
    out = torch.empty(B * C, ch, S, S, dtype=images.dtype)
    for i in range(B * C):
        oy, ox = int(off[i, 0]), int(off[i, 1])
        out[i] = x[i, :, oy : oy + S, ox : ox + S]
    return out.reshape(B, C, ch, S, S)


def feature_map(data_cfg: DataConfig) -> FeatureMap | None:
    return FeatureMap.from_dict(data_cfg.features) if data_cfg.features is not None else None


def load_training_data(data_cfg: DataConfig, model_cfg: ModelConfig, progress: bool = False):
    """-> (train demos, valid demos, stats). Valid falls back to empty if no file has a mask/valid entry."""
    paths = list(data_cfg.paths)
    if not paths:
        raise ValueError("data.paths: expected at least one dataset file")
    kw = dict(
        cameras=tuple(model_cfg.cameras),
        image_size=model_cfg.image_size,
        tasks=list(data_cfg.tasks) if data_cfg.tasks else None,
        max_demos_per_task=data_cfg.max_demos_per_task,
        features=feature_map(data_cfg),
        frame_fit=data_cfg.frame_fit,
        frame_cache=data_cfg.frame_cache,
        progress=progress,
    )
    train = load_demos(paths, split="train", **kw)
    valid = load_demos(paths, split="valid", **kw)
    stats = dataset_stats(train)
    return train, valid, stats
