"""The inference log: one table of classified images shared by every replica's drift sidecar.

SQLite (a file, one replica, nothing to install) or PostgreSQL (psycopg 3) through
SQLAlchemy 2 Core. The schema is `atelier.drift.schema`; `InferenceLog.migrate` applies the
Alembic migrations at start under a lock (a PostgreSQL advisory lock, or a file lock next
to the SQLite database), so several sidecars starting together migrate once.

What each sidecar does with it:

* **ship**: insert the records its spool follower read, in one transaction per batch.
  Unique on (request_id, index, model_name) with ``ON CONFLICT DO NOTHING``: a batch retried
  after a crash or an outage never counts twice.
* **label**: join feedback to a logged prediction (any replica's), or keep it in
  ``pending_labels`` until the prediction is shipped (`join_pending`).
* **lead**: hold the reporter lease (`try_lead`), a row with a holder and an expiry that
  only the holder can renew before it expires. Time is the sidecars' wall clock: the
  clocks of the pods must agree within a fraction of the lease (NTP does far better).

Database errors surface as `DatabaseUnavailableError` (503): the caller retries later and,
for shipping, does not advance its spool position.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from atelier.drift import schema as s
from atelier.runtime.errors import DatabaseUnavailableError
from atelier.runtime.features import ALL_FEATURES

log = logging.getLogger(__name__)

REPORTER = "reporter"
# pg_advisory_lock key for migrations: "atelier" in ASCII, fits a bigint.
MIGRATION_LOCK_KEY = 0x6174656C696572
# pg_advisory_xact_lock key held by each shipping transaction (see `InferenceLog.ship`).
SHIP_LOCK_KEY = MIGRATION_LOCK_KEY + 1

FEATURE_COLUMNS = tuple(s.inference_log.c[f] for f in ALL_FEATURES)


@dataclass(frozen=True)
class LoggedPrediction:
    id: int
    model_name: str
    model_version: str
    predicted_class: int
    label: int | None


@dataclass(frozen=True)
class Window:
    """Rows of one version, oldest first: features (N, F) float64 and labels (N,) (-1: none)."""

    values: np.ndarray
    labels: np.ndarray
    last_id: int

    def __len__(self) -> int:
        return len(self.values)

    def accuracy(self) -> tuple[float | None, int]:
        labelled = self.labels >= 0
        n = int(labelled.sum())
        if not n:
            return None, 0
        predicted = self.values[labelled, ALL_FEATURES.index("predicted_class")].astype(np.int64)
        return float((predicted == self.labels[labelled]).mean()), n


def database_url(url: str, password: str | None = None) -> str:
    """``url`` with ``password`` put in when it has none (the chart passes it separately)."""
    parsed = make_url(url)
    if password and parsed.password is None and not parsed.drivername.startswith("sqlite"):
        parsed = parsed.set(password=password)
    return parsed.render_as_string(hide_password=False)


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _unavailable(what: str, exc: Exception) -> DatabaseUnavailableError:
    msg = str(getattr(exc, "orig", exc)).strip().splitlines()
    return DatabaseUnavailableError(f"{what}: {msg[0] if msg else type(exc).__name__}")


class InferenceLog:
    def __init__(self, url: str, *, password: str | None = None, pool_size: int = 4) -> None:
        self.url = database_url(url, password)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"database {redacted(url)}: only sqlite and postgresql are supported")
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.dialect == "sqlite":
            path = parsed.database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=4,
                pool_timeout=10,
                connect_args={"connect_timeout": 5},
            )
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def __repr__(self) -> str:
        return f"InferenceLog({redacted(self.url)})"

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _tx(self, what: str) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, IntegrityError):
                raise
            raise _unavailable(what, exc) from exc

    # --- schema --------------------------------------------------------------------------

    def migrate(self) -> str:
        """Apply the migrations up to head, once across concurrent starters; returns head."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("atelier.drift") / "migrations"))
        with self._migration_lock() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            head = MigrationContext.configure(conn).get_current_revision()
            conn.commit()
        return str(head)

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[Connection]:
        try:
            conn = self.engine.connect()
        except (OperationalError, DBAPIError) as exc:
            raise _unavailable("cannot connect to migrate", exc) from exc
        try:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
                conn.commit()
                try:
                    yield conn
                finally:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
                    conn.commit()
            else:
                path = make_url(self.url).database
                lock_path = Path(f"{path}.migrate.lock") if path and path != ":memory:" else None
                if lock_path is None:
                    yield conn
                    return
                with lock_path.open("a") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    try:
                        yield conn
                    finally:
                        fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            conn.close()

    # --- shipping ------------------------------------------------------------------------

    def ship(self, records: Sequence[Mapping[str, Any]], pod: str) -> int:
        """Insert spool records in one transaction; returns how many were new."""
        if not records:
            return 0
        now = time.time()
        rows = [
            {
                "model_name": r["model_name"],
                "model_version": r["model_version"],
                "request_id": r["request_id"],
                "idx": int(r["index"]),
                "time": float(r["time"]),
                "shipped_at": now,
                "pod": pod,
                "protocol": str(r.get("protocol", ""))[:16],
                "predicted_class": int(r["predicted_class"]),
                **{f: float(r[f]) for f in s.FLOAT_FEATURES},
                "input": _input_bytes(r.get("input")),
            }
            for r in records
        ]
        stmt, params = self._ship_statement(rows)
        with self._tx("shipping records") as conn:
            if self.dialect == "postgresql":
                # Ids are drawn when rows are inserted but seen when their transaction
                # commits: two pods' batches could commit out of id order, and the reporter,
                # which reads on from the last id it saw, would skip the earlier ids for good.
                # One shipping transaction at a time makes id order the commit order (SQLite
                # has one writer anyway).
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SHIP_LOCK_KEY})")
            inserted = conn.execute(stmt, params).all()
        return len(inserted)

    def _ship_statement(self, rows: list[dict[str, Any]]) -> tuple[Any, Any]:
        """A batch's insert (new rows only, returning their ids) and its parameters.

        PostgreSQL: one ``INSERT ... SELECT unnest(...)`` of an array per column, 18
        parameters whatever the batch size. A multi-row VALUES (SQLAlchemy's insertmanyvalues)
        binds 18 per row, and psycopg rewrites the placeholders of a statement that long in
        Python at every execution (it caches those up to 4 KiB and 50 parameters): 1.2-1.4 s
        of CPU per 5,000 rows against 0.15 s. SQLite's driver binds in C: multi-row VALUES.
        """
        t = s.inference_log
        if self.dialect != "postgresql":
            return self._insert_ignore(t).returning(t.c.id), rows
        from sqlalchemy.dialects.postgresql import ARRAY

        cols = list(rows[0])
        arrays = select(*(func.unnest(bindparam(c, type_=ARRAY(t.c[c].type))) for c in cols))
        stmt = self._insert_ignore(t).from_select(cols, arrays).returning(t.c.id)
        return stmt, {c: [r[c] for r in rows] for c in cols}

    def _insert(self, table: Any) -> Any:
        """The dialect's INSERT, which knows ON CONFLICT."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def _insert_ignore(self, table: Any) -> Any:
        return self._insert(table).on_conflict_do_nothing()

    def _upsert(self, table: Any, values: Mapping[str, Any], set_: Any = None) -> Any:
        """Insert a row, or on its primary key set ``set_`` (default: the new values), in one
        statement: two pods writing one key at once both land, neither is dropped."""
        stmt = self._insert(table).values(**values)
        keys = [c.name for c in table.primary_key.columns]
        if set_ is None:
            set_ = {k: stmt.excluded[k] for k in values if k not in keys}
        return stmt.on_conflict_do_update(index_elements=keys, set_=set_)

    def heartbeat(
        self, pod: str, lag_records: int, shipped_total: int, at: float | None = None
    ) -> None:
        """Say this shipper is alive and how far behind its spool it is; ``at``: when the
        lag was measured (the start of the poll that read it), now by default."""
        values = {
            "heartbeat_at": time.time() if at is None else at,
            "lag_records": lag_records,
            "shipped_total": shipped_total,
        }
        with self._tx("shipper heartbeat") as conn:
            conn.execute(self._upsert(s.shippers, {"pod": pod, **values}))

    def shippers_caught_up(self, since: float, alive_within_s: float) -> bool:
        """True when every shipper seen in the last ``alive_within_s`` seconds has reported,
        after ``since``, that nothing is left in its spool."""
        with self._tx("reading shippers") as conn:
            rows = conn.execute(
                select(s.shippers.c.heartbeat_at, s.shippers.c.lag_records).where(
                    s.shippers.c.heartbeat_at >= time.time() - alive_within_s
                )
            ).all()
        return all(hb >= since and lag == 0 for hb, lag in rows)

    # --- labels --------------------------------------------------------------------------

    def find(self, request_id: str, index: int) -> list[LoggedPrediction]:
        t = s.inference_log.c
        with self._tx("looking up a prediction") as conn:
            rows = conn.execute(
                select(t.id, t.model_name, t.model_version, t.predicted_class, t.label).where(
                    t.request_id == request_id, t.idx == index
                )
            ).all()
        return [LoggedPrediction(*row) for row in rows]

    def apply_label(self, prediction_id: int, label: int) -> LoggedPrediction:
        """Store ``label`` on one logged prediction and keep the version's counts exact
        (a second label for the same prediction replaces the first)."""
        with self._tx("storing a label") as conn:
            return self._apply_label(conn, prediction_id, label)

    def _apply_label(self, conn: Connection, prediction_id: int, label: int) -> LoggedPrediction:
        t = s.inference_log.c
        row = conn.execute(
            select(t.id, t.model_name, t.model_version, t.predicted_class, t.label)
            .where(t.id == prediction_id)
            .with_for_update()
        ).one()
        pred = LoggedPrediction(*row)
        conn.execute(
            update(s.inference_log)
            .where(t.id == prediction_id)
            .values(label=label, labelled_at=time.time())
        )
        was_labelled = pred.label is not None
        was_correct = was_labelled and pred.label == pred.predicted_class
        d_labelled = 0 if was_labelled else 1
        d_correct = int(label == pred.predicted_class) - int(was_correct)
        # One statement adds the version's counts row or adds to it, so two pods giving a
        # version its first labels at once both count.
        v = s.version_stats
        first = {"model_name": pred.model_name, "model_version": pred.model_version,
                 "labelled": d_labelled, "correct": d_correct}  # fmt: skip
        conn.execute(
            self._upsert(
                v, first,
                set_={"labelled": v.c.labelled + d_labelled, "correct": v.c.correct + d_correct},
            )
        )  # fmt: skip
        return LoggedPrediction(
            pred.id, pred.model_name, pred.model_version, pred.predicted_class, label
        )

    def add_pending(self, request_id: str, index: int, label: int) -> None:
        row = {"request_id": request_id, "idx": index, "label": label, "received_at": time.time()}
        with self._tx("keeping a label") as conn:
            conn.execute(self._upsert(s.pending_labels, row))

    def join_pending(self, wait_s: float) -> tuple[int, int]:
        """Join kept labels whose prediction has landed; drop those older than ``wait_s``.

        Each label is joined in a transaction of its own, taking its locks in the order
        feedback takes them (prediction row, then the version's counts), so a relabel that
        arrives meanwhile waits instead of deadlocking. Returns (joined, expired)."""
        p, t = s.pending_labels.c, s.inference_log.c
        with self._tx("finding kept labels") as conn:
            landed = conn.execute(
                select(p.request_id, p.idx)
                .join(s.inference_log, (t.request_id == p.request_id) & (t.idx == p.idx))
                .distinct()
                .limit(5000)
            ).all()
        joined = 0
        for request_id, idx in landed:
            with self._tx("joining a kept label") as conn:
                key = (p.request_id == request_id, p.idx == idx)
                label = conn.execute(
                    select(p.label).where(*key).with_for_update()
                ).scalar_one_or_none()
                if label is None:  # joined or replaced meanwhile
                    continue
                ids = conn.execute(
                    select(t.id).where(t.request_id == request_id, t.idx == idx).order_by(t.id)
                ).scalars()
                for pid in list(ids):
                    self._apply_label(conn, pid, label)
                conn.execute(delete(s.pending_labels).where(*key))
                joined += 1
        with self._tx("expiring kept labels") as conn:
            expired = conn.execute(
                delete(s.pending_labels).where(p.received_at < time.time() - wait_s)
            ).rowcount
        return joined, int(expired or 0)

    def pending_count(self) -> int:
        with self._tx("counting kept labels") as conn:
            return int(
                conn.execute(select(func.count()).select_from(s.pending_labels)).scalar_one()
            )

    # --- the reporter lease ----------------------------------------------------------------

    def try_lead(self, holder: str, lease_s: float) -> bool:
        """Take or renew the reporter lease; True while ``holder`` holds it."""
        lease = s.reporter_lease.c
        now = time.time()
        with self._tx("reporter lease") as conn:
            done = conn.execute(
                update(s.reporter_lease)
                .where(lease.name == REPORTER)
                .where((lease.holder == holder) | (lease.expires_at < now))
                .values(
                    holder=holder,
                    expires_at=now + lease_s,
                    acquired_at=case((lease.holder == holder, lease.acquired_at), else_=now),
                )
            )
            if done.rowcount:
                return True
            exists = conn.execute(
                select(lease.holder).where(lease.name == REPORTER)
            ).scalar_one_or_none()
            if exists is not None:
                return False
            conn.execute(
                self._insert_ignore(s.reporter_lease).values(
                    name=REPORTER, holder=holder, acquired_at=now, expires_at=now + lease_s
                )
            )
            owner = conn.execute(select(lease.holder).where(lease.name == REPORTER)).scalar_one()
            return bool(owner == holder)

    def resign(self, holder: str) -> None:
        lease = s.reporter_lease.c
        with self._tx("reporter lease") as conn:
            conn.execute(
                update(s.reporter_lease)
                .where(lease.name == REPORTER, lease.holder == holder)
                .values(expires_at=0.0)
            )

    def leader(self) -> tuple[str, float] | None:
        lease = s.reporter_lease.c
        with self._tx("reporter lease") as conn:
            row = conn.execute(
                select(lease.holder, lease.expires_at).where(lease.name == REPORTER)
            ).one_or_none()
        return None if row is None or row[1] < time.time() else (row[0], row[1])

    # --- windows -------------------------------------------------------------------------

    def new_records(self, after_id: int) -> list[tuple[str, str, int, int]]:
        """(model_name, model_version, count, max id) of records with id > ``after_id``."""
        t = s.inference_log.c
        with self._tx("counting new records") as conn:
            rows = conn.execute(
                select(t.model_name, t.model_version, func.count(), func.max(t.id))
                .where(t.id > after_id)
                .group_by(t.model_name, t.model_version)
            ).all()
        return [(a, b, int(c), int(d)) for a, b, c, d in rows]

    def max_id(self) -> int:
        with self._tx("reading the log") as conn:
            return int(conn.execute(select(func.max(s.inference_log.c.id))).scalar() or 0)

    def last(self, model_name: str, model_version: str, n: int) -> Window:
        """The last ``n`` records of a version (any replica), oldest first."""
        t = s.inference_log.c
        stmt = (
            select(t.id, t.label, *FEATURE_COLUMNS)
            .where(t.model_name == model_name, t.model_version == model_version)
            .order_by(t.id.desc())
            .limit(n)
        )
        with self._tx("reading a window") as conn:
            rows = conn.execute(stmt).all()
        return _window(rows[::-1])

    def after(self, model_name: str, model_version: str, after_id: int, limit: int) -> Window:
        """Up to ``limit`` records of a version with id > ``after_id``, oldest first."""
        t = s.inference_log.c
        stmt = (
            select(t.id, t.label, *FEATURE_COLUMNS)
            .where(t.model_name == model_name, t.model_version == model_version, t.id > after_id)
            .order_by(t.id)
            .limit(limit)
        )
        with self._tx("reading new records") as conn:
            rows = conn.execute(stmt).all()
        w = _window(rows)
        return w if len(w) else Window(w.values, w.labels, after_id)

    def version_accuracy(self, model_name: str, model_version: str) -> tuple[float | None, int]:
        v = s.version_stats.c
        with self._tx("reading version stats") as conn:
            row = conn.execute(
                select(v.labelled, v.correct).where(
                    v.model_name == model_name, v.model_version == model_version
                )
            ).one_or_none()
        if row is None or not row[0]:
            return None, 0
        return row[1] / row[0], int(row[0])

    def count(self, model_name: str | None = None, model_version: str | None = None) -> int:
        t = s.inference_log.c
        stmt = select(func.count()).select_from(s.inference_log)
        if model_name is not None:
            stmt = stmt.where(t.model_name == model_name)
        if model_version is not None:
            stmt = stmt.where(t.model_version == model_version)
        with self._tx("counting records") as conn:
            return int(conn.execute(stmt).scalar_one())

    def labelled_count(self) -> int:
        t = s.inference_log.c
        with self._tx("counting labels") as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(s.inference_log).where(t.label.is_not(None))
                ).scalar_one()
            )

    # --- since-live state ----------------------------------------------------------------

    def load_state(self, model_name: str, model_version: str) -> tuple[int, bytes] | None:
        c = s.since_live_state.c
        with self._tx("reading since-live state") as conn:
            row = conn.execute(
                select(c.last_id, c.state).where(
                    c.model_name == model_name, c.model_version == model_version
                )
            ).one_or_none()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def save_state(self, model_name: str, model_version: str, last_id: int, state: bytes) -> None:
        row = {"model_name": model_name, "model_version": model_version, "last_id": last_id,
               "state": state, "updated_at": time.time()}  # fmt: skip
        with self._tx("saving since-live state") as conn:
            conn.execute(self._upsert(s.since_live_state, row))

    # --- reports -------------------------------------------------------------------------

    def save_report(
        self, summary: Mapping[str, Any], html: str | None, status: Mapping[str, Any]
    ) -> None:
        with self._tx("saving a report") as conn:
            conn.execute(
                insert(s.drift_reports).values(
                    id=summary["id"],
                    created=time.time(),
                    model_name=summary["model_name"],
                    model_version=summary["model_version"],
                    window=summary["window"],
                    severity=status["severity"],
                    status=json.dumps(status, allow_nan=False),
                    summary=json.dumps(summary, allow_nan=False),
                    html_gz=None if html is None else gzip.compress(html.encode(), 6),
                )
            )

    def list_reports(self, limit: int = 200) -> list[dict[str, Any]]:
        r = s.drift_reports.c
        with self._tx("listing reports") as conn:
            rows = conn.execute(
                select(
                    r.id,
                    r.created,
                    r.model_name,
                    r.model_version,
                    r.window,
                    r.severity,
                    r.html_gz.is_not(None),
                )
                .order_by(r.created.desc())
                .limit(limit)
            ).all()
        return [
            {
                "id": i,
                "created": c,
                "model_name": n,
                "model_version": v,
                "window": w,
                "severity": sev,
                "html": bool(h),
            }
            for i, c, n, v, w, sev, h in rows
        ]

    def latest_status(self, model_name: str, model_version: str) -> dict[str, Any]:
        """The newest report's status per window of a version: ``{window: status}``."""
        r = s.drift_reports.c
        with self._tx("reading report status") as conn:
            rows = conn.execute(
                select(r.window, r.status)
                .where(r.model_name == model_name, r.model_version == model_version)
                .order_by(r.created.desc())
                .limit(100)
            ).all()
        out: dict[str, Any] = {}
        for window, status in rows:
            out.setdefault(window, json.loads(status))
        return out

    def report(self, report_id: str | None) -> tuple[str, bytes | None] | None:
        """(summary JSON, gzip'd HTML) of a report; None for ``report_id`` = the newest."""
        r = s.drift_reports.c
        stmt = select(r.summary, r.html_gz)
        stmt = (
            stmt.order_by(r.created.desc()).limit(1)
            if report_id is None
            else stmt.where(r.id == report_id)
        )
        with self._tx("reading a report") as conn:
            row = conn.execute(stmt).one_or_none()
        return None if row is None else (row[0], None if row[1] is None else bytes(row[1]))

    # --- retention -----------------------------------------------------------------------

    def prune(
        self, *, max_age_s: float, max_rows_per_version: int, reports_kept: int
    ) -> dict[str, int]:
        """Delete records older than ``max_age_s`` or past the newest ``max_rows_per_version``
        of their version, and all but the newest ``reports_kept`` reports per version/window."""
        t, r = s.inference_log.c, s.drift_reports.c
        out = {"records": 0, "reports": 0}
        with self._tx("pruning") as conn:
            out["records"] += conn.execute(
                delete(s.inference_log).where(t.time < time.time() - max_age_s)
            ).rowcount
            versions = conn.execute(
                select(t.model_name, t.model_version).group_by(t.model_name, t.model_version)
            ).all()
            for name, version in versions:
                floor = conn.execute(
                    select(t.id)
                    .where(t.model_name == name, t.model_version == version)
                    .order_by(t.id.desc())
                    .offset(max_rows_per_version)
                    .limit(1)
                ).scalar_one_or_none()
                if floor is not None:
                    out["records"] += conn.execute(
                        delete(s.inference_log).where(
                            t.model_name == name, t.model_version == version, t.id <= floor
                        )
                    ).rowcount
            groups = conn.execute(
                select(r.model_name, r.model_version, r.window).group_by(
                    r.model_name, r.model_version, r.window
                )
            ).all()
            for name, version, window in groups:
                cut = conn.execute(
                    select(r.created)
                    .where(r.model_name == name, r.model_version == version, r.window == window)
                    .order_by(r.created.desc())
                    .offset(reports_kept - 1)
                    .limit(1)
                ).scalar_one_or_none()
                if cut is not None:
                    out["reports"] += conn.execute(
                        delete(s.drift_reports).where(
                            r.model_name == name,
                            r.model_version == version,
                            r.window == window,
                            r.created < cut,
                        )
                    ).rowcount
        return out


def _window(rows: Sequence[Any]) -> Window:
    if not rows:
        return Window(np.empty((0, len(ALL_FEATURES))), np.empty(0, dtype=np.int64), 0)
    arr = np.asarray([row[2:] for row in rows], dtype=np.float64)
    labels = np.asarray([-1 if row[1] is None else row[1] for row in rows], dtype=np.int64)
    return Window(arr, labels, int(rows[-1][0]))


def _input_bytes(value: object) -> bytes | None:
    """A sampled input from the spool record (base64 of the 28x28 uint8 image), if any."""
    if not isinstance(value, str):
        return None
    import base64
    import binascii

    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) <= 64 * 1024 else None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    # FULL: a commit survives a power cut too, since the spool position advances after it.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def default_pod_name() -> str:
    return os.environ.get("HOSTNAME") or os.uname().nodename
