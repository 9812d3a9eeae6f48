"""Tests for atelier.runtime.features: per-image and per-prediction drift features."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atelier.runtime.features import (
    ALL_FEATURES,
    IMAGE_FEATURES,
    all_features,
    image_features,
    prediction_features,
)

pytestmark = pytest.mark.unit


def test_all_black_image() -> None:
    f = image_features(np.zeros((2, 1, 28, 28), dtype=np.uint8))
    assert set(f) == set(IMAGE_FEATURES)
    for name, values in f.items():
        assert values.shape == (2,), name
        assert values.dtype == np.float64, name
    np.testing.assert_array_equal(f["brightness"], 0.0)
    np.testing.assert_array_equal(f["contrast"], 0.0)
    np.testing.assert_array_equal(f["ink_fraction"], 0.0)
    np.testing.assert_array_equal(f["edge_density"], 0.0)
    np.testing.assert_array_equal(f["center_x"], 0.5)
    np.testing.assert_array_equal(f["center_y"], 0.5)


def test_all_white_image() -> None:
    f = image_features(np.full((1, 1, 28, 28), 255, dtype=np.uint8))
    assert f["brightness"][0] == pytest.approx(1.0)
    assert f["contrast"][0] == pytest.approx(0.0)
    assert f["ink_fraction"][0] == pytest.approx(1.0)
    assert f["edge_density"][0] == pytest.approx(0.0)
    assert f["center_x"][0] == pytest.approx(0.5)
    assert f["center_y"][0] == pytest.approx(0.5)


def test_left_half_white() -> None:
    x = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    x[..., :14] = 255
    f = image_features(x)
    assert f["brightness"][0] == pytest.approx(0.5)
    assert f["contrast"][0] == pytest.approx(0.5)
    assert f["ink_fraction"][0] == pytest.approx(0.5)
    # Centroid of columns 0-13 with pixel centres (i + 0.5) / 28.
    assert f["center_x"][0] == pytest.approx(0.25)
    assert f["center_x"][0] < 0.5
    assert f["center_y"][0] == pytest.approx(0.5)
    # One vertical edge: 1/27 of horizontal differences, no vertical ones.
    assert f["edge_density"][0] == pytest.approx((1 / 27) / 2)


def test_bottom_half_white() -> None:
    x = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    x[..., 14:, :] = 255
    f = image_features(x)
    assert f["center_x"][0] == pytest.approx(0.5)
    assert f["center_y"][0] == pytest.approx(0.75)


def test_rows_are_independent() -> None:
    x = np.zeros((2, 1, 28, 28), dtype=np.uint8)
    x[1] = 255
    f = image_features(x)
    assert f["brightness"].tolist() == pytest.approx([0.0, 1.0])


def test_colour_image_is_averaged_over_channels() -> None:
    x = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    x[:, 0] = 255  # pure red
    f = image_features(x)
    assert f["brightness"][0] == pytest.approx(1 / 3)
    assert f["ink_fraction"][0] == pytest.approx(1.0)


def test_ink_threshold_is_ten_percent() -> None:
    x = np.zeros((1, 1, 2, 2), dtype=np.uint8)
    x[0, 0, 0, 0] = 25  # 0.098: not ink
    x[0, 0, 0, 1] = 26  # 0.102: ink
    assert image_features(x)["ink_fraction"][0] == pytest.approx(0.25)


def test_one_hot_prediction() -> None:
    p = np.eye(10)[[3, 7]]
    f = prediction_features(p)
    np.testing.assert_array_equal(f["predicted_class"], [3.0, 7.0])
    np.testing.assert_array_equal(f["confidence"], [1.0, 1.0])
    np.testing.assert_allclose(f["entropy"], [0.0, 0.0], atol=1e-9)


def test_uniform_prediction() -> None:
    f = prediction_features(np.full((1, 10), 0.1))
    assert f["confidence"][0] == pytest.approx(0.1)
    assert f["entropy"][0] == pytest.approx(math.log(10))


def test_all_features_has_every_name() -> None:
    f = all_features(np.zeros((3, 1, 28, 28), dtype=np.uint8), np.full((3, 10), 0.1))
    assert set(f) == set(ALL_FEATURES)
    assert all(v.shape == (3,) for v in f.values())
