"""The cube colours of the colour tasks (plain RGBA; names are the words used in instructions).

Its own module, free of robosuite, so training and tokenizers can read it on a machine without the simulator."""

from __future__ import annotations

PALETTE: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.75, 0.15, 1.0),
    "blue": (0.1, 0.25, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.15, 0.75, 1.0),
    "orange": (1.0, 0.5, 0.05, 1.0),
}
