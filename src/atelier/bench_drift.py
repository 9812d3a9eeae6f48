"""`atelier bench drift`: ingest rate, report time over a 10,000-record window, steady RSS.

Runs in-process on this machine with real spool files written by the handler's writer, the
real follower, windows and Evidently report. Prints a table; nothing is asserted in tests.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from atelier.drift.feedback import PredictionLog
from atelier.drift.ingest import SpoolFollower
from atelier.drift.report import DriftMethods, run_drift
from atelier.drift.windows import Windows
from atelier.features import IMAGE_FEATURES
from atelier.serving.spool import FeatureSpool, make_records


def _features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    f = {name: rng.uniform(0.05, 0.95, n) for name in IMAGE_FEATURES}
    probs = rng.dirichlet(np.ones(10) * 0.3, n)
    f["predicted_class"] = probs.argmax(1).astype(float)
    f["confidence"] = probs.max(1)
    f["entropy"] = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
    return f


def bench_drift(records: int = 100_000) -> dict[str, float]:
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
    windows = Windows({"last_1000": 1000, "last_10000": 10_000}, 10_000)
    log = PredictionLog()
    t0 = time.perf_counter()
    total = 0
    while True:
        batch = follower.poll(10_000)
        if not batch.records:
            break
        windows.add(batch.records)
        log.add(batch.records)
        follower.commit()
        total += len(batch.records)
    ingest_s = time.perf_counter() - t0
    ref_feats = _features(np.random.default_rng(1), 6000)
    import pandas as pd

    reference = pd.DataFrame(ref_feats)
    current = windows.frame("last_10000")
    run_drift(reference, current.iloc[:200], DriftMethods(), with_html=False)  # import + warm-up
    timings = {}
    for html in (False, True):
        t1 = time.perf_counter()
        run_drift(reference, current, DriftMethods(), with_html=html)
        timings[html] = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "records": float(total), "ingest_records_per_s": total / ingest_s,
        "report_10k_s": timings[False], "report_10k_html_s": timings[True],
        "peak_rss_mb": rss, "rss_before_ingest_mb": rss_before,
    }  # fmt: skip
    table = Table(title="atelier bench drift (in-process, one run)")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    table.add_row(
        "ingest (follow + parse + dedupe + windows + commit)",
        f"{result['ingest_records_per_s']:,.0f} records/s",
        ">= 5,000/s",
    )
    table.add_row(
        "report over 10,000 records vs 6,000 reference, JSON only",
        f"{timings[False]:.2f} s",
        "<= 2 s",
    )
    table.add_row("same, with the Evidently HTML", f"{timings[True]:.2f} s", "<= 2 s")
    table.add_row(f"peak RSS after {total:,} records", f"{rss:.0f} MB", "<= 400 MB")
    Console(width=160).print(table)
    return result
