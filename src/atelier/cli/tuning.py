"""`atelier tune`: hyperparameter search with Optuna; `atelier tune-worker`: one of its workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def tune(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="base training YAML, see training-job/configs/")
    ],
    space: Annotated[
        Path | None,
        typer.Option("--space", help="search space YAML (default: the packaged default space)"),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", "-n", help="trials in the study")] = 20,
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="worker processes sharing the study")
    ] = 1,
    folds: Annotated[
        int | None,
        typer.Option("--folds", help="stratified k-fold CV on the training split (k >= 2)"),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option("--storage", help="Optuna RDB storage URL (default: SQLite in --out)"),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="study name (default: the config's name)")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override the base config: key.sub=value")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="output folder (default runs/tune-<name>-<time>)")
    ] = None,
    tracking: Annotated[
        str | None,
        typer.Option(
            "--tracking", help="required | optional | off (env ATELIER_TRACKING; default required)"
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI (env MLFLOW_TRACKING_URI; default sqlite:///<out>/mlflow.db)",
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment", help="MLflow experiment (env MLFLOW_EXPERIMENT_NAME; default: name)"
        ),
    ] = None,
) -> None:
    """Search hyperparameters: W workers share one Optuna study; writes best.yaml and plots."""
    from atelier.training.config import load_config
    from atelier.training.tracking import load_tracking_settings
    from atelier.training.tune.launcher import TuneRequest, run_tune
    from atelier.training.tune.space import DEFAULT_SPACE, load_space

    base = load_config(config, set_ or [])
    space_model = load_space(space)
    out_dir = out or Path("runs") / f"tune-{base.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_tune(
        TuneRequest(
            base=base,
            space=space_model,
            space_source=str(space or DEFAULT_SPACE),
            trials=trials,
            workers=workers,
            folds=folds,
            storage=storage,
            study=study,
            out=out_dir,
            echo=typer.echo,
            tracking=load_tracking_settings(mode=tracking, uri=tracking_uri, experiment=experiment),
        )
    )


def tune_worker(
    storage: Annotated[str, typer.Option("--storage", help="the study's RDB storage URL")],
    study: Annotated[str, typer.Option("--study", help="study name")],
    out: Annotated[Path, typer.Option("--out", help="folder for the trials' run folders")],
    index: Annotated[int, typer.Option("--index", help="worker index (sampler seed offset)")] = 0,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch threads (default: all cores)")
    ] = None,
) -> None:
    """Run trials of an existing `atelier tune` study until its queue is empty."""
    from atelier.runtime.errors import ConfigError
    from atelier.training.tune.worker import run_worker

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads}: at least 1")
    ran = run_worker(storage, study, out, index, threads)
    typer.echo(f"worker {index}: ran {ran} trials")
