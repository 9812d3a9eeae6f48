"""atelier.tools.shifts: one table of image shifts (atelier send --shift, loadtest --drift)."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.runtime.errors import ConfigError
from atelier.tools.shifts import SHIFTS, shift_images

pytestmark = pytest.mark.unit


def test_shifts_keep_shape_and_dtype() -> None:
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    for kind in SHIFTS:
        y = shift_images(x, kind)
        assert y.shape == x.shape and y.dtype == np.uint8, kind
    assert np.array_equal(shift_images(x, "none"), x)
    assert np.array_equal(shift_images(x, "invert"), 255 - x)
    assert shift_images(x, "brighten").min() >= 90 and shift_images(x, "brighten").max() == 255
    assert np.array_equal(shift_images(x, "rotate")[0, 0], np.rot90(x[0, 0]))
    assert np.array_equal(shift_images(x[0, 0], "rotate"), np.rot90(x[0, 0]))  # (H, W) too


def test_unknown_shift_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="choose one of none, invert, brighten, rotate"):
        shift_images(np.zeros((1, 28, 28), np.uint8), "melt")
