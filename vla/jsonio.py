"""Values made JSON-serialisable: numpy arrays and scalars and torch tensors become lists and numbers."""

from __future__ import annotations

import numpy as np


def jsonable(x):
    """Dicts (keys as strings), lists and tuples converted throughout; an array becomes a (nested) list, a numpy
    scalar a number, a torch tensor of one element a number (torch is recognised without being imported)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "numel") and hasattr(x, "item"):  # a torch tensor
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, (np.ndarray, np.generic)):
        return x.tolist()
    return x
