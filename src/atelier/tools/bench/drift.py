"""`atelier bench drift`: the drift sidecar against the issue's targets, on this machine.

Two tables, each row a measurement with its target (SQLite and PostgreSQL side by side);
nothing is asserted in tests. Timings are of one run on whatever else the machine is doing.

* **shipping**: a real `DriftService` follows a spool written by the handler's writer and
  calls `ship_once` (follow, parse, validate, insert, commit the spool position,
  heartbeat) until the spool is drained, into SQLite and into PostgreSQL side by side.
* **the log at size**: the log is filled with ``log_records`` records of one version (a
  bulk load: COPY or one executemany, not the shipping path), then what the reporter does
  for the ``last_10000`` window is timed step by step: the query (`InferenceLog.last`), the
  report (`run_drift`, JSON only and with the HTML), storing it, the since-live catch-up
  (the first one over the whole log, and the incremental one) and a prune of 10%.
* **two sidecars**: two real sidecar processes, each with its own spool, share one database
  (PostgreSQL when there is one); once both have shipped and the reporter has reported,
  each one's RSS, and which one is the reporter.
* **detection**: false positives per window size and shifted records needed to declare
  drift, with the served model's real features and reference profile.

PostgreSQL is a throwaway cluster of the machine's PostgreSQL binaries
(`atelier.tools.postgres`), with ``fsync`` on, as SQLite's ``synchronous=FULL`` is.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from atelier.drift import schema
from atelier.drift.inference_log import InferenceLog
from atelier.drift.methods import DriftMethods
from atelier.drift.reference import current_version
from atelier.drift.report import json_safe, run_drift
from atelier.runtime.errors import ServerError
from atelier.runtime.features import IMAGE_FEATURES
from atelier.runtime.records import FeatureSpool, make_records
from atelier.tools import shifts
from atelier.training.config import DEFAULT_FASHION_MNIST_DIR

SYNTHETIC_CLASSES = 10
WINDOW = 10_000  # the long window the targets name (DriftSettings.window_long)
NEW_ROWS = 10_000  # rows added after the first catch-up, for the incremental one
PRUNE_SHARE = 0.1  # share of the log the retention row deletes

SHIP_TARGET = 5000.0  # records/s per sidecar
REPORT_TARGET_S = 2.0
SHIPPER_RSS_TARGET_MB = 150.0
REPORTER_RSS_TARGET_MB = 400.0


def _features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    f = {name: rng.uniform(0.05, 0.95, n) for name in IMAGE_FEATURES}
    probs = rng.dirichlet(np.ones(SYNTHETIC_CLASSES) * 0.3, n)
    f["predicted_class"] = probs.argmax(1).astype(float)
    f["confidence"] = probs.max(1)
    f["entropy"] = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
    return f


# The bench's labels for atelier.tools.shifts' one table of shifts.
SHIFTS = {
    "invert": shifts.SHIFTS["invert"],
    "brighten +90": shifts.SHIFTS["brighten"],
    "rotate 90": shifts.SHIFTS["rotate"],
}
MIXES = (50, 100, 150, 200, 300, 400, 500, 700, 1000)
# Clean held-out windows per window size for the false-positive rows: the sizes the
# integration tests (300, 600) and the chart (1,000, 10,000) use. Windows smaller than the
# test set are random subsets of it; 10,000 are bootstrap resamples of all of it.
FP_WINDOWS = {300: 100, 600: 100, 1000: 100, 10_000: 20}


def false_positives(
    reference: Any, clean: Any, methods: DriftMethods, num_classes: int, seed: int = 0
) -> list[dict[str, int]]:
    """Per window size: how many clean windows were graded not ok, and by which statistic."""
    rng = np.random.default_rng(seed)
    rows = []
    for size, count in FP_WINDOWS.items():
        row = {"window": size, "windows": count, "not_ok": 0, "dataset_drift": 0,
               "confidence": 0, "class_mix": 0}  # fmt: skip
        for _ in range(count):
            idx = rng.choice(len(clean), size, replace=size >= len(clean))
            r = run_drift(reference, clean.iloc[idx], methods, num_classes=num_classes,
                          with_html=False)  # fmt: skip
            row["not_ok"] += r.severity != "ok"
            row["dataset_drift"] += r.dataset_drift
            row["confidence"] += r.confidence_severity != "ok"
            row["class_mix"] += r.class_severity != "ok"
        rows.append(row)
    return rows


# --- the databases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A database server the bench makes fresh databases in."""

    name: str  # "SQLite", "PostgreSQL"
    new_database: Callable[[str], str]  # a name -> the URL of a new, empty database


