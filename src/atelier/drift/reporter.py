"""The reporter: the one sidecar (the lease holder) that turns the shared log into reports.

Per model version, over every replica's records:

* ``last_<N>`` windows: the newest N rows of the version in the log (an indexed query).
* ``since_live``: a uniform reservoir sample with exact moments and class counts, fed
  incrementally with the rows past its ``last_id`` and saved in the log after each report,
  so it costs the same memory and time however long the version has been live, and a new
  reporter resumes it instead of starting over.
* live accuracy: from the labels on the rows of a window; since live from the version's
  exact counts (`version_stats`).

Reports (summary JSON and gzip'd HTML) go into the log, where every sidecar serves them.
This module imports pandas, scipy and (inside `run_drift`) Evidently: only the reporter
loads it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from atelier.drift.reference import Reference, load_reference
from atelier.drift.report import SEVERITY_LEVEL, NotEnoughDataError, grade, json_safe, run_drift
from atelier.drift.windows import SINCE_LIVE, ReservoirWindow, frame_of
from atelier.runtime.errors import ReferenceUnavailableError

if TYPE_CHECKING:
    from atelier.drift.service import DriftService

log = logging.getLogger(__name__)

CATCH_UP_ROWS = 50_000  # rows read per query while feeding the since-live reservoir

VersionKey = tuple[str, str]


@dataclass
class VersionState:
    ref: Reference
    since_live: ReservoirWindow
    last_id: int  # newest row fed into since_live
    last_report: float = 0.0
    last_record: float = field(default_factory=time.time)  # when new records last arrived
    # (accuracy, labelled) of version_stats at the last refresh: a relabel changes the first.
    labels_seen: tuple[float | None, int] = (None, -1)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)


class Reporter:
    def __init__(self, service: DriftService) -> None:
        self.svc = service
        self.s = service.s
        self.log = service.log
        self.m = service.metrics
        # Start a window's worth back, so the versions active right now are reported soon
        # after a takeover instead of after the next report_every_records.
        self.cursor = max(0, self.log.max_id() - self.s.window_long)
        self.new: dict[VersionKey, int] = defaultdict(int)
        self.versions: dict[VersionKey, VersionState] = {}
        self.unusable: set[VersionKey] = set()
        self.last_prune = 0.0

    # --- the loop ---------------------------------------------------------------------------

    def tick(self) -> None:
        joined, expired = self.log.join_pending(self.s.label_wait_s)
        self.m.labels_joined.inc(joined)
        self.m.labels_expired.inc(expired)
        now = time.time()
        for name, version, count, max_id in self.log.new_records(self.cursor):
            self.new[(name, version)] += count
            self.cursor = max(self.cursor, max_id)
            if (name, version) in self.versions:
                self.versions[(name, version)].last_record = now
        self.retire(now)
        for key, n in list(self.new.items()):
            if key in self.unusable or n == 0:
                continue
            state = self.versions.get(key)
            last = state.last_report if state else 0.0
            due = n >= self.s.report_every_records or now - last >= self.s.report_every_seconds
            if due:
                self.new[key] = 0
                self.report(key)
        for key, state in self.versions.items():
            self.refresh_accuracy(key, state)
        if now - self.last_prune >= self.s.prune_every_s:
            self.last_prune = now
            pruned = self.log.prune(
                max_age_s=self.s.retention_days * 86400,
                max_rows_per_version=self.s.retention_rows,
                reports_kept=self.s.retention,
            )
            if any(pruned.values()):
                log.info("pruned %(records)d records and %(reports)d reports", pruned)

    # --- versions ---------------------------------------------------------------------------

    def retire(self, now: float) -> None:
        """Stop exporting versions that are not current and got no record for a while."""
        try:
            current = self.svc.current_spec().version
        except ReferenceUnavailableError:
            return
        for key, state in list(self.versions.items()):
            if key[1] != current and now - state.last_record >= self.s.retire_after_s:
                log.info(
                    "version %s retired: no record for %.0f s", key[1], now - state.last_record
                )
                with self.svc._gauges:
                    self.m.forget_version(key[1])
                del self.versions[key]
                self.new.pop(key, None)

    def _state(self, key: VersionKey) -> VersionState | None:
        if key in self.versions:
            return self.versions[key]
        name, version = key
        try:
            ref = load_reference(self.s.store, version)
        except ReferenceUnavailableError as exc:
            log.error("no reports for %s version %s: %s", name, version, exc.message)
            self.unusable.add(key)
            return None
        if ref.model_name != name:
            log.error("records name model %s but the store holds %s", name, ref.model_name)
            self.unusable.add(key)
            return None
        saved = self.log.load_state(name, version)
        if saved is None:
            window, last_id = ReservoirWindow(self.s.reservoir), 0
        else:
            last_id, blob = saved
            window = ReservoirWindow.from_bytes(blob)
        state = self.versions[key] = VersionState(ref, window, last_id)
        self.m.reference_accuracy.labels(version).set(ref.accuracy)
        return state

    def _catch_up(self, key: VersionKey, state: VersionState) -> None:
        name, version = key
        while True:
            rows = self.log.after(name, version, state.last_id, CATCH_UP_ROWS)
            if not len(rows):
                break
            state.since_live.add_array(rows.values)
            state.last_id = rows.last_id
            if len(rows) < CATCH_UP_ROWS:
                break
        self.log.save_state(name, version, state.last_id, state.since_live.to_bytes())

    # --- one report -------------------------------------------------------------------------

    def report(self, key: VersionKey) -> None:
        state = self._state(key)
        if state is None:
            return
        name, version = key
        self._catch_up(key, state)
        state.last_report = time.time()
        for window, size in [*self.s.windows.items(), (SINCE_LIVE, 0)]:
            t0 = time.perf_counter()
            if window == SINCE_LIVE:
                frame = frame_of(state.since_live.values())
                acc, n = self.log.version_accuracy(name, version)
                records = state.since_live.seen
            else:
                rows = self.log.last(name, version, size)
                frame = frame_of(rows.values)
                acc, n = rows.accuracy()
                records = len(rows)
            try:
                result = run_drift(
                    state.ref.profile, frame, self.s.methods, with_html=self.s.report_html,
                    min_rows=self.s.min_rows, num_classes=state.ref.num_classes,
                )  # fmt: skip
            except NotEnoughDataError as exc:
                result = None
                detail = {"reason": exc.message, "rows": len(frame)}
                state.status[window] = {"severity": "no_data", "drift_share": None,
                                        "report_id": None, "detail": detail}  # fmt: skip
            with self.svc._gauges:
                if not self.svc.leading:  # lost the lease meanwhile: export nothing
                    return
                self.m.window_records.labels(version, window).set(records)
                self._accuracy(version, window, acc, n)
                if result is None:
                    self.m.severity.labels(version, window).set(-1)
                    continue
                severity, detail = self._publish(version, window, result, state.ref, acc, n)
            created = datetime.now(UTC)
            report_id = f"{created.strftime('%Y%m%dT%H%M%S%f')}-{version}-{window}"
            summary = {
                "id": report_id, "created": created.isoformat(), "model_name": name,
                "model_version": version, "window": window, "pod": self.svc.pod,
                **result.summary(), "severity": severity, "detail": detail,
                "evidently": result.evidently_json,
            }  # fmt: skip
            status = json_safe({"severity": severity, "drift_share": result.drift_share,
                                "report_id": report_id, "detail": detail})  # fmt: skip
            self.log.save_report(json_safe(summary), result.html, status)
            state.status[window] = status
            self.m.report_seconds.observe(time.perf_counter() - t0)
        now = time.time()
        self.svc.last_report = now
        self.m.last_report.set(now)

    def _publish(
        self, version: str, window: str, result: Any, ref: Reference, acc: float | None, n: int
    ) -> tuple[str, dict[str, Any]]:
        m = self.m
        lv = (version, window)
        m.drift_share.labels(*lv).set(result.drift_share)
        m.drifted.labels(*lv).set(result.drifted_count)
        for feature, fd in result.per_feature.items():
            m.feature_score.labels(*lv, feature, fd.method).set(fd.score)
            m.feature_drifted.labels(*lv, feature).set(1 if fd.drifted else 0)
        m.confidence_z.labels(*lv).set(result.confidence_z)
        m.class_js.labels(*lv).set(result.class_js)
        for cname, ref_share, cur_share in zip(
            ref.class_names, result.class_share_reference, result.class_share_current, strict=True
        ):
            m.class_share.labels(*lv, cname, "reference").set(ref_share)
            m.class_share.labels(*lv, cname, "current").set(cur_share)
        severity = result.severity
        acc_grade = self.accuracy_grade(ref, acc)
        if SEVERITY_LEVEL[acc_grade] > SEVERITY_LEVEL[severity]:
            severity = acc_grade
        m.severity.labels(*lv).set(SEVERITY_LEVEL[severity])
        return severity, {
            "drift_share": result.drift_share, "drifted_count": result.drifted_count,
            "dataset_drift": result.dataset_drift, "confidence_z": result.confidence_z,
            "class_js": result.class_js, "live_accuracy": acc, "labelled": n,
            "reference_accuracy": ref.accuracy, "accuracy_grade": acc_grade,
            "rows": result.rows_current,
        }  # fmt: skip

    def accuracy_grade(self, ref: Reference, acc: float | None) -> str:
        if acc is None:
            return "ok"
        drop = (ref.accuracy - acc) * 100
        if drop < 0:
            return "ok"
        return grade(drop, self.s.accuracy_warning_points, self.s.accuracy_critical_points)

    def _accuracy(self, version: str, window: str, acc: float | None, n: int) -> None:
        self.m.labelled.labels(version, window).set(n)
        if acc is not None:
            self.m.live_accuracy.labels(version, window).set(acc)

    # --- labels move live accuracy right away, not at the next report --------------------

    def refresh_accuracy(self, key: VersionKey, state: VersionState) -> None:
        name, version = key
        acc, n = self.log.version_accuracy(name, version)
        if (acc, n) == state.labels_seen:
            return
        state.labels_seen = (acc, n)
        windows = [(w, *self.log.last(name, version, size).accuracy())
                   for w, size in self.s.windows.items()]  # fmt: skip
        with self.svc._gauges:
            if not self.svc.leading:
                return
            self._accuracy(version, SINCE_LIVE, acc, n)
            for window, wacc, wn in windows:
                self._accuracy(version, window, wacc, wn)

    def status(self) -> dict[str, Any]:
        return {
            f"{name}/{version}": state.status for (name, version), state in self.versions.items()
        }
