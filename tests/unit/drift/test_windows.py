"""Tests for atelier.drift.windows: bounded sliding windows and the since-live reservoir."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from atelier.drift.windows import ReservoirWindow
from atelier.runtime.features import ALL_FEATURES

pytestmark = pytest.mark.unit


def make(n: int, start: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """n spool-like records; brightness = the record's global number, for order checks."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        rec: dict[str, Any] = {name: float(rng.random()) for name in ALL_FEATURES}
        rec["brightness"] = float(i)
        rec["predicted_class"] = i % 10
        rec["request_id"] = f"r{i}"
        rec["index"] = 0
        out.append(rec)
    return out


def test_reservoir_is_bounded_and_moments_are_exact() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(100_000, len(ALL_FEATURES))) * 3 + 7
    data[:, ALL_FEATURES.index("predicted_class")] = rng.integers(0, 10, 100_000)
    r = ReservoirWindow(1000, seed=3)
    buffer_bytes = r._sample.nbytes
    for chunk in np.array_split(data, 137):
        r.add_array(chunk)
    assert r.seen == 100_000
    assert len(r) == 1000 and len(r.frame()) == 1000
    assert r._sample.nbytes == buffer_bytes  # memory does not grow
    for i, name in enumerate(ALL_FEATURES):
        assert r.mean(name) == pytest.approx(data[:, i].mean(), rel=1e-9, abs=1e-12)
        assert r.std(name) == pytest.approx(data[:, i].std(), rel=1e-9)
        assert r.std(name, ddof=1) == pytest.approx(data[:, i].std(ddof=1), rel=1e-9)
    classes = data[:, ALL_FEATURES.index("predicted_class")].astype(int)
    assert list(r.class_counts(10)) == list(np.bincount(classes, minlength=10))
    assert r.class_counts(3).sum() < r.seen  # classes >= 3 left out
    # The sample is rows of the data, and roughly uniform over the whole stream.
    sample = r.values()
    rows = {tuple(row) for row in data}
    assert all(tuple(row) in rows for row in sample)


def test_reservoir_sample_is_uniform_over_time() -> None:
    r = ReservoirWindow(2000, seed=0)
    for start in range(0, 100_000, 5_000):
        r.add(make(5_000, start=start)) if start < 10_000 else r.add_array(_rows(start, 5_000))
    positions = r.frame()["brightness"].to_numpy()
    # Each tenth of the stream holds about a tenth of the sample (binomial sd ~ 13).
    counts = np.histogram(positions, bins=10, range=(0, 100_000))[0]
    assert counts.min() > 140 and counts.max() < 260


def _rows(start: int, n: int) -> np.ndarray:
    values = np.zeros((n, len(ALL_FEATURES)))
    values[:, 0] = np.arange(start, start + n)
    return values


def test_reservoir_small_streams_and_empty() -> None:
    r = ReservoirWindow(10)
    assert r.mean("brightness") is None and r.std("brightness") is None
    r.add(make(4))
    assert len(r) == 4 and r.seen == 4
    assert sorted(r.frame()["brightness"]) == [0, 1, 2, 3]
    assert r.std("brightness", ddof=1) == pytest.approx(np.std([0, 1, 2, 3], ddof=1))


def test_reservoir_state_round_trips_and_resumes_the_same_stream() -> None:
    """A new reporter resumes the reservoir from the log: same sample, moments, counts and
    random stream as if one process had seen everything."""
    whole = ReservoirWindow(50, seed=3)
    whole.add(make(400))
    whole.add(make(300, start=400))
    resumed = ReservoirWindow(50, seed=3)
    resumed.add(make(400))
    resumed = ReservoirWindow.from_bytes(resumed.to_bytes())
    resumed.add(make(300, start=400))
    assert resumed.seen == whole.seen == 700
    np.testing.assert_array_equal(resumed.values(), whole.values())
    assert resumed.mean("brightness") == pytest.approx(whole.mean("brightness"))
    assert resumed.std("confidence") == pytest.approx(whole.std("confidence"))
    np.testing.assert_array_equal(resumed.class_counts(10), whole.class_counts(10))