@contextlib.contextmanager
def backends(work: Path, postgres: bool) -> Iterator[tuple[list[Backend], str | None]]:
    """SQLite files in ``work`` and, with ``postgres``, a throwaway PostgreSQL cluster
    (stopped on exit); the second item says why PostgreSQL is missing, if it is."""
    sqlite = Backend("SQLite", lambda name: f"sqlite:///{work / f'{name}.db'}")
    if not postgres:
        yield [sqlite], "not asked for (--no-postgres)"
        return
    from atelier.tools.postgres import PostgresServer

    try:
        server = PostgresServer(settings={"fsync": "on"})
    except ServerError as exc:  # no PostgreSQL installed
        yield [sqlite], str(exc)
        return
    try:
        server.start()
        with server.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        label = f"PostgreSQL {str(row[0]).split()[0] if row else ''}".strip()
        yield [sqlite, Backend(label, server.create_database)], None
    finally:
        server.stop()


# --- shipping --------------------------------------------------------------------------------


def write_spool(
    directory: Path, model: tuple[str, str], n: int, prefix: str, seed: int = 0
) -> None:
    """``n`` records of ``model`` (name, version) in batches of 32, as the handler writes them."""
    feats = _features(np.random.default_rng(seed), n)
    spool = FeatureSpool(directory, max_bytes=20_000_000, backups=50)
    try:
        for start in range(0, n, 32):
            k = min(32, n - start)
            spool.write(make_records(f"{prefix}{start}", "v2", *model, feats, start, k))
    finally:
        spool.close()


def _service(url: str, store: Path, spool_dir: Path, state_dir: Path, pod: str) -> Any:
    from atelier.drift.service import DriftService
    from atelier.drift.settings import DriftSettings

    svc = DriftService(
        DriftSettings(
            spool_dir=spool_dir, store=store, state_dir=state_dir, database_url=url, pod_name=pod
        )
    )
    if not svc.migrate():
        svc.log.close()
        raise ServerError(f"cannot migrate {svc.log!r}: {svc.not_ready_reason}")
    return svc


def ship_rate(url: str, store: Path, spool_dir: Path, state_dir: Path) -> dict[str, float]:
    """Records/s of `DriftService.ship_once` called until the spool is drained."""
    svc = _service(url, store, spool_dir, state_dir, "bench-shipper")
    try:
        t0 = time.perf_counter()
        while svc.ship_once():
            pass
        elapsed = time.perf_counter() - t0
        return {"records": float(svc.shipped_total), "seconds": elapsed,
                "records_per_s": svc.shipped_total / elapsed}  # fmt: skip
    finally:
        svc.log.close()


# --- the log at size -------------------------------------------------------------------------

FILL_COLUMNS = (
    "model_name", "model_version", "request_id", "idx", "time", "shipped_at", "pod",
    "protocol", "predicted_class", *schema.FLOAT_FEATURES,
)  # fmt: skip
FILL_CHUNK = 100_000


def _fill_rows(
    model: tuple[str, str], start: int, n: int, rng: np.random.Generator
) -> Iterator[tuple[Any, ...]]:
    now = time.time()
    f = _features(rng, n)
    ids = range(start, start + n)
    return zip(
        itertools.repeat(model[0]), itertools.repeat(model[1]),
        (f"fill-{i // 32}" for i in ids), (i % 32 for i in ids),
        (now - (start + n - i) * 1e-3 for i in ids), itertools.repeat(now),
        itertools.repeat("bench-fill"), itertools.repeat("v2"),
        f["predicted_class"].astype(int).tolist(),
        *(f[c].tolist() for c in schema.FLOAT_FEATURES),
        strict=False,
    )  # fmt: skip


