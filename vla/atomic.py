"""Files written to a temporary name and renamed: an interrupted write never leaves a half-written file behind."""

from __future__ import annotations

import json
import os


def write_atomic(path: str, write) -> None:
    """write(tmp_path) fills a temporary file; it then replaces `path` in one rename."""
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def write_json_atomic(path: str, obj) -> None:
    def w(p):
        with open(p, "w") as f:
            json.dump(obj, f, indent=2)

    write_atomic(path, w)
