"""Colour-swap augmentation (vla/data.py): image channels and colour words change together, nothing else does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla.features import Demo
from vla.config import DataConfig
from vla.data import DemoBatches
from vla.palette import rename_colors, swapped_color


def test_swapped_colors_follow_the_palette():
    assert swapped_color("red", (1, 0, 2)) == "green" and swapped_color("green", (1, 0, 2)) == "red"
    assert swapped_color("blue", (1, 0, 2)) == "blue"
    assert swapped_color("red", (2, 1, 0)) == "blue"
    assert swapped_color("purple", (1, 0, 2)) is None  # becomes a cyan no instruction names
    assert rename_colors("put the green cube on the red cube", (1, 0, 2)) == "put the red cube on the green cube"
    assert rename_colors("lift the cube", (1, 0, 2)) is None  # no colour named: not swapped
    assert rename_colors("pick up the purple cube", (1, 0, 2)) is None
    with pytest.raises(ValueError, match="augment_color"):
        DataConfig(augment_color=1.5)


def _demo(name, instruction, color_rgb, S, T=6):
    img = np.full((T, S, S, 3), 128, np.uint8)
    img[:, 2:6, 2:6] = np.asarray(color_rgb) * 255  # the named cube, top left
    rng = np.random.default_rng(len(name))
    return Demo(name=name, task="PickColor", instruction=instruction,
                images={"agentview": img, "wrist": img.copy()},
                state=rng.normal(size=(T, 9)).astype(np.float32), actions=rng.uniform(-1, 1, (T, 7)).astype(np.float32),
                object_pos=rng.normal(size=(T, 3, 3)).astype(np.float32))


def test_color_swap_renames_the_word_with_the_pixels_and_keeps_actions():
    from vla.policy import Policy

    pol = Policy.untrained("tiny")
    S = pol.cfg.image_size
    demos = [_demo("a", "pick up the red cube", (0.85, 0.1, 0.1), S), _demo("b", "lift the cube", (0.85, 0.1, 0.1), S)]
    data = DemoBatches(demos, pol.cfg, pol.action_tokenizer, pol.state_normalizer, pol.text_tokenizer)
    idx = np.array([0, 1, 2, 6, 7, 8] * 20)
    plain = data.batch(idx, generator=torch.Generator().manual_seed(0))
    aug = data.batch(idx, generator=torch.Generator().manual_seed(0), augment_color=1.0)
    for k in ("action_tokens", "state", "object_pos"):
        assert torch.equal(plain[k], aug[k]), k
    word = {c: pol.text_tokenizer.encode(f"pick up the {c} cube", pol.cfg.max_text_len)[0]
            for c in ("red", "green", "blue")}
    lift_ids = torch.from_numpy(pol.text_tokenizer.encode("lift the cube", pol.cfg.max_text_len)[0])
    seen = set()
    for i in range(len(idx)):
        patch = aug["images"][i, 0, :, 3, 3]  # (3,) the cube's colour after the swap
        if idx[i] >= 6:  # no colour named: never swapped
            assert torch.equal(aug["images"][i], plain["images"][i]) and torch.equal(aug["text_ids"][i], lift_ids)
            continue
        name = next(c for c, ids in word.items() if torch.equal(aug["text_ids"][i], torch.from_numpy(ids)))
        seen.add(name)
        assert name == ("red", "green", "blue")[int(patch.argmax())], (name, patch)
        assert torch.allclose(aug["images"][i].sum(1), plain["images"][i].sum(1))  # channels reordered, not altered
    assert seen == {"red", "green", "blue"}  # every swap happens (the identity is never drawn at probability 1)


def test_uniform_task_sampling_gives_each_task_an_equal_share():
    """data.task_sampling: "frames" follows the frame counts (a long task dominates), "uniform" splits batches evenly
    across tasks; both are reproducible from the generator."""
    from dataclasses import replace

    from vla.policy import Policy

    pol = Policy.untrained("tiny")
    S = pol.cfg.image_size
    short = _demo("a", "pick up the red cube", (0.85, 0.1, 0.1), S, T=5)
    long = replace(_demo("b", "lift the cube", (0.85, 0.1, 0.1), S, T=45), task="Lift")
    data = DemoBatches([short, long], pol.cfg, pol.action_tokenizer, pol.state_normalizer, pol.text_tokenizer)
    n = 4000
    by_frames = data.sample(n, torch.Generator().manual_seed(0), "frames")
    uniform = data.sample(n, torch.Generator().manual_seed(0), "uniform")
    assert abs((by_frames < 5).mean() - 0.1) < 0.03  # 5 of 50 frames belong to the short task
    assert abs((uniform < 5).mean() - 0.5) < 0.04
    assert set(uniform[uniform < 5]) == set(range(5)) and set(uniform[uniform >= 5]) == set(range(5, 50))
    assert np.array_equal(uniform, data.sample(n, torch.Generator().manual_seed(0), "uniform"))
    with pytest.raises(ValueError, match="task_sampling"):
        DataConfig(task_sampling="balanced")
    # "weighted": each task drawn by its weight (PickColor 0.2, Lift 0.8), then a frame of it; reproducible
    w = {"PickColor": 1.0, "Lift": 4.0}
    assert data.task_names == ["Lift", "PickColor"] and short.task == "PickColor"
    weighted = data.sample(n, torch.Generator().manual_seed(0), "weighted", w)
    assert abs((weighted < 5).mean() - 0.2) < 0.03, (weighted < 5).mean()
    assert set(weighted[weighted < 5]) == set(range(5)) and set(weighted[weighted >= 5]) == set(range(5, 50))
    assert np.array_equal(weighted, data.sample(n, torch.Generator().manual_seed(0), "weighted", w))
    assert (data.sample(200, torch.Generator().manual_seed(0), "weighted", {"PickColor": 0, "Lift": 1}) >= 5).all()
    with pytest.raises(ValueError, match=r"task_weights.*missing \['PickColor'\].*not in the data \['Stack'\]"):
        data.sample(8, torch.Generator(), "weighted", {"Lift": 1.0, "Stack": 1.0})
    for bad in ({"task_sampling": "weighted"}, {"task_sampling": "uniform", "task_weights": w},
                {"task_sampling": "weighted", "task_weights": {"Lift": -1.0}},
                {"task_sampling": "weighted", "task_weights": {"Lift": 0.0}}):
        with pytest.raises(ValueError, match="data.task_weights"):
            DataConfig(**bad)
