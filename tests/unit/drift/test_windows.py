"""Tests for atelier.drift.windows: bounded sliding windows and the since-live reservoir."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from atelier.drift.windows import SINCE_LIVE, RecordWindow, ReservoirWindow, Windows
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


def test_record_window_keeps_last_size_in_order() -> None:
    w = RecordWindow(5)
    assert len(w) == 0 and w.frame().empty
    w.add(make(3))
    assert len(w) == 3
    assert list(w.frame()["brightness"]) == [0, 1, 2]
    w.add(make(4, start=3))
    assert len(w) == 5
    assert list(w.frame()["brightness"]) == [2, 3, 4, 5, 6]
    assert w.keys() == [(f"r{i}", 0) for i in range(2, 7)]
    w.add(make(12, start=7))  # more than the window at once
    assert list(w.frame()["brightness"]) == [14, 15, 16, 17, 18]
    df = w.frame()
    assert list(df.columns) == list(ALL_FEATURES)
    assert df["predicted_class"].dtype == np.int64
    assert df["brightness"].dtype == np.float64


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


def test_windows_add_reset_names() -> None:
    ws = Windows({"last_10": 10, "last_100": 100}, reservoir_capacity=50)
    assert ws.names() == ["last_10", "last_100", SINCE_LIVE]
    ws.add(make(250))
    assert len(ws["last_10"]) == 10 and len(ws["last_100"]) == 100
    since = ws[SINCE_LIVE]
    assert isinstance(since, ReservoirWindow) and since.seen == 250 and len(since) == 50
    assert list(ws.frame("last_10")["brightness"]) == list(range(240, 250))
    assert [ws.count(n) for n in ws.names()] == [10, 100, 250]
    ws.reset()
    assert len(ws["last_10"]) == 0 and len(ws["last_100"]) == 0
    assert ws.since_live.seen == 0 and len(ws.since_live) == 0
    assert ws.since_live.mean("brightness") is None
    assert ws.since_live.class_counts(10).sum() == 0
    ws.add(make(3, start=1000))
    assert list(ws.frame("last_10")["brightness"]) == [1000, 1001, 1002]
    assert ws.since_live.mean("brightness") == pytest.approx(1001)
    with pytest.raises(ValueError):
        Windows({SINCE_LIVE: 5}, reservoir_capacity=5)
