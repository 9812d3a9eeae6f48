"""Bounded windows of feature records: the last N, and everything since a model went live.

Every window keeps a fixed amount of memory whatever the traffic: the sliding windows are
ring buffers of their size, and "since live" is a uniform reservoir sample (Algorithm R)
of fixed capacity plus exact streaming moments (Welford/Chan) and exact predicted-class
counts. Columns are `atelier.runtime.features.ALL_FEATURES`, in that order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from atelier.runtime.features import ALL_FEATURES

SINCE_LIVE = "since_live"
_COLUMN = {name: i for i, name in enumerate(ALL_FEATURES)}
_CLASS_COL = _COLUMN["predicted_class"]


def records_to_array(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """An (N, len(ALL_FEATURES)) float64 array of the records' features."""
    if not records:
        return np.empty((0, len(ALL_FEATURES)), dtype=np.float64)
    return np.array([[r[f] for f in ALL_FEATURES] for r in records], dtype=np.float64)


def _frame(values: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(values, columns=list(ALL_FEATURES))
    df["predicted_class"] = df["predicted_class"].astype(np.int64)
    return df


class RecordWindow:
    """The last ``size`` records: features in a ring buffer, with their request keys."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        self._values = np.empty((size, len(ALL_FEATURES)), dtype=np.float64)
        self._keys: list[tuple[str, int] | None] = [None] * size
        self._next = 0  # slot the next record goes to
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append records, evicting the oldest once full."""
        self.add_array(records_to_array(records), [(r["request_id"], r["index"]) for r in records])

    def add_array(self, values: np.ndarray, keys: Sequence[tuple[str, int]]) -> None:
        """Append already-converted rows (shared conversion when several windows are fed)."""
        n = len(values)
        if n == 0:
            return
        if n > self.size:  # only the last `size` rows survive
            values, keys = values[-self.size :], keys[-self.size :]
            n = self.size
        first = min(n, self.size - self._next)
        self._values[self._next : self._next + first] = values[:first]
        self._keys[self._next : self._next + first] = keys[:first]
        rest = n - first
        if rest:
            self._values[:rest] = values[first:]
            self._keys[:rest] = keys[first:]
        self._next = (self._next + n) % self.size
        self._count = min(self.size, self._count + n)

    def _order(self) -> np.ndarray:
        """Slot indices oldest first."""
        if self._count < self.size:
            return np.arange(self._count)
        return (np.arange(self.size) + self._next) % self.size

    def values(self) -> np.ndarray:
        """(len, F) float64 copy, oldest first."""
        return self._values[self._order()]

    def keys(self) -> list[tuple[str, int]]:
        """(request_id, index) of the records, oldest first."""
        return [k for k in (self._keys[i] for i in self._order()) if k is not None]

    def frame(self) -> pd.DataFrame:
        """Columns ALL_FEATURES (predicted_class as int), oldest first."""
        return _frame(self.values())

    def clear(self) -> None:
        self._keys = [None] * self.size
        self._next = self._count = 0


class ReservoirWindow:
    """All records since a reset, as a uniform sample of ``capacity`` plus exact statistics.

    The sample (Algorithm R) gives distribution tests something representative of the whole
    period in bounded memory; the mean, standard deviation and class counts are exact.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self._sample = np.empty((capacity, len(ALL_FEATURES)), dtype=np.float64)
        self._rng: np.random.Generator
        self._filled: int
        self.seen: int
        self._mean: np.ndarray
        self._m2: np.ndarray
        self._classes: np.ndarray
        self.clear()

    def __len__(self) -> int:
        """Rows in the sample (at most ``capacity``); ``seen`` is the total count."""
        return self._filled

    def add(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.add_array(records_to_array(records))

    def add_array(self, values: np.ndarray) -> None:
        """Add rows: reservoir update, then Chan's merge of the batch's moments."""
        n = len(values)
        if n == 0:
            return
        # Reservoir: rows while not full go straight in; row t (1-based) afterwards replaces
        # a uniform slot j < t when j < capacity. Applied in order, so the last write wins.
        direct = min(n, self.capacity - self._filled)
        if direct:
            self._sample[self._filled : self._filled + direct] = values[:direct]
            self._filled += direct
        if direct < n:
            t = self.seen + np.arange(direct, n, dtype=np.int64) + 1  # 1-based totals
            j = self._rng.integers(0, t)
            take = j < self.capacity
            slots, rows = j[take], np.arange(direct, n)[take]
            if len(slots):
                # Several rows may hit one slot: keep the latest (numpy does not promise
                # which write wins in a fancy assignment with repeated indices).
                rev_slots, rev_rows = slots[::-1], rows[::-1]
                uniq, first = np.unique(rev_slots, return_index=True)
                self._sample[uniq] = values[rev_rows[first]]
        # Exact moments (Chan et al. parallel update of Welford's running mean and M2).
        b_mean = values.mean(axis=0)
        b_m2 = ((values - b_mean) ** 2).sum(axis=0)
        total = self.seen + n
        delta = b_mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + b_m2 + delta**2 * (self.seen * n / total)
        self.seen = total
        # Exact predicted-class counts.
        classes = values[:, _CLASS_COL].astype(np.int64)
        classes = classes[classes >= 0]
        if len(classes):
            counts = np.bincount(classes)
            if len(counts) > len(self._classes):
                grown = np.zeros(len(counts), dtype=np.int64)
                grown[: len(self._classes)] = self._classes
                self._classes = grown
            self._classes[: len(counts)] += counts

    def frame(self) -> pd.DataFrame:
        """The reservoir sample (at most ``capacity`` rows, in slot order)."""
        return _frame(self._sample[: self._filled].copy())

    def values(self) -> np.ndarray:
        return self._sample[: self._filled].copy()

    def mean(self, name: str) -> float | None:
        """Exact mean of a feature over all ``seen`` records (None before any)."""
        return float(self._mean[_COLUMN[name]]) if self.seen else None

    def std(self, name: str, ddof: int = 0) -> float | None:
        """Exact standard deviation (population by default, like numpy); None if undefined."""
        if self.seen - ddof <= 0:
            return None
        return float(np.sqrt(self._m2[_COLUMN[name]] / (self.seen - ddof)))

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Exact predicted-class counts, length ``num_classes``.

        Classes >= num_classes (a model with more classes than expected) are not in the
        vector, so its sum can be below ``seen``.
        """
        out = np.zeros(num_classes, dtype=np.int64)
        k = min(num_classes, len(self._classes))
        out[:k] = self._classes[:k]
        return out

    def clear(self) -> None:
        """Forget everything; the sampling stream restarts from ``seed``."""
        self._rng = np.random.default_rng(self.seed)
        self._filled = 0
        self.seen = 0
        self._mean = np.zeros(len(ALL_FEATURES))
        self._m2 = np.zeros(len(ALL_FEATURES))
        self._classes = np.zeros(0, dtype=np.int64)


class Windows:
    """Named sliding windows (e.g. ``{"last_1000": 1000}``) plus ``since_live``."""

    def __init__(self, sizes: Mapping[str, int], reservoir_capacity: int, seed: int = 0) -> None:
        if SINCE_LIVE in sizes:
            raise ValueError(f"window name {SINCE_LIVE!r} is reserved for the reservoir")
        self.sliding = {name: RecordWindow(size) for name, size in sizes.items()}
        self.since_live = ReservoirWindow(reservoir_capacity, seed=seed)

    def add(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Feed every window (the records are converted to an array once)."""
        if not records:
            return
        values = records_to_array(records)
        keys = [(r["request_id"], r["index"]) for r in records]
        for window in self.sliding.values():
            window.add_array(values, keys)
        self.since_live.add_array(values)

    def reset(self) -> None:
        """Empty every window, e.g. when a new model version goes live."""
        for window in self.sliding.values():
            window.clear()
        self.since_live.clear()

    def names(self) -> list[str]:
        """Sliding window names in the given order, then ``since_live``."""
        return [*self.sliding, SINCE_LIVE]

    def __getitem__(self, name: str) -> RecordWindow | ReservoirWindow:
        if name == SINCE_LIVE:
            return self.since_live
        return self.sliding[name]

    def frame(self, name: str) -> pd.DataFrame:
        """The window's rows (for ``since_live``: the reservoir sample)."""
        return self[name].frame()

    def count(self, name: str) -> int:
        """Records the window stands for: rows held, or for ``since_live`` all records seen."""
        if name == SINCE_LIVE:
            return self.since_live.seen
        return len(self.sliding[name])
