"""The drift sidecar's engine: ship the spool into the shared inference log, and report if elected.

Every sidecar runs two threads:

* **ship**: follow this pod's spool (durable position, rotation, dedupe), insert what it
  read into the inference log in one transaction per batch, and only then commit the spool
  position. A database outage delays records and loses none: the position stays where the
  last committed batch ended, and a retried batch cannot count twice (the log is unique on
  request id, index and model). Each loop also records a heartbeat with this pod's lag.
* **lead**: every second, take or renew the reporter lease. The holder (one sidecar across
  all replicas) joins kept labels, computes the windows per model version over every
  replica's records, runs the drift reports, grades drift and live accuracy, exports those
  gauges, stores the reports in the log and prunes it. Only the reporter imports
  Evidently, pandas and scipy (`atelier.drift.reporter`).

Feedback (`label`) is served by any sidecar: the label is written to the log row, or kept
until the prediction is shipped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from atelier.drift.inference_log import InferenceLog, LoggedPrediction, default_pod_name
from atelier.drift.ingest import SpoolFollower
from atelier.drift.record_model import RecordGate
from atelier.drift.reference import ModelSpec, VersionCatalog, current_version, model_spec
from atelier.runtime.errors import (
    AtelierError,
    DatabaseUnavailableError,
    ReferenceUnavailableError,
    UnknownRequestError,
)

if TYPE_CHECKING:
    from atelier.drift.reporter import Reporter
    from atelier.drift.settings import DriftSettings

log = logging.getLogger(__name__)


class DriftMetrics:
    """Every gauge and counter the sidecar exports, in its own registry.

    Per model version and window, and exported by the reporter only (so a dashboard never
    has to combine pods): the drift, severity and live-accuracy gauges. Per pod: shipping.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        w = ["model_version", "window"]
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
            "atelier_drift_live_accuracy", "Accuracy of predictions that got feedback", w,
            registry=r,
        )  # fmt: skip
        self.labelled = Gauge(
            "atelier_drift_labelled_records", "Predictions with feedback in the window", w,
            registry=r,
        )  # fmt: skip
        self.reference_accuracy = Gauge(
            "atelier_drift_reference_accuracy", "Test accuracy of the version",
            ["model_version"], registry=r,
        )  # fmt: skip
        self.severity = Gauge(
            "atelier_drift_severity", "0 ok, 1 warning, 2 critical, -1 no data", w, registry=r
        )
        self.window_records = Gauge(
            "atelier_drift_window_records", "Records in the window (all replicas)", w, registry=r
        )
        self.report_errors = Counter(
            "atelier_drift_report_errors", "Reports that could not be computed or stored",
            registry=r,
        )  # fmt: skip
        self.report_seconds = Histogram(
            "atelier_drift_report_seconds",
            "Time to compute and store one report",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.last_report = Gauge(
            "atelier_drift_last_report_timestamp_seconds",
            "Unix time of the last report (the reporter only)",
            registry=r,
        )
        self.reporter = Gauge(
            "atelier_drift_reporter", "1 while this sidecar holds the reporter lease", registry=r
        )
        self.labels_joined = Counter(
            "atelier_drift_labels_joined", "Kept labels joined to their prediction later",
            registry=r,
        )  # fmt: skip
        self.labels_expired = Counter(
            "atelier_drift_labels_expired",
            "Kept labels dropped: their prediction never arrived within label_wait_s",
            registry=r,
        )
        # --- per pod: shipping
        self.ingested = Counter(
            "atelier_drift_records_ingested", "Records read from this pod's spool", registry=r
        )
        self.shipped = Counter(
            "atelier_drift_records_shipped", "Records this pod inserted into the inference log",
            registry=r,
        )  # fmt: skip
        self.ship_errors = Counter(
            "atelier_drift_ship_errors", "Batches not shipped (retried later), by reason",
            ["reason"], registry=r,
        )  # fmt: skip
        self.db_seconds = Histogram(
            "atelier_drift_database_seconds",
            "Time of one inference-log statement batch, by operation",
            ["operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
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
            "atelier_drift_read_lag_bytes", "Spool bytes not shipped yet", registry=r
        )
        self.lag_records = Gauge(
            "atelier_drift_read_lag_records",
            "Spool records not shipped yet (estimated from the mean line size)",
            registry=r,
        )
        self.feedback = Counter(
            "atelier_drift_feedback", "Feedback requests by result", ["result"], registry=r
        )
        self.reporter_gauges = (
            self.drift_share, self.drifted, self.feature_score, self.feature_drifted,
            self.confidence_z, self.class_js, self.class_share, self.live_accuracy,
            self.labelled, self.reference_accuracy, self.severity, self.window_records,
        )  # fmt: skip

    def forget_version(self, version: str) -> None:
        """Drop every gauge of one model version (it was retired)."""
        for g in self.reporter_gauges:
            for labels in list(g._metrics):  # the client has no public way to list children
                if labels and labels[0] == version:
                    g.remove(*labels)

    def clear_reporter_gauges(self) -> None:
        """Drop every per-version gauge (this sidecar stopped reporting)."""
        for g in self.reporter_gauges:
            g.clear()
        self.last_report.set(0)


@dataclass(frozen=True)
class FeedbackResult:
    status: str  # "joined" or "pending"
    request_id: str
    index: int
    label: str
    correct: bool | None = None
    model_version: str | None = None


MEAN_LINE_BYTES = 400.0
# Recent (request_id, index) keys the spool follower remembers. The log's unique key is what
# keeps a record from counting twice; these only spare it obvious re-reads. The follower's
# default (200,000) cost a shipper 50 MB and 0.17 s of JSON per committed batch.
DEDUPE_KEYS = 10_000


class DriftService:
    def __init__(self, settings: DriftSettings) -> None:
        self.s = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = DriftMetrics()
        self.pod = settings.pod_name or default_pod_name()
        self.log = InferenceLog(settings.database)
        self.follower = self._new_follower()
        self.migrated = False
        self.not_ready_reason = "inference log not migrated yet"
        self.reporter: Reporter | None = None
        self.last_report = 0.0
        self.shipped_total = 0
        self._lag_records = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._specs: dict[str, ModelSpec] = {}
        self._lease_until = 0.0
        self.leading = False
        # Held while gauges are published or cleared, so a sidecar that lost the lease
        # never exports a version's gauges after clearing them.
        self._gauges = threading.RLock()

    def _new_follower(self) -> SpoolFollower:
        return SpoolFollower(
            self.s.spool_dir,
            self.s.state_dir / "spool-state.json",
            gate=RecordGate(VersionCatalog(self.s.store)),
            dedupe_keys=DEDUPE_KEYS,
        )

    # --- readiness -----------------------------------------------------------------------

    def migrate(self) -> bool:
        try:
            head = self.log.migrate()
        except DatabaseUnavailableError as exc:
            self.not_ready_reason = f"inference log {self.log!r}: {exc.message}"
            log.error("%s; retrying", self.not_ready_reason)
            return False
        log.info("inference log %r at revision %s", self.log, head)
        self.migrated = True
        return True

    def current_spec(self) -> ModelSpec:
        return self.spec(None)

    def spec(self, version: str | None) -> ModelSpec:
        """Name, class names and test accuracy of a published version (None: the current).

        Versions are immutable: each .mar is read once; only CURRENT.json is read per call."""
        if version is None:
            _, version = current_version(self.s.store)
        spec = self._specs.get(version)
        if spec is None:
            spec = self._specs[version] = model_spec(self.s.store, version)
        return spec

    def readiness(self) -> tuple[bool, str]:
        if not self.migrated:
            return False, self.not_ready_reason
        try:
            spec = self.current_spec()
        except ReferenceUnavailableError as exc:
            return False, exc.message
        if not self.s.spool_dir.is_dir():
            return False, f"spool folder {self.s.spool_dir} does not exist"
        role = "reporter" if self.reporter is not None else "shipper"
        return True, f"{role}; model {spec.model_name} version {spec.version}"

    # --- shipping ------------------------------------------------------------------------

    def ship_once(self) -> int:
        """Read one batch from the spool, insert it, then commit the spool position.

        Returns the records read (0: nothing new). On a database error the follower is
        reloaded from its last committed position, so the batch is read again next time.
        """
        m = self.metrics
        polled_at = time.time()  # what was written before this, this poll reads (lag 0)
        batch = self.follower.poll(max_records=self.s.ship_batch)
        if batch.records:
            t0 = time.perf_counter()
            try:
                new = self.log.ship(batch.records, self.pod)
            except DatabaseUnavailableError:
                m.ship_errors.labels("database_unavailable").inc()
                self.follower = self._new_follower()
                # The batch is not shipped either: the lag grows while the database is down.
                self._lag_records = len(batch.records) + round(batch.lag_bytes / MEAN_LINE_BYTES)
                m.lag_records.set(self._lag_records)
                raise
            m.db_seconds.labels("ship").observe(time.perf_counter() - t0)
            m.duplicates.inc(len(batch.records) - new)
            m.shipped.inc(new)
            self.shipped_total += new
        m.malformed.inc(batch.malformed)
        m.unknown_schema.inc(batch.unknown_schema)
        m.duplicates.inc(batch.duplicates)
        for reason, n in batch.refused.items():
            m.refused.labels(reason).inc(n)
        m.ingested.inc(len(batch.records))
        self.follower.commit()
        self._lag_records = round(batch.lag_bytes / MEAN_LINE_BYTES)
        m.lag_bytes.set(batch.lag_bytes)
        m.lag_records.set(self._lag_records)
        # Stamped with the poll's start, not now: a record written during the insert above
        # is not shipped, and feedback for it must not hear "every spool is empty".
        self.log.heartbeat(self.pod, self._lag_records, self.shipped_total, at=polled_at)
        return len(batch.records)

    # --- feedback ------------------------------------------------------------------------

    def label(self, request_id: str, index: int, label: object) -> FeedbackResult:
        """Store a label for (request_id, index), from whichever replica logged it.

        Joined at once when the prediction is in the log. Otherwise wait up to
        ``feedback_settle_s`` for every live shipper to report an empty spool: if they all
        do and the prediction is still unknown, no replica ever logged it (404); if not, the
        label is kept (``pending``) and joined when the prediction lands, for up to
        ``label_wait_s``.
        """
        from atelier.drift.feedback import parse_label

        arrived = time.time()
        deadline = time.monotonic() + self.s.feedback_settle_s
        while True:
            found = self.log.find(request_id, index)
            if found:
                return self._join(found, label, request_id, index)
            if self.log.shippers_caught_up(arrived, alive_within_s=self.s.label_wait_s):
                found = self.log.find(request_id, index)  # shipped since the look-up above?
                if found:
                    return self._join(found, label, request_id, index)
                raise UnknownRequestError(
                    f"no replica logged a prediction for request id {request_id!r} index {index}",
                    hint="send feedback with the id the server returned (the X-Request-Id "
                    "header or the response's id) and the image's index in its request",
                )
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        spec = self.current_spec()
        class_id = parse_label(label, spec.class_names)
        self.log.add_pending(request_id, index, class_id)
        return FeedbackResult("pending", request_id, index, spec.class_names[class_id])

    def _join(
        self, found: list[LoggedPrediction], label: object, request_id: str, index: int
    ) -> FeedbackResult:
        from atelier.drift.feedback import parse_label

        pred = found[0]
        spec = self.spec(pred.model_version)
        class_id = parse_label(label, spec.class_names)
        for p in found:  # the same id in two models' logs: label both
            stored = self.log.apply_label(p.id, class_id)
        return FeedbackResult(
            "joined", request_id, index, spec.class_names[class_id],
            correct=stored.label == pred.predicted_class, model_version=pred.model_version,
        )  # fmt: skip

    # --- leading -------------------------------------------------------------------------

    def renew(self) -> bool:
        """Take or renew the reporter lease; step down when it is lost or cannot be renewed
        before it runs out. True while this sidecar holds it."""
        try:
            leading = self.log.try_lead(self.pod, self.s.reporter_lease_s)
        except DatabaseUnavailableError:
            # Once the lease has run out another sidecar may report: stop exporting first.
            if self.reporter is not None and time.time() >= self._lease_until - 1.0:
                log.warning("%s cannot renew the reporter lease: stepping down", self.pod)
                self._step_down()
            raise
        with self._gauges:
            if not leading:
                if self.reporter is not None:
                    log.warning("%s lost the reporter lease", self.pod)
                    self._step_down()
                return False
            self._lease_until = time.time() + self.s.reporter_lease_s
            self.leading = True
        return True

    def report_once(self) -> None:
        """One reporter tick, if this sidecar holds the lease."""
        if not self.leading:
            return
        if self.reporter is None:
            from atelier.drift.reporter import Reporter

            log.info("%s is the reporter now", self.pod)
            reporter = Reporter(self)
            with self._gauges:
                if not self.leading:
                    return
                self.reporter = reporter
                self.metrics.reporter.set(1)
        self.reporter.tick()

    def lead_once(self) -> bool:
        """Renew, report when due, renew: what the two lease threads do, in one call."""
        if not self.renew():
            return False
        self.report_once()
        return self.renew()

    def _step_down(self) -> None:
        self.leading = False
        self.last_report = 0.0
        self.reporter = None
        self.metrics.reporter.set(0)
        self.metrics.clear_reporter_gauges()

    # --- threads -------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._ship_loop, name="drift-ship", daemon=True),
            threading.Thread(target=self._lease_loop, name="drift-lease", daemon=True),
            threading.Thread(target=self._report_loop, name="drift-report", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        if self.reporter is not None:
            with contextlib.suppress(DatabaseUnavailableError):
                self.log.resign(self.pod)
        self.log.close()

    def _ship_loop(self) -> None:
        backoff = self.s.poll_interval_s
        while not self._stop.is_set():
            if not self.migrated and not self.migrate():
                self._stop.wait(min(backoff, 5.0))
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                n = self.ship_once()
                backoff = self.s.poll_interval_s
            except DatabaseUnavailableError as exc:
                log.error("shipping paused: %s; retrying in %.1f s", exc.message, backoff)
                n = 0
                backoff = min(backoff * 2, 5.0)
            except Exception:  # keep shipping whatever one poll hit
                log.exception("shipping failed; retrying")
                n = 0
            if n < self.s.ship_batch:
                self._stop.wait(backoff)

    def _lease_loop(self) -> None:
        """Renew the lease every second, whatever a report in progress is doing."""
        while not self._stop.wait(1.0):
            if not self.migrated:
                continue
            try:
                self.renew()
            except DatabaseUnavailableError as exc:
                log.error("reporter lease: %s", exc.message)
            except Exception:
                log.exception("reporter lease failed")

    def _report_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.report_once()
            except DatabaseUnavailableError as exc:
                log.error("reporter: %s", exc.message)
            except AtelierError as exc:
                log.error("reporter: %s", exc.message)
                self.metrics.report_errors.inc()
            except Exception:
                log.exception("reporter failed")
                self.metrics.report_errors.inc()

    def status(self) -> dict[str, Any]:
        return {} if self.reporter is None else self.reporter.status()
