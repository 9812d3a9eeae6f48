"""Tests for atelier.training.data.augment: random crop-and-resize and rotation on a batch."""

from __future__ import annotations

import pytest
import torch

from atelier.training.config import AugmentConfig
from atelier.training.data.augment import augment_batch

pytestmark = pytest.mark.unit


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(16, 1, 28, 28, generator=gen(123))


def per_image_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).amax(dim=1)


@pytest.mark.parametrize("channels", [1, 3])
def test_keeps_shape_dtype_and_range(channels: int) -> None:
    x = torch.rand(8, channels, 28, 28, generator=gen(0))
    original = x.clone()
    y = augment_batch(x, AugmentConfig(probability=1.0, max_rotation_degrees=45), gen(1))
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert float(y.min()) >= 0.0
    assert float(y.max()) <= 1.0 + 1e-6
    assert torch.equal(x, original), "the input must not be modified in place"


@pytest.mark.parametrize(
    "cfg",
    [AugmentConfig(enabled=False, probability=1.0), AugmentConfig(probability=0.0)],
    ids=["disabled", "probability-0"],
)
def test_off_returns_input_unchanged(batch: torch.Tensor, cfg: AugmentConfig) -> None:
    assert torch.equal(augment_batch(batch, cfg, gen(0)), batch)


def test_same_seed_same_output(batch: torch.Tensor) -> None:
    cfg = AugmentConfig(probability=0.5)
    a = augment_batch(batch, cfg, gen(5))
    b = augment_batch(batch, cfg, gen(5))
    assert torch.equal(a, b)
    c = augment_batch(batch, cfg, gen(6))
    assert not torch.equal(a, c)


def test_probability_one_changes_every_image(batch: torch.Tensor) -> None:
    y = augment_batch(batch, AugmentConfig(probability=1.0), gen(0))
    assert bool((per_image_change(y, batch) > 1e-3).all())


def test_probability_half_changes_some_images() -> None:
    x = torch.rand(64, 1, 28, 28, generator=gen(9))
    y = augment_batch(x, AugmentConfig(probability=0.5), gen(0))
    changed = int((per_image_change(y, x) > 1e-3).sum())
    assert 16 <= changed <= 48
    # The others go through the identity warp and stay (numerically) the same.
    unchanged = per_image_change(y, x) <= 1e-3
    assert torch.allclose(y[unchanged], x[unchanged], atol=1e-5)


def test_no_crop_no_rotation_is_identity(batch: torch.Tensor) -> None:
    cfg = AugmentConfig(probability=1.0, min_crop_scale=1.0, max_rotation_degrees=0.0)
    y = augment_batch(batch, cfg, gen(0))
    assert torch.allclose(y, batch, atol=1e-5)
