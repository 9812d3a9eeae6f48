"""`atelier bench tracking`: the cost of MLflow tracking, side by side with it off.

Each round runs `atelier train` twice as a fresh process on the same config, once with
``--tracking off`` and once tracked (the default local SQLite store in a fresh folder, or
``--tracking-uri``), in alternating order so a drifting machine load falls on both. The
table has each process's wall time (imports, data, training, evaluation, tracking) and
its training-loop seconds; the overhead is tracked against untracked wall time.

On a shared, noisy machine the difference of two wall times is mostly noise; the tracked
run also counts its own cost (``tracking_seconds`` in ``mlflow.json``: importing MLflow,
opening the store and the run, every hook, the artifacts and the end), which is the
column to read there. ``--no-side-by-side`` runs only tracked processes.
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
    """One `atelier train` process: its wall time, training loop and tracking seconds."""
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
    # Exit 4 (below the gate: a run the time budget cut short on a busy machine) still
    # trained, evaluated and tracked in full.
    if proc.returncode not in (0, 4):
        raise AtelierError(f"atelier train {' '.join(extra)} failed: {proc.stderr.strip()[-300:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    record = out / "mlflow.json"
    tracking = json.loads(record.read_text())["tracking_seconds"] if record.is_file() else 0.0
    return {
        "wall_s": wall,
        "train_loop_s": float(metrics["train_seconds"]),
        "tracking_s": float(tracking),
    }


def bench_tracking(
    config: Path, out: Path, rounds: int, tracking_uri: str | None, side_by_side: bool = True
) -> list[dict[str, object]]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tracked = ["--tracking", "required"] + (
        ["--tracking-uri", tracking_uri] if tracking_uri else []
    )
    modes = {"off": ["--tracking", "off"], "on": tracked}
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for i in range(rounds):
        order = ["off", "on"] if i % 2 == 0 else ["on", "off"]
        for mode in order if side_by_side else ["on"]:
            # A fresh folder per run: the tracked one makes (and migrates) its own store.
            run_dir = out / f"{config.stem}-{stamp}-{i}-{mode}" / "run"
            results[mode].append(_run(config, run_dir, modes[mode]))
    off_wall = statistics.mean(r["wall_s"] for r in results["off"]) if results["off"] else None
    rows: list[dict[str, object]] = []
    for mode in ("off", "on") if side_by_side else ("on",):
        walls = [r["wall_s"] for r in results[mode]]
        mean_wall = statistics.mean(walls)
        tracking = statistics.mean(r["tracking_s"] for r in results[mode])
        rows.append(
            {
                "config": config.name,
                "tracking": "off" if mode == "off" else (tracking_uri or "local SQLite"),
                "runs": len(walls),
                "wall_s": round(mean_wall, 1),
                "wall_min_s": round(min(walls), 1),
                "train_loop_s": round(statistics.mean(r["train_loop_s"] for r in results[mode]), 1),
                "wall_vs_off_pct": None
                if off_wall is None or mode == "off"
                else round(100 * (mean_wall - off_wall) / off_wall, 1),
                "tracking_s": round(tracking, 1),
                "tracking_share_pct": round(100 * tracking / mean_wall, 1),
            }
        )
    table = Table(title="atelier bench tracking (means over the rounds)")
    for col in (
        "config", "tracking", "runs", "wall s", "min wall s", "train loop s",
        "wall vs off", "tracking s", "tracking share of wall",
    ):  # fmt: skip
        table.add_column(col)
    for r in rows:
        vs_off = r["wall_vs_off_pct"]
        table.add_row(
            str(r["config"]),
            str(r["tracking"]),
            str(r["runs"]),
            f"{r['wall_s']:.1f}",
            f"{r['wall_min_s']:.1f}",
            f"{r['train_loop_s']:.1f}",
            "-" if vs_off is None else f"{vs_off:+.1f}%",
            f"{r['tracking_s']:.1f}",
            "-" if r["tracking"] == "off" else f"{r['tracking_share_pct']:.1f}%",
        )
    Console(width=160).print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench-tracking-{config.stem}-{stamp}.json").write_text(json.dumps(rows, indent=2))
    return rows
