"""atelier.drift.reports_store: atomic writes, latest copies, retention, safe lookups."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atelier.drift import reports_store
from atelier.drift.report import DriftMethods, DriftResult, FeatureDrift, run_drift
from atelier.drift.reports_store import (
    REPORT_ID_PATTERN,
    ReportNotFoundError,
    ReportStore,
    ReportWriteError,
)
from atelier.runtime.features import ALL_FEATURES

pytestmark = pytest.mark.unit


def fake_result(html: str | None = "<html>report</html>", severity: str = "ok") -> DriftResult:
    """A DriftResult without running Evidently (fast), with one non-finite statistic."""
    return DriftResult(
        drift_share=0.0,
        drifted_count=0,
        dataset_drift=False,
        per_feature={f: FeatureDrift(0.5, False, "ks", 0.05) for f in ALL_FEATURES},
        rows_reference=100,
        rows_current=50,
        confidence_z=float("-inf"),
        confidence_shift=-0.3,
        confidence_severity="critical",
        class_js=0.01,
        class_mix_p_value=0.9,
        class_severity="ok",
        class_share_reference=[0.1] * 10,
        class_share_current=[0.1] * 10,
        severity=severity,  # type: ignore[arg-type]
        methods=DriftMethods(),
        elapsed_seconds=0.1,
        html=html,
        evidently_json={"metrics": [{"value": float("nan")}]},
    )


def test_write_creates_report_and_latest(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "reports")
    report_id = store.write(fake_result(), window="1h", model_version="v3")
    assert REPORT_ID_PATTERN.match(report_id) and report_id.endswith("-1h")
    data = json.loads((tmp_path / "reports" / f"{report_id}.json").read_text())
    assert data["id"] == report_id
    assert (data["window"], data["model_version"], data["severity"]) == ("1h", "v3", "ok")
    assert data["confidence_z"] is None  # -inf is not JSON
    assert data["evidently"] == {"metrics": [{"value": None}]}
    assert data["per_feature"]["brightness"] == {
        "score": 0.5,
        "drifted": False,
        "method": "ks",
        "threshold": 0.05,
    }
    assert store.path("latest", "json").read_bytes() == store.path(report_id, "json").read_bytes()
    assert store.path("latest", "html").read_text() == "<html>report</html>"
    assert not list((tmp_path / "reports").glob("*.tmp")) and not list(
        (tmp_path / "reports").glob(".*")
    )


def test_list_is_newest_first(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    first = store.write(fake_result(severity="ok"), "1h", "v1")
    second = store.write(fake_result(severity="warning", html=None), "24h", "v1")
    listed = store.list()
    assert [r["id"] for r in listed] == [second, first]
    assert listed[0]["severity"] == "warning" and listed[0]["window"] == "24h"
    assert listed[0]["files"] == [f"{second}.json"]
    assert listed[1]["files"] == [f"{first}.html", f"{first}.json"]
    assert listed[0]["drift_share"] == 0.0 and listed[0]["created"]
    # A report without HTML must not leave an older latest.html behind.
    with pytest.raises(ReportNotFoundError):
        store.path("latest", "html")
    assert json.loads(store.path("latest", "json").read_text())["id"] == second


def test_retention_prunes_oldest_and_keeps_latest(tmp_path: Path) -> None:
    store = ReportStore(tmp_path, retention=3)
    ids = [store.write(fake_result(), "1h", "v1") for _ in range(5)]
    assert [r["id"] for r in store.list()] == list(reversed(ids[-3:]))
    assert not (tmp_path / f"{ids[0]}.html").exists()
    assert not (tmp_path / f"{ids[1]}.json").exists()
    assert json.loads(store.path("latest", "json").read_text())["id"] == ids[-1]
    with pytest.raises(ValueError):
        ReportStore(tmp_path, retention=0)


def test_write_never_prunes_the_report_just_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when the clock went backwards and the new id sorts oldest."""
    store = ReportStore(tmp_path, retention=1)
    later = store.write(fake_result(), "1h", "v1")
    monkeypatch.setattr(
        reports_store, "make_report_id", lambda created, w: f"20000101T000000000000-{w}"
    )
    earlier = store.write(fake_result(), "1h", "v1")
    assert [r["id"] for r in store.list()] == [earlier]
    assert not (tmp_path / f"{later}.json").exists()


@pytest.mark.parametrize(
    "bad",
    ["../etc/passwd", "..", "latest/../x", "20260101T000000000000-1h/../../x", "", "a.json"],
)
def test_path_refuses_non_ids(tmp_path: Path, bad: str) -> None:
    store = ReportStore(tmp_path)
    store.write(fake_result(), "1h", "v1")
    with pytest.raises(ReportNotFoundError) as info:
        store.path(bad, "json")
    assert info.value.kind == "report_not_found" and info.value.http_status == 404


def test_path_refuses_unknown_ext_and_missing_report(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    report_id = store.write(fake_result(), "1h", "v1")
    assert store.path(report_id, "html").name == f"{report_id}.html"
    with pytest.raises(ReportNotFoundError):
        store.path(report_id, "py")
    with pytest.raises(ReportNotFoundError):
        store.path("20000101T000000000000-1h", "json")
    with pytest.raises(ValueError):
        store.write(fake_result(), "../1h", "v1")


def test_read_only_directory_raises_write_error(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    first = store.write(fake_result(), "1h", "v1")
    before = set(os.listdir(tmp_path))
    tmp_path.chmod(0o500)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as root: chmod does not make the folder read-only")
        with pytest.raises(ReportWriteError) as info:
            store.write(fake_result(), "1h", "v1")
    finally:
        tmp_path.chmod(0o700)
    assert info.value.kind == "report_write_failed"
    assert "Permission denied" in info.value.message
    assert set(os.listdir(tmp_path)) == before
    assert json.loads(store.path("latest", "json").read_text())["id"] == first


def test_full_disk_leaves_latest_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while staging latest.json: the new report is removed, latest.* unchanged."""
    store = ReportStore(tmp_path)
    first = store.write(fake_result(html="<html>first</html>"), "1h", "v1")
    before = set(os.listdir(tmp_path))
    real_stage = ReportStore._stage

    def failing_stage(self: ReportStore, name: str, data: bytes) -> Path:
        if name == "latest.json":
            raise OSError(28, "No space left on device")
        return real_stage(self, name, data)

    monkeypatch.setattr(ReportStore, "_stage", failing_stage)
    with pytest.raises(ReportWriteError, match="No space left"):
        store.write(fake_result(html="<html>second</html>"), "1h", "v1")
    assert set(os.listdir(tmp_path)) == before
    assert store.path("latest", "html").read_text() == "<html>first</html>"
    assert json.loads(store.path("latest", "json").read_text())["id"] == first


def test_real_report_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def frame(n: int) -> pd.DataFrame:
        data = {f: rng.normal(0.5, 0.1, n) for f in ALL_FEATURES}
        data["predicted_class"] = rng.integers(0, 10, n).astype(np.float64)
        return pd.DataFrame(data)

    result = run_drift(frame(300), frame(200), DriftMethods(), num_classes=10, with_html=True)
    store = ReportStore(tmp_path)
    report_id = store.write(result, "15m", "v1")
    data = json.loads(store.path(report_id, "json").read_text())
    assert data["evidently"]["metrics"]
    assert data["rows_reference"] == 300 and data["rows_current"] == 200
    assert store.path(report_id, "html").stat().st_size > 1000