def fill_log(log: InferenceLog, model: tuple[str, str], n: int, start: int = 0) -> None:
    """``n`` synthetic records of one version, bulk-loaded in one transaction: COPY into
    PostgreSQL, one executemany into SQLite. Not the shipping path: a way to get a big log."""
    rng = np.random.default_rng(start)
    raw = log.engine.raw_connection()
    try:
        dbapi: Any = raw.driver_connection
        cols = ", ".join(FILL_COLUMNS)
        if log.dialect == "postgresql":
            with (
                dbapi.cursor() as cur,
                cur.copy(f"COPY inference_log ({cols}) FROM STDIN") as copy,
            ):
                for at in range(start, start + n, FILL_CHUNK):
                    for row in _fill_rows(model, at, min(FILL_CHUNK, start + n - at), rng):
                        copy.write_row(row)
        else:
            marks = ", ".join("?" * len(FILL_COLUMNS))
            cur = dbapi.cursor()
            for at in range(start, start + n, FILL_CHUNK):
                cur.executemany(
                    f"INSERT INTO inference_log ({cols}) VALUES ({marks})",
                    _fill_rows(model, at, min(FILL_CHUNK, start + n - at), rng),
                )
            cur.close()
        raw.commit()
    finally:
        raw.close()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def log_at_size(url: str, store: Path, work: Path, log_records: int) -> dict[str, float]:
    """What the reporter does for the last_10000 window, on a log of ``log_records`` rows."""
    from atelier.drift.reporter import Reporter
    from atelier.drift.windows import frame_of

    svc = _service(url, store, work / "no-spool", work / "state", "bench-reporter")
    try:
        name, version = model = current_version(store)
        out: dict[str, float] = {"log_records": float(log_records)}
        out["fill_s"], _ = _timed(lambda: fill_log(svc.log, model, log_records))
        reporter = Reporter(svc)
        state = reporter._state(model)
        if state is None:
            raise ServerError(f"no reference for {name} version {version} in {store}")
        ref, methods, s = state.ref, svc.s.methods, svc.s

        def report(frame: Any, html: bool) -> Any:
            return run_drift(ref.profile, frame, methods, with_html=html, min_rows=s.min_rows,
                             num_classes=ref.num_classes)  # fmt: skip

        report(frame_of(svc.log.last(name, version, 500).values), False)  # imports, warm-up
        queries = [_timed(lambda: svc.log.last(name, version, WINDOW)) for _ in range(3)]
        out["query_s"] = statistics.median(t for t, _ in queries)
        rows = queries[-1][1]
        out["window_rows"] = float(len(rows))
        frame = frame_of(rows.values)
        for key, html in (("report_json_s", False), ("report_html_s", True)):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                result = report(frame, html)
                times.append(time.perf_counter() - t0)
            out[key] = statistics.median(times)
        summary = json_safe({"id": "bench-last_10000", "model_name": name,
                             "model_version": version, "window": f"last_{WINDOW}",
                             **result.summary(), "evidently": result.evidently_json})  # fmt: skip
        status = json_safe({"severity": result.severity, "drift_share": result.drift_share})
        out["store_s"], _ = _timed(lambda: svc.log.save_report(summary, result.html, status))
        out["first_catch_up_s"], _ = _timed(lambda: reporter._catch_up(model, state))
        out["first_catch_up_rows"] = float(state.since_live.seen)
        fill_log(svc.log, model, NEW_ROWS, start=log_records)
        seen = state.since_live.seen
        out["catch_up_s"], _ = _timed(lambda: reporter._catch_up(model, state))
        out["catch_up_rows"] = float(state.since_live.seen - seen)
        total = svc.log.count(name, version)
        keep = total - round(total * PRUNE_SHARE)
        out["prune_s"], pruned = _timed(
            lambda: svc.log.prune(max_age_s=s.retention_days * 86400,
                                  max_rows_per_version=keep, reports_kept=s.retention)
        )  # fmt: skip
        out["prune_from"], out["pruned"] = float(total), float(pruned["records"])
        return out
    finally:
        svc.log.close()


