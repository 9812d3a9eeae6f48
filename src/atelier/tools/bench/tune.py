"""`atelier bench tune`: a search with W workers against the hand-tuned config trained under the
same time budget (the search's wall time); prints a table. Measured, never asserted."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from atelier.runtime.errors import GateFailedError
from atelier.training.config import load_config
from atelier.training.tune.launcher import TuneRequest, run_tune
from atelier.training.tune.space import DEFAULT_SPACE, load_space


def bench_tune(
    config: Path,
    space: Path | None,
    trials: int,
    workers: int,
    folds: int | None,
    overrides: list[str],
    out: Path,
) -> list[dict[str, Any]]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = load_config(config, overrides)
    console = Console(width=200)

    t0 = time.perf_counter()
    summary = run_tune(
        TuneRequest(
            base=base,
            space=load_space(space),
            space_source=str(space or DEFAULT_SPACE),
            trials=trials,
            workers=workers,
            folds=folds,
            out=out / f"search-{stamp}",
            echo=console.print,
        )
    )
    search_s = time.perf_counter() - t0
    best = summary["best"]
    counts = summary["counts"]

    # The hand-tuned config, same data, may train for as long as the whole search took.
    from atelier.training.loop import train

    budget = round(search_s, 1)
    hand = base.model_copy(
        update={
            "train": base.train.model_copy(update={"time_budget_seconds": budget}),
            "gate": base.gate.model_copy(update={"min_accuracy": 0.0}),
        }
    )
    run_dir = out / f"hand-tuned-{stamp}"
    t1 = time.perf_counter()
    try:
        metrics = train(hand, run_dir).metrics
    except GateFailedError:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    hand_s = time.perf_counter() - t1

    rows: list[dict[str, Any]] = [
        {
            "arm": f"atelier tune: {trials} trials, {workers} workers"
            + (f", {folds}-fold CV" if folds else ""),
            "wall_s": round(search_s, 1),
            "val_accuracy": best["val_accuracy"],
            "test_accuracy": best["test_accuracy"],
            "detail": f"best trial {best['number']}; "
            + ", ".join(f"{k.lower()} {v}" for k, v in counts.items())
            + "; "
            + ", ".join(f"{k}={_short(v)}" for k, v in best["params"].items()),
        },
        {
            "arm": f"hand-tuned {config.name} (budget {budget:.0f} s)",
            "wall_s": round(hand_s, 1),
            "val_accuracy": metrics["val_accuracy"],
            "test_accuracy": metrics["test_accuracy"],
            "detail": f"{metrics['epochs_run']} epochs, stop: {metrics['stop_reason']}, "
            f"train loop {metrics['train_seconds']} s",
        },
    ]
    table = Table(title=f"atelier bench tune ({config.name}, --set {' '.join(overrides) or '-'})")
    for col in ("arm", "wall_s", "val_accuracy", "test_accuracy", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("arm", "wall_s", "val_accuracy", "test_accuracy")),
                      r["detail"])  # fmt: skip
    console.print(table)
    (out / f"bench-tune-{stamp}.json").write_text(json.dumps(rows, indent=2))
    return rows


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
