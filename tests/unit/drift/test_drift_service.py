"""DriftService in-process: two sidecars (two pods' spools) sharing one inference log.

Shipping, feedback from either pod, the reporter lease, per-version windows and reports
served by both. The same behaviour against a real PostgreSQL is in
tests/integration/test_drift_replicas.py.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from atelier.drift.service import DriftService
from atelier.drift.settings import DriftSettings
from atelier.runtime.errors import UnknownRequestError
from atelier.runtime.records import FeatureSpool, make_records
from atelier.training.archive import archive_run
from atelier.training.loop import RunResult
from support.drift_store import publish_version
from support.drift_store import records as store_records

pytestmark = pytest.mark.unit


def settings(tmp: Path, store: Path, pod: str, db: str, **kw: object) -> DriftSettings:
    return DriftSettings(
        spool_dir=tmp / pod / "spool", store=store, state_dir=tmp / pod / "state",
        database_url=db, pod_name=pod, min_rows=50, report_html=False,
        report_every_records=100, feedback_settle_s=0.5, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def write(spool_dir: Path, version: str, n: int, prefix: str) -> list[dict]:
    rng = np.random.default_rng(len(prefix) + n)
    probs = rng.dirichlet(np.ones(10), n)
    feats = {
        "brightness": rng.uniform(0.2, 0.4, n), "contrast": rng.uniform(0.3, 0.4, n),
        "ink_fraction": rng.uniform(0.4, 0.6, n), "edge_density": rng.uniform(0.05, 0.1, n),
        "center_x": rng.uniform(0.45, 0.55, n), "center_y": rng.uniform(0.45, 0.55, n),
        "predicted_class": probs.argmax(1).astype(float), "confidence": probs.max(1),
        "entropy": rng.uniform(0, 2, n),
    }  # fmt: skip
    spool_dir.mkdir(parents=True, exist_ok=True)
    spool = FeatureSpool(spool_dir)
    records = make_records(f"{prefix}-0", "v2", "fashion-mnist", version, feats, 0, n)
    assert spool.write(records)
    spool.close()
    return records


@pytest.fixture
def store(smoke_run: RunResult, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    archive_run(smoke_run.run_dir, store)
    return store


@pytest.fixture
def pair(store: Path, tmp_path: Path) -> tuple[DriftService, DriftService]:
    db = f"sqlite:///{tmp_path / 'log.db'}"
    a = DriftService(settings(tmp_path, store, "pod-a", db))
    b = DriftService(settings(tmp_path, store, "pod-b", db))
    assert a.migrate() and b.migrate()
    yield a, b
    a.log.close()
    b.log.close()


def test_no_model_means_not_ready(tmp_path: Path) -> None:
    s = settings(tmp_path, tmp_path / "empty-store", "p", f"sqlite:///{tmp_path / 'l.db'}")
    service = DriftService(s)
    assert service.migrate()
    ready, reason = service.readiness()
    assert not ready
    assert "CURRENT.json does not exist" in reason


def test_two_pods_ship_into_one_log_and_feedback_joins_from_either(
    pair: tuple[DriftService, DriftService], tmp_path: Path
) -> None:
    a, b = pair
    ra = write(tmp_path / "pod-a" / "spool", "1", 120, "a")
    rb = write(tmp_path / "pod-b" / "spool", "1", 80, "b")
    assert a.ship_once() == 120 and b.ship_once() == 80
    assert a.log.count("fashion-mnist", "1") == 200
    assert a.ship_once() == 0  # the position was committed: nothing twice
    # A label for pod a's prediction sent to pod b, and the other way round.
    got = b.label(ra[5]["request_id"], ra[5]["index"], int(ra[5]["predicted_class"]))
    assert got.status == "joined" and got.correct is True
    wrong = (int(rb[7]["predicted_class"]) + 1) % 10
    got = a.label(rb[7]["request_id"], rb[7]["index"], wrong)
    assert got.status == "joined" and got.correct is False
    assert a.log.version_accuracy("fashion-mnist", "1") == (0.5, 2)
    # Relabelling replaces, never double-counts.
    b.label(rb[7]["request_id"], rb[7]["index"], int(rb[7]["predicted_class"]))
    assert a.log.version_accuracy("fashion-mnist", "1") == (1.0, 2)


def test_unknown_id_is_404_once_every_shipper_is_caught_up(
    pair: tuple[DriftService, DriftService],
) -> None:
    a, b = pair
    a.ship_once()  # a heartbeat from before the label: pod a may still hold it
    assert a.label("never-served", 0, 1).status == "pending"
    a.start()
    b.start()  # both shippers heartbeat every poll: "nothing left"
    try:
        with pytest.raises(UnknownRequestError):
            a.label("never-served-either", 0, 1)
    finally:
        a.stop()
        b.stop()


def test_a_label_before_its_prediction_is_kept_then_joined(
    pair: tuple[DriftService, DriftService], tmp_path: Path
) -> None:
    a, b = pair
    a.ship_once()
    b.ship_once()
    records = write(tmp_path / "pod-b" / "spool", "1", 60, "late")
    # pod b has not shipped since: its heartbeat is older than the label, so the label waits.
    b.log.heartbeat("pod-b", lag_records=60, shipped_total=0)
    got = a.label(records[3]["request_id"], 3, "Trouser")
    assert got.status == "pending"
    assert a.log.pending_count() == 1
    b.ship_once()
    assert a.lead_once()  # the reporter joins kept labels
    assert a.log.pending_count() == 0
    assert a.log.labelled_count() == 1


def test_a_record_written_while_a_batch_ships_is_not_called_shipped(
    pair: tuple[DriftService, DriftService], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    write(tmp_path / "pod-a" / "spool", "1", 10, "first")
    real = a.log.ship
    label_sent: list[float] = []

    def ship_while_serving(records: list[dict], pod: str) -> int:
        n = real(records, pod)
        write(tmp_path / "pod-a" / "spool", "1", 1, "late")  # answered meanwhile...
        label_sent.append(time.time())  # ...and its label sent at once
        return n

    monkeypatch.setattr(a.log, "ship", ship_while_serving)
    a.ship_once()
    b.ship_once()
    # What /feedback answers 404 on: every live shipper said "empty spool" after the label
    # arrived. Pod a's said so as of its poll, before the late record was written.
    assert not a.log.shippers_caught_up(label_sent[0], alive_within_s=600)
    a.ship_once()
    assert a.log.shippers_caught_up(label_sent[0], alive_within_s=600)


def test_a_label_joins_a_prediction_shipped_while_it_looked(
    pair: tuple[DriftService, DriftService], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    records = write(tmp_path / "pod-a" / "spool", "1", 5, "racing")
    real = a.log.shippers_caught_up

    def ship_first(since: float, alive_within_s: float) -> bool:
        a.ship_once()  # pod a's shipper runs between the look-up and this check
        b.ship_once()
        return real(since, alive_within_s)

    monkeypatch.setattr(a.log, "shippers_caught_up", ship_first)
    assert a.label(records[2]["request_id"], 2, 1).status == "joined"


def test_one_reporter_at_a_time_and_takeover_after_the_lease(store: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'log.db'}"
    a = DriftService(settings(tmp_path, store, "pod-a", db, reporter_lease_s=2))
    b = DriftService(settings(tmp_path, store, "pod-b", db, reporter_lease_s=2))
    assert a.migrate() and b.migrate()
    write(tmp_path / "pod-a" / "spool", "1", 150, "a")
    a.ship_once()
    assert a.lead_once() and not b.lead_once()
    assert a.metrics.severity.labels("1", "last_1000")._value.get() in (0, 1, 2)
    assert a.metrics.window_records.labels("1", "last_1000")._value.get() == 150
    assert not b.metrics.severity._metrics  # only the reporter exports per-version gauges
    reports = b.log.list_reports()
    assert {r["window"] for r in reports} >= {"last_1000", "since_live"}
    assert b.log.report(None) is not None  # any pod serves the newest report
    # pod a stops renewing (killed): after the lease runs out, b takes over.
    time.sleep(2.2)
    assert b.lead_once()
    assert not a.lead_once()  # a is back: it lost the lease, and its gauges are gone
    assert not a.metrics.severity._metrics and a.reporter is None
    # b resumed the since-live reservoir from the log instead of starting over.
    assert b.reporter is not None
    write(tmp_path / "pod-b" / "spool", "1", 100, "b")
    b.ship_once()
    b.lead_once()
    assert b.metrics.window_records.labels("1", "since_live")._value.get() == 250


def test_each_version_has_its_own_windows(
    smoke_run: RunResult, store: Path, pair: tuple[DriftService, DriftService], tmp_path: Path
) -> None:
    a, _ = pair
    write(tmp_path / "pod-a" / "spool", "1", 120, "v1")
    a.ship_once()
    archive_run(smoke_run.run_dir, store)  # version 2 goes live
    write(tmp_path / "pod-a" / "spool", "2", 110, "v2")
    a.ship_once()
    assert a.lead_once()
    assert a.metrics.window_records.labels("1", "last_1000")._value.get() == 120
    assert a.metrics.window_records.labels("2", "last_1000")._value.get() == 110


def test_a_version_that_is_no_longer_served_is_retired(
    smoke_run: RunResult, store: Path, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'log.db'}"
    a = DriftService(settings(tmp_path, store, "pod-a", db, retire_after_s=0.5))
    assert a.migrate()
    write(tmp_path / "pod-a" / "spool", "1", 120, "v1")
    a.ship_once()
    assert a.lead_once()
    assert ("1", "last_1000") in a.metrics.severity._metrics
    time.sleep(0.6)
    a.lead_once()  # version 1 is still the current one: kept however idle
    assert ("1", "last_1000") in a.metrics.severity._metrics
    archive_run(smoke_run.run_dir, store)  # version 2 goes live; 1 gets no more records
    write(tmp_path / "pod-a" / "spool", "2", 110, "v2")
    a.ship_once()
    a.lead_once()
    time.sleep(0.6)
    a.lead_once()
    versions = {labels[0] for labels in a.metrics.severity._metrics}
    assert versions == {"2"}
    assert not any(labels[0] == "1" for labels in a.metrics.class_share._metrics)


def test_database_outage_delays_and_loses_nothing(
    pair: tuple[DriftService, DriftService], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atelier.runtime.errors import DatabaseUnavailableError

    a, _ = pair
    write(tmp_path / "pod-a" / "spool", "1", 90, "o")
    real = a.log.ship

    def down(*args: object, **kwargs: object) -> int:
        raise DatabaseUnavailableError("connection refused")

    monkeypatch.setattr(a.log, "ship", down)
    with pytest.raises(DatabaseUnavailableError):
        a.ship_once()
    assert a.metrics.ship_errors.labels("database_unavailable")._value.get() == 1
    assert a.metrics.lag_records._value.get() == 90  # the unshipped batch is lag
    monkeypatch.setattr(a.log, "ship", real)
    assert a.ship_once() == 90  # the batch is read again from the committed position
    assert a.log.count() == 90


# --- A model store made without training (tests/support/drift_store.py) -----------------


def spool(spool_dir: Path, recs: list[dict]) -> None:
    spool_dir.mkdir(parents=True, exist_ok=True)
    writer = FeatureSpool(spool_dir)
    assert writer.write(recs)
    writer.close()


def lone(tmp_path: Path, store: Path) -> DriftService:
    service = DriftService(settings(tmp_path, store, "p", f"sqlite:///{tmp_path / 'l.db'}"))
    assert service.migrate()
    return service


@pytest.mark.parametrize("k", [3, 12])
def test_reports_have_one_class_share_per_class_of_the_model(tmp_path: Path, k: int) -> None:
    store = tmp_path / "store"
    publish_version(store, "1", k)
    service = lone(tmp_path, store)
    spool(tmp_path / "p" / "spool", store_records(120, num_classes=k))
    assert service.ship_once() == 120
    assert service.lead_once()
    shares = {
        (s.labels["class_name"], s.labels["source"]): s.value
        for metric in service.metrics.class_share.collect()
        for s in metric.samples
        if s.labels["window"] == "last_1000" and s.labels["model_version"] == "1"
    }
    names = [f"class-{i}" for i in range(k)]
    assert set(shares) == {(n, src) for n in names for src in ("current", "reference")}
    assert shares[(names[-1], "current")] == pytest.approx(1 / k, abs=0.02)
    assert sum(shares[(n, "current")] for n in names) == pytest.approx(1.0)


def test_bad_records_in_the_spool_cost_only_themselves(tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_version(store, "1", 10)
    service = lone(tmp_path, store)
    good = store_records(100)
    bad = [dict(good[0], request_id="huge", predicted_class=2**62),
           dict(good[0], request_id="big", predicted_class=10**7),
           dict(good[0], request_id="k", predicted_class=10),
           dict(good[0], request_id="v", model_version="9")]  # fmt: skip
    spool(tmp_path / "p" / "spool", good[:60] + bad + good[60:])
    assert service.ship_once() == 100
    m = service.metrics
    assert m.shipped._value.get() == 100 and service.log.count() == 100
    assert m.malformed._value.get() == 2
    assert m.refused.labels("class_out_of_range")._value.get() == 1
    assert m.refused.labels("unknown_version")._value.get() == 1
    assert service.ship_once() == 0  # the position was committed past them


def test_a_shipping_sidecar_does_not_load_the_reporters_libraries() -> None:
    """Only the elected reporter needs pandas, scipy and Evidently (hundreds of MB per pod)."""
    code = (
        "import sys\n"
        "from atelier.drift.app import create_app\n"
        "from atelier.drift.service import DriftService\n"
        "from atelier.drift.settings import from_args\n"
        "print(sorted(m for m in ('pandas', 'scipy', 'evidently', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_sampled_input_lands_in_the_log_with_its_record(tmp_path: Path) -> None:
    from sqlalchemy import select

    from atelier.drift import schema

    store = tmp_path / "store"
    publish_version(store, "1", 10)
    service = lone(tmp_path, store)
    recs = store_records(3)
    images = np.arange(3 * 784, dtype=np.uint32).astype(np.uint8).reshape(3, 1, 28, 28)
    recs[1]["input"] = base64.b64encode(images[1].tobytes()).decode()
    spool(tmp_path / "p" / "spool", recs)
    assert service.ship_once() == 3
    t = schema.inference_log.c
    with service.log.engine.connect() as conn:
        rows = dict(conn.execute(select(t.idx, t.input)).all())
    assert rows == {0: None, 1: images[1].tobytes(), 2: None}


def test_a_kept_label_whose_prediction_never_comes_expires(
    pair: tuple[DriftService, DriftService],
) -> None:
    a, _ = pair
    a.log.add_pending("never-shipped", 0, 3)
    assert a.log.join_pending(wait_s=600) == (0, 0)  # still waiting
    assert a.log.pending_count() == 1
    time.sleep(0.05)
    assert a.log.join_pending(wait_s=0.01) == (0, 1)
    assert a.log.pending_count() == 0
