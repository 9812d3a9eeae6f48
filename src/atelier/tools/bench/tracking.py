"""`atelier bench tracking`: the cost of MLflow tracking, side by side with it off.

Each round runs `atelier train` twice as a fresh process on the same config, once with
``--tracking off`` and once tracked (the default local SQLite store in a fresh folder, or
``--tracking-uri``), in alternating order so a drifting machine load falls on both. The
table has each process's wall time (imports, data, training, evaluation, tracking) and
its training-loop seconds; the overhead is tracked against untracked wall time.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from atelier.runtime.errors import AtelierError


def _run(config: Path, out: Path, extra: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "atelier",
            "train",
            "--config",
            str(config),
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise AtelierError(f"atelier train {' '.join(extra)} failed: {proc.stderr.strip()[-300:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "train_loop_s": float(metrics["train_seconds"])}


def bench_tracking(
    config: Path, out: Path, rounds: int, tracking_uri: str | None
) -> list[dict[str, object]]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tracked = ["--tracking", "required"] + (
        ["--tracking-uri", tracking_uri] if tracking_uri else []
    )
    modes = {"off": ["--tracking", "off"], "on": tracked}
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for i in range(rounds):
        order = ["off", "on"] if i % 2 == 0 else ["on", "off"]
        for mode in order:
            # A fresh folder per run: the tracked one makes (and migrates) its own store.
            run_dir = out / f"{config.stem}-{stamp}-{i}-{mode}" / "run"
            results[mode].append(_run(config, run_dir, modes[mode]))
    off_wall = statistics.mean(r["wall_s"] for r in results["off"])
    rows: list[dict[str, object]] = []
    for mode in ("off", "on"):
        walls = [r["wall_s"] for r in results[mode]]
        loops = [r["train_loop_s"] for r in results[mode]]
        mean_wall = statistics.mean(walls)
        rows.append(
            {
                "config": config.name,
                "tracking": "off" if mode == "off" else (tracking_uri or "local SQLite"),
                "runs": len(walls),
                "wall_s": round(mean_wall, 1),
                "wall_min_s": round(min(walls), 1),
                "train_loop_s": round(statistics.mean(loops), 1),
                "overhead_pct": round(100 * (mean_wall - off_wall) / off_wall, 1),
            }
        )
    table = Table(title="atelier bench tracking (mean of the rounds)")
    for col in ("config", "tracking", "runs", "wall s", "min wall s", "train loop s", "overhead"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["config"]),
            str(r["tracking"]),
            str(r["runs"]),
            f"{r['wall_s']:.1f}",
            f"{r['wall_min_s']:.1f}",
            f"{r['train_loop_s']:.1f}",
            "-" if r["tracking"] == "off" else f"{r['overhead_pct']:+.1f}%",
        )
    Console(width=160).print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench-tracking-{config.stem}-{stamp}.json").write_text(json.dumps(rows, indent=2))
    return rows
