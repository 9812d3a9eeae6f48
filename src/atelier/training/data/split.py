"""Deterministic stratified splits and subsets."""

from __future__ import annotations

import numpy as np


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with ``fraction`` of every class held out.

    Every class with at least two members keeps one in each part. The result depends only
    on the labels, the fraction and the seed.
    """
    rng = np.random.default_rng(seed)
    rest: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_held = round(len(idx) * fraction)
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        rest.append(idx[n_held:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of about ``n`` items with the class mix of ``labels``."""
    if n >= len(labels):
        return np.arange(len(labels))
    _, subset = stratified_split(labels, n / len(labels), seed)
    return subset


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Indices of ``k`` disjoint folds that together cover ``labels``, each with about
    1/k of every class (stratified k-fold). Every class needs at least ``k`` members."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    offset = 0
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        # Rotate which folds get the remainder so fold sizes stay within one of each other.
        chunks = np.array_split(idx, k)
        for i, chunk in enumerate(chunks):
            parts[(i + offset) % k].append(chunk)
        offset += len(idx) % k
    return [np.sort(np.concatenate(p)) for p in parts]
