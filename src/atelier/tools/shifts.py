"""Shifted copies of images: traffic unlike training, to make the drift gauges move.

One table of shifts for every caller (`atelier send --shift`, `atelier loadtest --drift`),
so "inverted traffic" means the same pixels everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from atelier.runtime.errors import ConfigError

SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "invert": lambda x: 255 - x,
    "brighten": lambda x: np.clip(x.astype(int) + 90, 0, 255).astype(np.uint8),
    "rotate": lambda x: np.rot90(x, k=1, axes=(-2, -1)).copy(),
}


def shift_images(images: np.ndarray, kind: str) -> np.ndarray:
    """Shift a uint8 (..., H, W) batch; ``kind`` is one of `SHIFTS`."""
    if kind not in SHIFTS:
        raise ConfigError(f"shift {kind!r}: choose one of {', '.join(SHIFTS)}")
    return SHIFTS[kind](np.asarray(images, dtype=np.uint8))
