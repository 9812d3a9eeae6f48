"""`atelier bench train | tune | tracking | serve | drift | capacity`: tables of measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print a table.")


@bench_app.command("train")
def bench_train(
    configs: Annotated[
        list[Path] | None, typer.Option("--config", help="configs to run (default: all three)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="where the runs go")] = Path("runs/bench"),
) -> None:
    """Train each config, archive it into a scratch store, and print a table against the targets."""
    from atelier.tools.bench.train import bench_train as run

    run(configs, out)


@bench_app.command("tune")
def bench_tune(
    config: Annotated[
        Path, typer.Option("--config", help="base config, also the hand-tuned comparison")
    ] = Path("training-job/configs/fashion-mnist.yaml"),
    space: Annotated[
        Path | None, typer.Option("--space", help="search space (default: the packaged one)")
    ] = None,
    trials: Annotated[int, typer.Option("--trials", help="trials in the search")] = 20,
    workers: Annotated[int, typer.Option("--workers", help="worker processes")] = 2,
    folds: Annotated[int | None, typer.Option("--folds", help="k-fold CV (k >= 2)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override both arms: key.sub=value")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="where the runs go")] = Path("runs/bench-tune"),
) -> None:
    """A search with W workers against the hand-tuned config trained for as long (a table)."""
    from atelier.tools.bench.tune import bench_tune as run

    run(config, space, trials, workers, folds, set_ or [], out)


@bench_app.command("tracking")
def bench_tracking(
    config: Annotated[Path, typer.Option("--config", help="training config")] = Path(
        "training-job/configs/smoke.yaml"
    ),
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="runs with and without")] = 2,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="track to this server (default: local SQLite)"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="where the runs go")] = Path(
        "runs/bench-tracking"
    ),
    side_by_side: Annotated[
        bool,
        typer.Option("--side-by-side/--no-side-by-side", help="also run with tracking off"),
    ] = True,
) -> None:
    """`atelier train` with tracking off and on, alternated; prints the overhead."""
    from atelier.tools.bench.tracking import bench_tracking as run

    run(config, out, rounds, tracking_uri, side_by_side)


@bench_app.command("serve")
def bench_serve(
    store: Annotated[
        Path, typer.Option("--store", help="store to serve (made from the smoke config if empty)")
    ] = Path("runs/bench-serve/store"),
    out: Annotated[Path, typer.Option("--out", help="where results go")] = Path("runs/bench-serve"),
    seconds: Annotated[float, typer.Option("--seconds", min=1.0, help="each wrk run")] = 5.0,
    concurrency: Annotated[list[int] | None, typer.Option("--concurrency", "-c", min=1)] = None,
    runtime: Annotated[
        list[str] | None,
        typer.Option(
            "--runtime",
            help="torchserve, kserve, and the peers kserve-model (a bare kserve.Model) and "
            "fastapi (a plain FastAPI app); default: all four",
        ),
    ] = None,
    kserve_workers: Annotated[
        int | None,
        typer.Option("--kserve-workers", min=1, help="KServe runtime processes (default: cores)"),
    ] = None,
) -> None:
    """In-process limit against TorchServe, KServe and two peers under wrk; prints tables."""
    from atelier.runtime.errors import ConfigError
    from atelier.tools.bench.serve import PEER_TARGETS
    from atelier.tools.bench.serve import bench_serve as run

    known = ["torchserve", "kserve", *PEER_TARGETS]
    runtimes = runtime or known
    unknown = sorted(set(runtimes) - set(known))
    if unknown:
        raise ConfigError(f"--runtime {', '.join(unknown)}: choose {', '.join(known)}")
    run(store, out, seconds, concurrency or [1, 8, 32], runtimes, kserve_workers)


@bench_app.command("drift")
def bench_drift(
    records: Annotated[
        int, typer.Option("--records", min=1000, help="records in each sidecar's spool")
    ] = 100_000,
    log_records: Annotated[
        int,
        typer.Option("--log-records", min=20_000, help="records in the log the reports run on"),
    ] = 1_000_000,
    postgres: Annotated[
        bool,
        typer.Option(
            "--postgres/--no-postgres",
            help="also measure a throwaway PostgreSQL cluster (needs the postgresql package)",
        ),
    ] = True,
    detection: Annotated[
        bool,
        typer.Option("--detection/--no-detection", help="false positives and detection rows"),
    ] = True,
    store: Annotated[
        Path,
        typer.Option("--store", help="model store the records belong to (smoke model if empty)"),
    ] = Path("runs/bench-serve/store"),
) -> None:
    """Drift sidecar: shipping rate into SQLite and PostgreSQL, report and catch-up times on
    a big log, pruning, the RSS of two sidecars sharing a log, false positives, detection."""
    from atelier.tools.bench.drift import bench_drift as run
    from atelier.tools.bench.serve import ensure_store

    ensure_store(store, store.parent)
    run(records, store, log_records=log_records, postgres=postgres, with_detection=detection)


@bench_app.command("capacity")
def bench_capacity(
    store: Annotated[
        Path, typer.Option("--store", help="store to serve (made from the smoke config if empty)")
    ] = Path("runs/bench-serve/store"),
    out: Annotated[Path, typer.Option("--out", help="where results go")] = Path(
        "runs/bench-capacity"
    ),
    step_seconds: Annotated[
        float, typer.Option("--step-seconds", min=1.0, help="each step of the ramp")
    ] = 5.0,
    connections: Annotated[
        list[int] | None,
        typer.Option("--connections", "-c", min=1, help="the ramp (default 1 2 4 ... 256)"),
    ] = None,
    slo_p99_ms: Annotated[float, typer.Option("--slo-p99-ms", min=0.001)] = 100.0,
    utilisation: Annotated[
        float, typer.Option("--utilisation", min=0.05, max=1.0, help="target share of the knee")
    ] = 0.6,
    design_peak_rps: Annotated[
        float, typer.Option("--design-peak-rps", min=1.0, help="rate maxReplicas is sized for")
    ] = 5000.0,
) -> None:
    """Highest req/s one TorchServe replica holds within the p99 SLO (wrk step ramp)."""
    from atelier.tools.bench.capacity import DEFAULT_CONNECTIONS
    from atelier.tools.bench.capacity import bench_capacity as run

    run(store, out, step_seconds, connections or list(DEFAULT_CONNECTIONS), slo_p99_ms,
        utilisation, design_peak_rps)  # fmt: skip
