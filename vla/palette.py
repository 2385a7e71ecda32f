"""The cube colours of the colour tasks (plain RGBA; names are the words used in instructions), and the colour words
an instruction takes when an image's RGB channels are reordered (training's colour-swap augmentation, vla.data).

Its own module, free of robosuite, so training and tokenizers can read it on a machine without the simulator."""

from __future__ import annotations

import numpy as np

PALETTE: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.75, 0.15, 1.0),
    "blue": (0.1, 0.25, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.15, 0.75, 1.0),
    "orange": (1.0, 0.5, 0.05, 1.0),
}

RGB_PERMS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]  # identity first


def swapped_color(name: str, perm, tol: float = 0.2) -> str | None:
    """The palette colour `name` looks like once an image's channels are reordered by `perm` (new[c] = old[perm[c]]);
    None when no palette colour is within `tol` in every channel (purple -> a cyan that no instruction names)."""
    rgb = np.asarray(PALETTE[name][:3])[list(perm)]
    best = min(PALETTE, key=lambda n: float(np.abs(np.asarray(PALETTE[n][:3]) - rgb).max()))
    return best if float(np.abs(np.asarray(PALETTE[best][:3]) - rgb).max()) <= tol else None


def rename_colors(instruction: str, perm) -> str | None:
    """'pick up the red cube' with R and G swapped -> 'pick up the green cube'; None when the instruction names no
    colour (nothing to learn from the swap) or a colour without a palette counterpart."""
    words = instruction.split(" ")
    named = [w.strip(".,!?").lower() for w in words]
    if not any(w in PALETTE for w in named):
        return None
    out = []
    for w, n in zip(words, named):
        if n in PALETTE:
            new = swapped_color(n, perm)
            if new is None:
                return None
            w = w.lower().replace(n, new)
        out.append(w)
    return " ".join(out)
