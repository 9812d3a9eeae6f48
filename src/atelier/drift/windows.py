"""The since-live window: everything since a model version went live, in bounded memory.

A uniform reservoir sample (Algorithm R) of fixed capacity plus exact streaming moments
(Welford/Chan) and exact predicted-class counts. Columns are
`atelier.runtime.features.ALL_FEATURES`, in that order. The sliding windows (the last N
records) are queries on the inference log (`atelier.drift.inference_log`). The reporter
saves the reservoir in the log (`to_bytes`) so a new reporter resumes it.
"""

from __future__ import annotations

import io
import json
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


def frame_of(values: np.ndarray) -> pd.DataFrame:
    """A frame with columns ALL_FEATURES (predicted_class as int) from (N, F) rows."""
    df = pd.DataFrame(values, columns=list(ALL_FEATURES))
    df["predicted_class"] = df["predicted_class"].astype(np.int64)
    return df


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
        return frame_of(self._sample[: self._filled].copy())

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

    def to_bytes(self) -> bytes:
        """The whole state, random stream included, as an ``.npz``."""
        buf = io.BytesIO()
        np.savez(
            buf,
            meta=np.array([self.capacity, self.seed, self._filled, self.seen], dtype=np.int64),
            sample=self._sample[: self._filled],
            mean=self._mean,
            m2=self._m2,
            classes=self._classes,
            rng=np.frombuffer(json.dumps(self._rng.bit_generator.state).encode(), np.uint8),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReservoirWindow:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            capacity, seed, filled, seen = (int(x) for x in z["meta"])
            window = cls(capacity, seed=seed)
            window._sample[:filled] = z["sample"]
            window._filled, window.seen = filled, seen
            window._mean, window._m2 = z["mean"].copy(), z["m2"].copy()
            window._classes = z["classes"].astype(np.int64)
            window._rng.bit_generator.state = json.loads(z["rng"].tobytes().decode())
        return window

    def clear(self) -> None:
        """Forget everything; the sampling stream restarts from ``seed``."""
        self._rng = np.random.default_rng(self.seed)
        self._filled = 0
        self.seen = 0
        self._mean = np.zeros(len(ALL_FEATURES))
        self._m2 = np.zeros(len(ALL_FEATURES))
        self._classes = np.zeros(0, dtype=np.int64)
