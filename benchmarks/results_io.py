"""Writing benchmark results: to a temporary name, then renamed, so an interrupted run never leaves a truncated
file in place of the previous results."""

from __future__ import annotations

import json
import os


def write_json(path: str, obj, indent: int | None = 2, default=None) -> None:
    """obj -> path as JSON (its folder created if needed), atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, default=default)
    os.replace(tmp, path)