# --- two sidecars ----------------------------------------------------------------------------


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def two_sidecars(url: str, store: Path, work: Path, records: int) -> list[dict[str, Any]]:
    """Two real sidecar processes sharing the database at ``url``, each with its own spool of
    ``records``: once both have shipped them and the reporter has reported since, each one's
    RSS (now and peak) and role."""
    import psutil

    from atelier.tools.drift import DriftSidecar, SidecarSettings

    model = current_version(store)
    sidecars = []
    for i, pod in enumerate(("sidecar-a", "sidecar-b")):
        write_spool(work / pod / "spool", model, records, prefix=f"{pod}-", seed=10 + i)
        sidecars.append(
            DriftSidecar(
                SidecarSettings(
                    spool_dir=work / pod / "spool",
                    store=store,
                    run_dir=work / pod / "run",
                    database_url=url,
                    pod_name=pod,
                    report_every_records=WINDOW,
                    report_every_seconds=5.0,
                )
            )
        )
    with contextlib.ExitStack() as stack:
        for sidecar in sidecars:
            stack.enter_context(sidecar)
        deadline = time.monotonic() + 600

        def wait(what: str, done: Callable[[], bool]) -> None:
            while not done():
                if time.monotonic() > deadline:
                    raise ServerError(f"the two sidecars: {what} not within 600 s")
                time.sleep(1)

        wait("shipping", lambda: all(
            sc.metric("atelier_drift_records_shipped_total") >= records for sc in sidecars
        ))  # fmt: skip
        shipped = time.time()
        wait("a report after shipping", lambda: max(
            sc.metric("atelier_drift_last_report_timestamp_seconds") for sc in sidecars
        ) > shipped)  # fmt: skip
        time.sleep(2)  # the gauges are set before the report's end; let it finish
        out = []
        for sc in sidecars:
            assert sc.proc is not None
            out.append({
                "pod": sc.s.pod_name, "reporter": sc.metric("atelier_drift_reporter") == 1,
                "shipped": sc.metric("atelier_drift_records_shipped_total"),
                "rss_mb": psutil.Process(sc.proc.pid).memory_info().rss / 2**20,
                "peak_rss_mb": _peak_rss_mb(sc.proc.pid),
            })  # fmt: skip
        return out


# --- detection -------------------------------------------------------------------------------


