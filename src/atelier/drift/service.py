"""The drift sidecar's engine: ingest the spool, keep windows, run reports off the ingest path.

Two threads. The ingest thread polls the spool, feeds the windows and the prediction log,
commits the read position, and switches reference when a new model version shows up. The
report thread wakes every second and, when enough records or time have passed, copies the
windows and runs the drift reports, so a slow report never stops ingestion.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from atelier.drift.feedback import FeedbackBook, PredictionLog
from atelier.drift.ingest import SpoolFollower
from atelier.drift.reference import (
    Reference,
    ReferenceUnavailableError,
    VersionCatalog,
    load_reference,
)
from atelier.drift.report import SEVERITY_LEVEL, NotEnoughDataError, grade, run_drift
from atelier.drift.reports_store import ReportStore, ReportWriteError
from atelier.drift.record_model import RecordGate
from atelier.drift.settings import DriftSettings
from atelier.drift.windows import Windows

log = logging.getLogger(__name__)

SINCE_LIVE = "since_live"


@dataclass
class WindowStatus:
    severity: str = "unknown"
    drift_share: float | None = None
    report_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class DriftMetrics:
    """Every gauge and counter the sidecar exports, in its own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        w = ["window"]
        self.drift_share = Gauge("atelier_drift_share", "Share of drifted features", w, registry=r)
        self.drifted = Gauge(
            "atelier_drift_drifted_features", "Drifted feature count", w, registry=r
        )
        self.feature_score = Gauge(
            "atelier_drift_feature_score",
            "Per-feature drift score (p-value for ks, distance otherwise)",
            [*w, "feature", "method"],
            registry=r,
        )
        self.feature_drifted = Gauge(
            "atelier_drift_feature_drifted", "1 if the feature drifted", [*w, "feature"], registry=r
        )
        self.confidence_z = Gauge(
            "atelier_drift_confidence_zscore",
            "z-score of the mean confidence against the reference",
            w,
            registry=r,
        )
        self.class_js = Gauge(
            "atelier_drift_class_js_distance",
            "Jensen-Shannon distance of the predicted-class mix to the reference",
            w,
            registry=r,
        )
        self.class_share = Gauge(
            "atelier_drift_class_share",
            "Share of predictions per class: source=current (the window) or reference",
            [*w, "class_name", "source"],
            registry=r,
        )
        self.live_accuracy = Gauge(
            "atelier_drift_live_accuracy",
            "Accuracy of predictions that got feedback",
            w,
            registry=r,
        )
        self.labelled = Gauge(
            "atelier_drift_labelled_records",
            "Predictions with feedback in the window",
            w,
            registry=r,
        )
        self.reference_accuracy = Gauge(
            "atelier_drift_reference_accuracy", "Test accuracy of the served version", registry=r
        )
        self.severity = Gauge(
            "atelier_drift_severity", "0 ok, 1 warning, 2 critical, -1 no data", w, registry=r
        )
        self.window_records = Gauge(
            "atelier_drift_window_records", "Records in the window", w, registry=r
        )
        self.ingested = Counter(
            "atelier_drift_records_ingested", "Feature records ingested", registry=r
        )
        self.malformed = Counter(
            "atelier_drift_malformed_lines", "Spool lines skipped as malformed", registry=r
        )
        self.unknown_schema = Counter(
            "atelier_drift_unknown_schema_records",
            "Records of an unknown format version",
            registry=r,
        )
        self.duplicates = Counter(
            "atelier_drift_duplicate_records", "Records skipped as already counted", registry=r
        )
        self.refused = Counter(
            "atelier_drift_refused_records",
            "Records refused by reason: invalid (at /ingest), unknown_model, unknown_version, "
            "class_out_of_range",
            ["reason"],
            registry=r,
        )
        self.lag_bytes = Gauge(
            "atelier_drift_read_lag_bytes", "Spool bytes not read yet", registry=r
        )
        self.lag_records = Gauge(
            "atelier_drift_read_lag_records",
            "Spool records not read yet (estimated from the mean line size)",
            registry=r,
        )
        self.report_errors = Counter(
            "atelier_drift_report_errors", "Reports that could not be written", registry=r
        )
        self.report_seconds = Histogram(
            "atelier_drift_report_seconds",
            "Time to compute and write one report",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.last_report = Gauge(
            "atelier_drift_last_report_timestamp_seconds",
            "Unix time of the last report",
            registry=r,
        )
        self.reference_info = Gauge(
            "atelier_drift_reference_info",
            "The reference in use",
            ["model_name", "model_version"],
            registry=r,
        )
        self.feedback = Counter(
            "atelier_drift_feedback", "Feedback requests by result", ["result"], registry=r
        )


class DriftService:
    def __init__(self, settings: DriftSettings) -> None:
        self.s = settings
        for d in (settings.state_dir, settings.reports_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.metrics = DriftMetrics()
        self.follower = SpoolFollower(settings.spool_dir, settings.state_dir / "spool-state.json",
                                      gate=RecordGate(VersionCatalog(settings.store)))  # fmt: skip
        self.windows = Windows(settings.windows, settings.reservoir)
        self.predictions = PredictionLog()
        self.feedback = FeedbackBook(self.predictions)
        self.store = ReportStore(settings.reports_dir, retention=settings.retention)
        self.methods = settings.methods
        self.reference: Reference | None = None
        self.not_ready_reason = "reference not loaded yet"
        self.status: dict[str, WindowStatus] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._since_report = 0
        self.last_report = 0.0  # when the last report was written (0: none yet)
        self._threads: list[threading.Thread] = []
        self._try_load_reference(None)

    # --- reference
    def _try_load_reference(self, version: str | None) -> bool:
        try:
            ref = load_reference(self.s.store, version)
        except ReferenceUnavailableError as exc:
            self.not_ready_reason = exc.message
            log.error("reference: %s", exc.message)
            return False
        with self._lock:
            old = self.reference
            self.reference = ref
            self.windows.reset()
            self.feedback.reset()
            self.status = {}
            self._since_report = 0
        if old is not None:
            self.metrics.reference_info.remove(old.model_name, old.version)
        self.metrics.reference_info.labels(ref.model_name, ref.version).set(1)
        self.metrics.reference_accuracy.set(ref.accuracy)
        log.info(
            "reference: model %s version %s (%d rows)",
            ref.model_name,
            ref.version,
            len(ref.profile),
        )
        return True

    def readiness(self) -> tuple[bool, str]:
        if self.reference is None:
            return False, self.not_ready_reason
        if not self.s.spool_dir.is_dir():
            return False, f"spool folder {self.s.spool_dir} does not exist"
        return True, f"reference {self.reference.model_name} version {self.reference.version}"

    # --- ingest
    def ingest_once(self) -> int:
        batch = self.follower.poll()
        m = self.metrics
        m.malformed.inc(batch.malformed)
        m.unknown_schema.inc(batch.unknown_schema)
        m.duplicates.inc(batch.duplicates)
        for reason, n in batch.refused.items():
            m.refused.labels(reason).inc(n)
        accepted = 0
        for version, records in _group_by_version(batch.records):
            ref = self.reference
            if (ref is None or version != ref.version) and not self._try_load_reference(version):
                # Without its reference these records cannot be judged; they are counted
                # as ingested and remembered for feedback, but fill no window.
                self.predictions.add(records)
                accepted += len(records)
                continue
            with self._lock:
                self.windows.add(records)
                self.predictions.add(records)
                self._since_report += len(records)
            accepted += len(records)
        self.follower.commit()
        m.ingested.inc(accepted)
        m.lag_bytes.set(batch.lag_bytes)
        mean_line = 400.0
        m.lag_records.set(round(batch.lag_bytes / mean_line))
        for name in self.windows.names():
            m.window_records.labels(name).set(self.windows.count(name))
        return accepted

    # --- reports
    def report_due(self) -> bool:
        if self._since_report >= self.s.report_every_records:
            return True
        return (
            self._since_report > 0 and time.time() - self.last_report >= self.s.report_every_seconds
        )

    def run_reports(self) -> dict[str, WindowStatus]:
        with self._lock:
            ref = self.reference
            frames = {name: self.windows.frame(name) for name in self.windows.names()}
            self._since_report = 0
            self.last_report = time.time()
        if ref is None:
            return {}
        out: dict[str, WindowStatus] = {}
        for name, frame in frames.items():
            t0 = time.perf_counter()
            try:
                result = run_drift(ref.profile, frame, self.methods, with_html=self.s.report_html,
                                   min_rows=self.s.min_rows,
                                   num_classes=ref.num_classes)  # fmt: skip
            except NotEnoughDataError as exc:
                out[name] = WindowStatus(
                    "no_data", detail={"reason": exc.message, "rows": len(frame)}
                )
                self.metrics.severity.labels(name).set(-1)
                continue
            status = self._publish(name, result, ref)
            try:
                status.report_id = self.store.write(result, name, ref.version)
            except ReportWriteError as exc:
                log.error("report for %s not written: %s", name, exc.message)
                self.metrics.report_errors.inc()
            self.metrics.report_seconds.observe(time.perf_counter() - t0)
            out[name] = status
        self.metrics.last_report.set(time.time())
        with self._lock:
            self.status = out
        return out

    def _publish(self, window: str, result: Any, ref: Reference) -> WindowStatus:
        m = self.metrics
        m.drift_share.labels(window).set(result.drift_share)
        m.drifted.labels(window).set(result.drifted_count)
        for feature, fd in result.per_feature.items():
            m.feature_score.labels(window, feature, fd.method).set(fd.score)
            m.feature_drifted.labels(window, feature).set(1 if fd.drifted else 0)
        m.confidence_z.labels(window).set(result.confidence_z)
        m.class_js.labels(window).set(result.class_js)
        for name, ref_share, cur_share in zip(
            ref.class_names, result.class_share_reference, result.class_share_current, strict=True
        ):
            m.class_share.labels(window, name, "reference").set(ref_share)
            m.class_share.labels(window, name, "current").set(cur_share)
        severity = result.severity
        acc, n = self.feedback.accuracy(None if window == SINCE_LIVE else self._window_size(window))
        m.labelled.labels(window).set(n)
        acc_grade = "ok"
        if acc is not None:
            m.live_accuracy.labels(window).set(acc)
            drop = (ref.accuracy - acc) * 100
            acc_grade = grade(drop, self.s.accuracy_warning_points, self.s.accuracy_critical_points)
            if drop < 0:
                acc_grade = "ok"
            if SEVERITY_LEVEL[acc_grade] > SEVERITY_LEVEL[severity]:
                severity = acc_grade
        m.severity.labels(window).set(SEVERITY_LEVEL[severity])
        return WindowStatus(severity, result.drift_share, detail={
            "drifted_count": result.drifted_count, "dataset_drift": result.dataset_drift,
            "confidence_z": result.confidence_z, "class_js": result.class_js,
            "live_accuracy": acc, "labelled": n, "reference_accuracy": ref.accuracy,
            "accuracy_grade": acc_grade, "rows": result.rows_current,
        })  # fmt: skip

    def _window_size(self, window: str) -> int:
        return self.s.windows[window]

    # --- feedback: labels move live accuracy right away, not at the next report
    def refresh_accuracy(self) -> None:
        ref = self.reference
        if ref is None:
            return
        for window in self.windows.names():
            acc, n = self.feedback.accuracy(
                None if window == SINCE_LIVE else self._window_size(window)
            )
            self.metrics.labelled.labels(window).set(n)
            if acc is not None:
                self.metrics.live_accuracy.labels(window).set(acc)

    # --- threads
    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._ingest_loop, name="drift-ingest", daemon=True),
            threading.Thread(target=self._report_loop, name="drift-report", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _ingest_loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.ingest_once()
            except Exception:  # keep ingesting whatever one poll hit
                log.exception("ingest failed; retrying")
                n = 0
            if n == 0:
                self._stop.wait(self.s.poll_interval_s)

    def _report_loop(self) -> None:
        while not self._stop.wait(1.0):
            if self.report_due():
                try:
                    self.run_reports()
                except Exception:
                    log.exception("report failed")
                    self.metrics.report_errors.inc()


def _group_by_version(
    records: Sequence[Mapping[str, Any]],
) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Consecutive runs of records by model version, in order."""
    groups: list[tuple[str, list[Mapping[str, Any]]]] = []
    for rec in records:
        v = str(rec.get("model_version"))
        if groups and groups[-1][0] == v:
            groups[-1][1].append(rec)
        else:
            groups.append((v, [rec]))
    return groups
