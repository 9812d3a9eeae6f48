"""Tests for atelier.runtime.model: the two CNN architectures."""

from __future__ import annotations

import pytest
import torch

from atelier.runtime.model import ARCHITECTURES, build_model, count_parameters

pytestmark = pytest.mark.unit


def test_compact_is_under_25k_parameters() -> None:
    assert count_parameters(build_model("compact", 1, 10)) < 25_000
    assert count_parameters(build_model("compact", 3, 10)) < 25_000


def test_standard_is_larger() -> None:
    compact = count_parameters(build_model("compact", 1, 10))
    standard = count_parameters(build_model("standard", 1, 10))
    assert standard > 25_000
    assert standard > compact


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_forward_shape(arch: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, channels, 10).eval()
    with torch.no_grad():
        out = model(torch.rand(4, channels, size, size))
    assert out.shape == (4, 10)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_other_class_count_and_backward(arch: str) -> None:
    model = build_model(arch, 1, 5).train()
    out = model(torch.rand(4, 1, 28, 28))
    assert out.shape == (4, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="resnet"):
        build_model("resnet", 1, 10)
