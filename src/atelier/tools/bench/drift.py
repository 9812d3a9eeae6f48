"""`atelier bench drift`: ingest rate, report time over a 10,000-record window, steady RSS.

Runs in-process on this machine with real spool files written by the handler's writer, the
real follower, windows and Evidently report. Prints a table; nothing is asserted in tests.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from atelier.drift.inference_log import InferenceLog
from atelier.drift.ingest import SpoolFollower
from atelier.drift.methods import DriftMethods
from atelier.drift.report import run_drift
from atelier.drift.windows import frame_of
from atelier.runtime.features import IMAGE_FEATURES
from atelier.runtime.records import FeatureSpool, make_records
from atelier.tools import shifts
from atelier.training.config import DEFAULT_FASHION_MNIST_DIR

SYNTHETIC_CLASSES = 10


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


def sidecar_rss(spool_dir: Path, store: Path, run_dir: Path, expected: int) -> float:
    """RSS of a real sidecar process once it has ingested the spool and written reports."""
    import psutil

    from atelier.tools.drift import DriftSidecar, SidecarSettings

    settings = SidecarSettings(spool_dir=spool_dir, store=store, run_dir=run_dir,
                               report_every_records=10_000, report_every_seconds=1.0)  # fmt: skip
    with DriftSidecar(settings) as sidecar:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = sidecar.metric("atelier_drift_records_ingested_total") >= expected
            if done and sidecar.metric("atelier_drift_last_report_timestamp_seconds") > 0:
                break
            time.sleep(1)
        time.sleep(3)  # let the report cycle that is running finish
        assert sidecar.proc is not None
        return float(psutil.Process(sidecar.proc.pid).memory_info().rss / 2**20)


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


def bench_drift(records: int = 100_000, store: Path | None = None) -> dict[str, float]:
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    spool = FeatureSpool(work / "spool", max_bytes=20_000_000, backups=20)
    feats = _features(rng, records)
    for start in range(0, records, 32):
        n = min(32, records - start)
        spool.write(make_records(f"r{start}", "v2", "m", "1", feats, start, n))
    spool.close()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    follower = SpoolFollower(work / "spool", work / "state.json")
    log = InferenceLog(f"sqlite:///{work / 'inference-log.db'}")
    log.migrate()
    t0 = time.perf_counter()
    total = 0
    while True:
        batch = follower.poll(5_000)
        if not batch.records:
            break
        log.ship(batch.records, "bench")
        follower.commit()
        total += len(batch.records)
    ingest_s = time.perf_counter() - t0
    ref_feats = _features(np.random.default_rng(1), 6000)
    import pandas as pd

    reference = pd.DataFrame(ref_feats)
    current = frame_of(log.last("m", "1", 10_000).values)
    k = SYNTHETIC_CLASSES
    run_drift(
        reference, current.iloc[:200], DriftMethods(), num_classes=k, with_html=False
    )  # warm-up
    timings = {}
    for html in (False, True):
        t1 = time.perf_counter()
        run_drift(reference, current, DriftMethods(), num_classes=k, with_html=html)
        timings[html] = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result: dict[str, Any] = {
        "records": float(total), "ingest_records_per_s": total / ingest_s,
        "report_10k_s": timings[False], "report_10k_html_s": timings[True],
        "peak_rss_mb": rss, "rss_before_ingest_mb": rss_before,
    }  # fmt: skip
    if store is not None:  # after the RSS reading: it loads torch, the model and the test set
        result["sidecar_rss_mb"] = sidecar_rss(work / "spool", store, work / "sidecar", total)
        det = detection(store, work)
        result["fp_dataset_drift"] = det["fp_dataset_drift"]
        for fp in det["false_positives"]:
            result[f"fp_not_ok_window_{fp['window']}"] = float(fp["not_ok"])
    table = Table(title="atelier bench drift (in-process, one run)")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    table.add_row(
        "shipping into SQLite (follow + parse + dedupe + insert + commit)",
        f"{result['ingest_records_per_s']:,.0f} records/s",
        ">= 5,000/s",
    )
    table.add_row(
        "report over 10,000 records vs 6,000 reference, JSON only",
        f"{timings[False]:.2f} s",
        "<= 2 s",
    )
    table.add_row("same, with the Evidently HTML", f"{timings[True]:.2f} s", "<= 2 s")
    table.add_row(
        f"this bench process's peak RSS ({total:,} records generated in memory too)",
        f"{rss:.0f} MB",
        "-",
    )
    if store is not None:
        table.add_row(
            f"the drift sidecar process's RSS after ingesting {total:,} records and reporting",
            f"{result['sidecar_rss_mb']:.0f} MB",
            "<= 400 MB",
        )
    if store is not None:
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
    Console(width=160).print(table)
    return result