def detection(store: Path, work: Path) -> dict[str, Any]:
    """False-positive rate on held-out windows, and shifted records needed to declare drift,
    with the served model's real features and reference profile."""
    import zipfile

    import pandas as pd

    from atelier.drift.reference import load_reference
    from atelier.runtime.features import all_features
    from atelier.runtime.inference import Classifier
    from atelier.training.archive import current
    from atelier.training.data.idx import load_fashion_mnist

    cur = current(store)
    assert cur is not None
    model_dir = work / "model"
    with zipfile.ZipFile(store / "model-store" / f"{cur['name']}.mar") as z:
        z.extractall(model_dir)
    clf = Classifier.from_dir(model_dir)
    ref = load_reference(store)
    x = load_fashion_mnist(DEFAULT_FASHION_MNIST_DIR)["test_x"]

    def frame(images: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(all_features(images, clf.predict_proba(images)))

    clean = frame(x)
    methods = DriftMethods()
    windows = [clean.iloc[i : i + 1000] for i in range(0, 10_000, 1000)]
    classes = ref.num_classes
    flagged = [
        run_drift(ref.profile, w, methods, num_classes=classes, with_html=False) for w in windows
    ]
    fp_drift = sum(r.dataset_drift for r in flagged)
    fp_severity = sum(r.severity != "ok" for r in flagged)
    needed: dict[str, int | None] = {}
    for name, fn in SHIFTS.items():
        shifted = frame(fn(x[:1000]))
        needed[name] = None
        for k in MIXES:
            window = pd.concat([clean.iloc[1000 : 2000 - k], shifted.iloc[:k]], ignore_index=True)
            if run_drift(
                ref.profile, window, methods, num_classes=classes, with_html=False
            ).dataset_drift:
                needed[name] = k
                break
    fps = false_positives(ref.profile, clean, methods, classes)
    return {"windows": len(windows), "fp_dataset_drift": fp_drift, "fp_not_ok": fp_severity,
            "needed": needed, "false_positives": fps,
            "reference_rows": len(ref.profile)}  # fmt: skip


# --- the tables ------------------------------------------------------------------------------


def _cell(value: float, text: str, target: float | None = None, below: bool = True) -> str:
    """``text`` for ``value``, marked when it misses ``target``."""
    if target is None or (value <= target if below else value >= target):
        return text
    return f"{text} (missed)"


def bench_drift(
    records: int = 100_000,
    store: Path | None = None,
    *,
    log_records: int = 1_000_000,
    postgres: bool = True,
    with_detection: bool = True,
) -> dict[str, Any]:
    """Measure, print the tables, return the numbers. ``store`` is the model store whose
    current version the records belong to (`atelier bench drift` makes the smoke model's)."""
    if store is None:
        raise ValueError("bench_drift needs a model store (atelier bench drift makes one)")
    store = store.resolve()
    model = current_version(store)
    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    console = Console(width=160)
    result: dict[str, Any] = {"records": records, "log_records": log_records}

    with backends(work, postgres) as (dbs, missing):
        result["postgres_missing"] = missing
        write_spool(work / "spool", model, records, prefix="ship-")
        ship, logs = {}, {}
        for db in dbs:
            console.log(f"shipping {records:,} records into {db.name}")
            ship[db.name] = ship_rate(
                db.new_database("shipping"), store, work / "spool", work / f"ship-{db.name}"
            )
        for db in dbs:
            console.log(f"a {log_records:,}-record log in {db.name}")
            logs[db.name] = log_at_size(
                db.new_database("log"), store, work / f"log-{db.name}", log_records
            )
        shared = dbs[-1]
        console.log(f"two sidecar processes sharing a {shared.name} log")
        sidecars = two_sidecars(shared.new_database("sidecars"), store, work / "sidecars", records)
        result.update(shipping=ship, log=logs, sidecars=sidecars, shared_database=shared.name)
        names = [db.name for db in dbs]
    table = Table(title=f"atelier bench drift: the sidecar and its log (one run; {records:,} "
                        f"records per spool, a {log_records:,}-record log)")  # fmt: skip
    for col in ("measure", *names, "target"):
        table.add_column(col)
    _sidecar_rows(table, names, ship, logs, sidecars, shared.name, records, log_records)
    if missing:
        table.add_row("PostgreSQL", *(["-"] * (len(names) - 1)), missing, "-")
    console.print(table)

    if with_detection:
        console.log("false positives and detection with the served model")
        det = result["detection"] = detection(store, work)
        console.print(_detection_table(det))
    shutil.rmtree(work, ignore_errors=True)  # a failed run leaves it: logs, databases
    return result


def _sidecar_rows(
    table: Table,
    names: list[str],
    ship: dict[str, dict[str, float]],
    logs: dict[str, dict[str, float]],
    sidecars: list[dict[str, Any]],
    shared: str,
    records: int,
    log_records: int,
) -> None:
    def row(measure: str, cell: Callable[[dict[str, float]], str], target: str,
            of: dict[str, dict[str, float]] = logs) -> None:  # fmt: skip
        table.add_row(measure, *(cell(of[n]) for n in names), target)

    report_target = f"<= {REPORT_TARGET_S:g} s"
    row(
        f"shipping {records:,} records, one sidecar: DriftService.ship_once until the spool "
        "is drained (follow + parse + validate + insert + commit)",
        lambda r: _cell(r["records_per_s"], f"{r['records_per_s']:,.0f} records/s",
                        SHIP_TARGET, below=False),
        f">= {SHIP_TARGET:,.0f}/s", of=ship,
    )  # fmt: skip
    n = f"{log_records:,}"
    row(f"bulk-loading {n} records of one version (COPY / executemany, not the shipping "
        "path; the rows below run on this log)", lambda r: f"{r['fill_s']:.1f} s", "-")  # fmt: skip
    row(f"last_{WINDOW}: the query (InferenceLog.last over {n} records)",
        lambda r: f"{r['query_s']:.2f} s", "-")  # fmt: skip
    row(f"last_{WINDOW}: the report, JSON only (run_drift)",
        lambda r: f"{r['report_json_s']:.2f} s", "-")  # fmt: skip
    row(f"last_{WINDOW}: the report with the Evidently HTML (run_drift)",
        lambda r: f"{r['report_html_s']:.2f} s", "-")  # fmt: skip
    row(f"last_{WINDOW}: storing it (save_report, HTML gzip'd)",
        lambda r: f"{r['store_s']:.2f} s", "-")  # fmt: skip
    row(
        f"last_{WINDOW}: query + report + store, JSON only / with the HTML",
        lambda r: " / ".join(
            _cell(v, f"{v:.2f} s", REPORT_TARGET_S)
            for v in (r["query_s"] + r["report_json_s"] + r["store_s"],
                      r["query_s"] + r["report_html_s"] + r["store_s"])
        ),
        report_target,
    )  # fmt: skip
    row(
        f"since_live: catch-up of {NEW_ROWS:,} new records (Reporter._catch_up, its state "
        "held; each report does this)",
        lambda r: _cell(r["catch_up_s"], f"{r['catch_up_s']:.2f} s", REPORT_TARGET_S),
        report_target,
    )  # fmt: skip
    row(
        f"since_live: the first catch-up, over all {n} records (once per version and reporter "
        "lifetime, and from the first record only when no reporter saved the version's state)",
        lambda r: f"{r['first_catch_up_s']:.1f} s", "-",
    )  # fmt: skip
    any_log = next(iter(logs.values()))
    row(
        f"prune {any_log['pruned']:,.0f} of {any_log['prune_from']:,.0f} records "
        "(InferenceLog.prune, retention_rows; the reporter runs it every prune_every_s)",
        lambda r: f"{r['prune_s']:.1f} s", "-",
    )  # fmt: skip
    for sc in sidecars:
        role, target = (
            ("the reporter", REPORTER_RSS_TARGET_MB)
            if sc["reporter"]
            else ("not reporting", SHIPPER_RSS_TARGET_MB)
        )
        value = _cell(sc["peak_rss_mb"], f"{sc['rss_mb']:.0f} MB, peak {sc['peak_rss_mb']:.0f} MB",
                      target)  # fmt: skip
        table.add_row(
            f"RSS of sidecar process {sc['pod']} ({role}), one of two sharing the log, after "
            f"each shipped {sc['shipped']:,.0f} records and the reporter reported (now, peak)",
            *(value if name == shared else "-" for name in names),
            f"<= {target:.0f} MB",
        )


def _detection_table(det: dict[str, Any]) -> Table:
    table = Table(title="atelier bench drift: detection with the served model's features")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    table.add_row(
        f"false positives: held-out windows of 1,000 (of {det['windows']})",
        f"{det['fp_dataset_drift']} dataset drift, {det['fp_not_ok']} not ok",
        "0 (no drift declared)",
    )
    for fp in det["false_positives"]:
        table.add_row(
            f"clean held-out windows of {fp['window']:,} graded not ok "
            f"(of {fp['windows']}; reference {det['reference_rows']:,} rows)",
            f"{fp['not_ok']} ({fp['dataset_drift']} dataset drift, {fp['confidence']} "
            f"confidence, {fp['class_mix']} class mix)",
            "0",
        )
    for name, k in det["needed"].items():
        table.add_row(f"shifted records in a 1,000 window to declare drift: {name}",
                      "not within 1,000" if k is None else f"{k}", "within 1,000")  # fmt: skip
    return table
