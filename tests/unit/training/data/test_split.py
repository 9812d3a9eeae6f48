"""Tests for atelier.training.data.split: stratified splits and subsets."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.training.data.split import stratified_folds, stratified_split, stratified_subset

pytestmark = pytest.mark.unit

COUNTS = (100, 50, 30, 7, 2)


@pytest.fixture
def labels() -> np.ndarray:
    y = np.repeat(np.arange(len(COUNTS)), COUNTS)
    return np.random.default_rng(42).permutation(y)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35])
def test_keeps_class_proportions(labels: np.ndarray, fraction: float) -> None:
    rest, held = stratified_split(labels, fraction, seed=0)
    held_counts = np.bincount(labels[held], minlength=len(COUNTS))
    rest_counts = np.bincount(labels[rest], minlength=len(COUNTS))
    for cls, n in enumerate(COUNTS):
        assert abs(held_counts[cls] - n * fraction) <= 1, (cls, held_counts[cls])
        assert held_counts[cls] + rest_counts[cls] == n


def test_disjoint_and_covers_all(labels: np.ndarray) -> None:
    rest, held = stratified_split(labels, 0.2, seed=0)
    assert not set(rest.tolist()) & set(held.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([rest, held])), np.arange(len(labels)))
    assert np.all(np.diff(rest) > 0)
    assert np.all(np.diff(held) > 0)


def test_deterministic_for_a_seed(labels: np.ndarray) -> None:
    a = stratified_split(labels, 0.2, seed=7)
    b = stratified_split(labels, 0.2, seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = stratified_split(labels, 0.2, seed=8)
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.49])
def test_every_class_with_two_members_is_on_both_sides(labels: np.ndarray, fraction: float) -> None:
    rest, held = stratified_split(labels, fraction, seed=0)
    for cls in range(len(COUNTS)):
        assert cls in set(labels[rest].tolist())
        assert cls in set(labels[held].tolist())


def test_singleton_class_is_not_lost() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    rest, held = stratified_split(y, 0.25, seed=0)
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(len(y)))
    assert np.bincount(y[held], minlength=3).tolist() == [1, 1, 0]


def test_subset_has_about_n_with_the_class_mix() -> None:
    y = np.random.default_rng(1).permutation(np.repeat([0, 1, 2], [500, 300, 200]))
    subset = stratified_subset(y, 100, seed=0)
    assert abs(len(subset) - 100) <= 3
    assert len(set(subset.tolist())) == len(subset)
    assert subset.min() >= 0
    assert subset.max() < len(y)
    counts = np.bincount(y[subset], minlength=3)
    for got, want in zip(counts, (50, 30, 20), strict=True):
        assert abs(got - want) <= 1
    np.testing.assert_array_equal(subset, stratified_subset(y, 100, seed=0))


def test_subset_larger_than_data_is_everything() -> None:
    y = np.array([0, 1, 0, 1, 2])
    np.testing.assert_array_equal(stratified_subset(y, 5, seed=0), np.arange(5))
    np.testing.assert_array_equal(stratified_subset(y, 50, seed=0), np.arange(5))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_stratified_folds_partition_the_labels_with_every_class_in_every_fold(k: int) -> None:
    labels = np.repeat(np.arange(4), [10, 11, 13, 17])
    folds = stratified_folds(labels, k, seed=3)
    assert len(folds) == k
    every = np.sort(np.concatenate(folds))
    assert (every == np.arange(len(labels))).all()  # disjoint and complete
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for fold in folds:
        counts = np.bincount(labels[fold], minlength=4)
        expected = np.bincount(labels) / k
        assert (np.abs(counts - expected) < 1).all()
    again = stratified_folds(labels, k, seed=3)
    assert all((a == b).all() for a, b in zip(folds, again, strict=True))


def test_stratified_folds_refuse_one_fold() -> None:
    with pytest.raises(ValueError, match="k >= 2"):
        stratified_folds(np.zeros(10, dtype=np.int64), 1, seed=0)
