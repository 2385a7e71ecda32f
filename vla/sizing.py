"""The model config sized to a dataset: cameras, state and action sizes read from the data files, checked against
what the user set explicitly."""

from __future__ import annotations

import dataclasses
import logging

from vla.config import DataConfig, ModelConfig
from vla.data import feature_map
from vla.formats import peek_dims


def data_dims(data_cfg: DataConfig) -> dict:
    """vla.formats.peek_dims of the configured files: cameras, state_dim, action_dim and the feature map."""
    return peek_dims(list(data_cfg.paths), feature_map(data_cfg))


def fit_model_to_data(mcfg: ModelConfig, dims: dict, source: str, explicit: set[str] = frozenset()) -> ModelConfig:
    """Cameras, state size, action size and a valid block_size from the data's `dims` (data_dims), unless the config
    says otherwise: `explicit` names the model fields the user set (model_overrides); one that disagrees with the
    data (`source`, named in the error) is an error naming both. Preset values give way to the data (logged)."""
    want = {"state_dim": dims["state_dim"], "action_dim": dims["action_dim"]}
    if not all(c in dims["cameras"] for c in mcfg.cameras):  # a preset's cameras the data lacks: the data's cameras
        want["cameras"] = tuple(dims["cameras"])
    changes = {}
    for k, v in want.items():
        if getattr(mcfg, k) == v:
            continue
        if k in explicit:
            raise ValueError(f"model.{k}: the config says {getattr(mcfg, k)!r}, the data {source} has "
                             f"{v!r} "
                             f"({'cameras ' + str(dims['cameras']) if k == 'cameras' else 'from its feature map'})")
        changes[k] = v
    a = changes.get("action_dim", mcfg.action_dim)
    if mcfg.block_size % a or (mcfg.chunk_size * a) % mcfg.block_size:
        if "block_size" in explicit:
            raise ValueError(f"model.block_size: {mcfg.block_size} is not a multiple of the data's action_dim {a} "
                             f"that divides chunk_size*action_dim")
        changes["block_size"] = a
    if changes:
        logging.getLogger("vla.sizing").warning("model sized by the data %s: %s", source, changes)
        mcfg = dataclasses.replace(mcfg, **changes)
    return mcfg
