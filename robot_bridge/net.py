"""Network helpers (standard library only)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` now (the OS picks it). Whoever binds it next gets it: bind it soon after."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
