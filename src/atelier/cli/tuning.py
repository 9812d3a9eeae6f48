"""`atelier tune`: hyperparameter search with Optuna; `atelier tune-worker`: one of its workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from atelier.cli.options import EXPERIMENT, TRACKING_MODE

# The storage URL may carry a password: the chart's tune Job passes it in the environment.
STORAGE_ENV = "ATELIER_TUNE_STORAGE"


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
        typer.Option(
            "--storage",
            envvar=STORAGE_ENV,
            help="Optuna RDB storage URL (default: SQLite in --out)",
        ),
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
    tracking: Annotated[str | None, TRACKING_MODE] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI (env MLFLOW_TRACKING_URI; default sqlite:///<out>/mlflow.db)",
        ),
    ] = None,
    experiment: Annotated[str | None, EXPERIMENT] = None,
    prepare_only: Annotated[
        bool,
        typer.Option(
            "--prepare-only",
            help="create the study and enqueue its trials unless it exists (idempotent), "
            "start no worker: for workers started elsewhere (the chart's tune Job)",
        ),
    ] = False,
) -> None:
    """Search hyperparameters: W workers share one Optuna study; writes best.yaml and plots."""
    from atelier.training.config import load_config
    from atelier.training.tracking import load_tracking_settings
    from atelier.training.tune.launcher import TuneRequest, masked_url, prepare_study, run_tune
    from atelier.training.tune.space import DEFAULT_SPACE, load_space

    base = load_config(config, set_ or [])
    space_model = load_space(space)
    out_dir = out or Path("runs") / f"tune-{base.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    request = TuneRequest(
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
    if prepare_only:
        from atelier.training.tune.tracking import StudyTracking, open_prepared_study_run

        # The store answers (or tracking is off, or optional and down) before the study is made.
        hooks = StudyTracking.connect(request.tracking, request) if request.tracking else None
        prepared, created = prepare_study(request)
        open_prepared_study_run(hooks, prepared, created, typer.echo)
        n = len(prepared.get_trials(deepcopy=False))
        where = masked_url(request.storage_url)
        typer.echo(
            f"study {prepared.study_name} in {where}: "
            + (f"created, {n} trials enqueued" if created else f"exists ({n} trials), unchanged")
        )
        return
    run_tune(request)


def tune_worker(
    storage: Annotated[
        str, typer.Option("--storage", envvar=STORAGE_ENV, help="the study's RDB storage URL")
    ],
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


def tune_report(
    storage: Annotated[
        str, typer.Option("--storage", envvar=STORAGE_ENV, help="the study's RDB storage URL")
    ],
    study: Annotated[str, typer.Option("--study", help="study name")],
    out: Annotated[Path, typer.Option("--out", help="folder for best.yaml, plots, summary")],
) -> None:
    """Write a finished study's best.yaml, plots and summary.json into --out, and print
    best.yaml (a training config) on stdout."""
    from atelier.training.tune.launcher import report_study

    typer.echo(report_study(storage, study, out).read_text(), nl=False)
