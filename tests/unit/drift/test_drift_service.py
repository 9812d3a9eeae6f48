"""DriftService in-process: readiness, version switches, reports that cannot be written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atelier.drift.reports_store import ReportWriteError
from atelier.drift.service import DriftService
from atelier.drift.settings import DriftSettings
from atelier.runtime.records import FeatureSpool, make_records
from atelier.training.archive import archive_run
from atelier.training.loop import RunResult
from support.drift_store import publish_version
from support.drift_store import records as store_records

pytestmark = pytest.mark.unit


def settings(tmp: Path, store: Path) -> DriftSettings:
    return DriftSettings(spool_dir=tmp / "spool", store=store, state_dir=tmp / "state",
                         reports_dir=tmp / "reports", min_rows=50, report_html=False)  # fmt: skip


def write(spool_dir: Path, version: str, n: int, prefix: str) -> None:
    rng = np.random.default_rng(len(prefix) + n)
    probs = rng.dirichlet(np.ones(10), n)
    feats = {
        "brightness": rng.uniform(0.2, 0.4, n), "contrast": rng.uniform(0.3, 0.4, n),
        "ink_fraction": rng.uniform(0.4, 0.6, n), "edge_density": rng.uniform(0.05, 0.1, n),
        "center_x": rng.uniform(0.45, 0.55, n), "center_y": rng.uniform(0.45, 0.55, n),
        "predicted_class": probs.argmax(1).astype(float), "confidence": probs.max(1),
        "entropy": rng.uniform(0, 2, n),
    }  # fmt: skip
    spool = FeatureSpool(spool_dir)
    spool.write(make_records(f"{prefix}-0", "v2", "fashion-mnist", version, feats, 0, n))
    spool.close()


def test_no_reference_means_not_ready(tmp_path: Path) -> None:
    service = DriftService(settings(tmp_path, tmp_path / "empty-store"))
    ready, reason = service.readiness()
    assert not ready
    assert "CURRENT.json does not exist" in reason


def test_a_new_model_version_switches_reference_and_windows(
    smoke_run: RunResult, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    archive_run(smoke_run.run_dir, store)
    service = DriftService(settings(tmp_path, store))
    (tmp_path / "spool").mkdir()
    assert service.readiness()[0]
    write(tmp_path / "spool", "1", 80, "a")
    assert service.ingest_once() == 80
    assert service.windows.count("last_1000") == 80
    archive_run(smoke_run.run_dir, store)  # version 2 goes live
    write(tmp_path / "spool", "2", 30, "b")
    assert service.ingest_once() == 30
    assert service.reference is not None and service.reference.version == "2"
    assert service.windows.count("last_1000") == 30  # new windows for the new version
    assert service.metrics.reference_info.labels("fashion-mnist", "2")._value.get() == 1


def test_an_unwritable_report_is_counted_and_ingestion_goes_on(
    smoke_run: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    archive_run(smoke_run.run_dir, store)
    service = DriftService(settings(tmp_path, store))
    (tmp_path / "spool").mkdir()

    def full_disk(*args: object, **kwargs: object) -> str:
        raise ReportWriteError("[Errno 28] No space left on device")

    monkeypatch.setattr(service.store, "write", full_disk)
    write(tmp_path / "spool", "1", 120, "c")
    service.ingest_once()
    status = service.run_reports()
    assert status["last_1000"].report_id is None
    assert status["last_1000"].severity in ("ok", "warning", "critical")
    assert service.metrics.report_errors._value.get() >= 1
    write(tmp_path / "spool", "1", 10, "d")
    assert service.ingest_once() == 10


# --- A model store made without training (tests/support/drift_store.py) -----------------


def spool(spool_dir: Path, recs: list[dict]) -> None:
    writer = FeatureSpool(spool_dir)
    assert writer.write(recs)
    writer.close()


@pytest.mark.parametrize("k", [3, 12])
def test_reports_have_one_class_share_per_class_of_the_model(tmp_path: Path, k: int) -> None:
    store = tmp_path / "store"
    publish_version(store, "1", k)
    service = DriftService(settings(tmp_path, store))
    spool(tmp_path / "spool", store_records(120, num_classes=k))
    assert service.ingest_once() == 120
    status = service.run_reports()["last_1000"]
    assert status.severity in ("ok", "warning", "critical"), status.detail
    shares = {
        (s.labels["class_name"], s.labels["source"]): s.value
        for metric in service.metrics.class_share.collect()
        for s in metric.samples
        if s.labels["window"] == "last_1000"
    }
    names = [f"class-{i}" for i in range(k)]
    assert set(shares) == {(n, src) for n in names for src in ("current", "reference")}
    assert shares[(names[-1], "current")] == pytest.approx(1 / k, abs=0.02)
    assert sum(shares[(n, "current")] for n in names) == pytest.approx(1.0)


def test_bad_records_in_the_spool_cost_only_themselves(tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_version(store, "1", 10)
    service = DriftService(settings(tmp_path, store))
    good = store_records(100)
    bad = [dict(good[0], request_id="huge", predicted_class=2**62),
           dict(good[0], request_id="big", predicted_class=10**7),
           dict(good[0], request_id="k", predicted_class=10),
           dict(good[0], request_id="v", model_version="9")]  # fmt: skip
    spool(tmp_path / "spool", good[:60] + bad + good[60:])
    assert service.ingest_once() == 100
    m = service.metrics
    assert m.ingested._value.get() == 100
    assert m.malformed._value.get() == 2
    assert m.refused.labels("class_out_of_range")._value.get() == 1
    assert m.refused.labels("unknown_version")._value.get() == 1
    assert service.windows.count("last_1000") == 100
    assert service.reference is not None and service.reference.version == "1"
    assert service.ingest_once() == 0  # the position was committed past them
