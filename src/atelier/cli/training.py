"""`atelier train | archive | samples`: a run folder, a model store version, sample images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from atelier.cli.options import DEFAULT_STORE, EXPERIMENT, TRACKING_MODE
from atelier.training.config import DEFAULT_FASHION_MNIST_DIR


def train(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="YAML config, see training-job/configs/")
    ],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="run folder (default runs/<name>-<time>)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from --out's last checkpoint")
    ] = False,
    tracking: Annotated[str | None, TRACKING_MODE] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI (env MLFLOW_TRACKING_URI; default "
            "sqlite:///<parent of --out>/mlflow.db)",
        ),
    ] = None,
    experiment: Annotated[str | None, EXPERIMENT] = None,
) -> None:
    """Train, evaluate and gate a model; write a run folder; track it in MLflow."""
    from atelier.runtime.errors import ConfigError
    from atelier.training.config import load_config

    # The config first: a bad file or --set answers before torch and MLflow are imported.
    cfg = load_config(config, set_ or [])
    if resume and out is None:
        raise ConfigError("--resume needs --out: the run folder to continue")
    from atelier.training.loop import check_out_dir
    from atelier.training.loop import train as run_train
    from atelier.training.tracking import load_tracking_settings, tracked_run, ui_hint

    out_dir = out or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_out_dir(out_dir, resume)
    settings = load_tracking_settings(mode=tracking, uri=tracking_uri, experiment=experiment)
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    with tracked_run(settings, cfg, out_dir, resume=resume, say=say) as tracker:
        result = run_train(cfg, out_dir, resume=resume, tracker=tracker)
    m = result.metrics
    typer.echo(
        f"run {result.run_dir}: test_accuracy={m['test_accuracy']:.4f} params={m['params']} "
        f"train_seconds={m['train_seconds']:.1f} gate=passed"
    )
    if tracker is None:
        typer.echo(
            "tracked: nothing (tracking off)" if settings.mode == "off" else "tracked: nothing"
        )
    else:
        rec = tracker.record
        typer.echo(
            f"tracked: MLflow run {rec.run_id} ({rec.status}) in experiment "
            f"{rec.experiment_name!r} at {rec.tracking_uri}; {ui_hint(rec.tracking_uri)}"
        )


def archive(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `atelier train`")],
    store: Annotated[Path, typer.Option("--store", help="model store root")] = DEFAULT_STORE,
    version: Annotated[
        str | None, typer.Option("--version", help="new version (default: next integer)")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="model name (default: the run's)")
    ] = None,
    serving: Annotated[
        list[str] | None,
        typer.Option("--serving", help="override the run's serving section: key=value"),
    ] = None,
    register: Annotated[
        bool,
        typer.Option(
            "--register/--no-register",
            help="register a tracked run's version in its MLflow Model Registry",
        ),
    ] = True,
    challenger: Annotated[
        bool,
        typer.Option(
            "--challenger",
            help="a candidate: alias `challenger` in the registry, the store's current "
            "version unchanged (promote it later)",
        ),
    ] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            envvar="MLFLOW_TRACKING_URI",
            help="the registry's tracking URI (default: the one the run was tracked in)",
        ),
    ] = None,
    storage_uri: Annotated[
        str | None,
        typer.Option(
            "--storage-uri",
            help="the store root as serving reads it, for the registry's tag "
            "(e.g. pvc://claim or s3://bucket/store; default file://<store>)",
        ),
    ] = None,
) -> None:
    """Build a versioned .mar from a run into the model store, register it, make it current."""
    from atelier.training.archive import archive_run, serving_settings

    result = archive_run(
        run_dir,
        store,
        version=version,
        name=name,
        serving=serving_settings(run_dir, serving or []),
        register=register,
        tracking_uri=tracking_uri,
        storage_uri=storage_uri,
        challenger=challenger,
        say=lambda line: typer.echo(line, err=True),
    )
    state = "current" if result.current else "not current"
    typer.echo(f"archived {result.name} version {result.version} -> {result.version_dir} ({state})")
    if result.registry is not None:
        alias = "challenger" if challenger else "champion"
        typer.echo(
            f"registered {result.registry.name} version {result.registry.version} "
            f"(@{alias}, run {result.registry.run_id}) in {result.registry.tracking_uri}"
        )


def samples(
    out: Annotated[Path, typer.Option("--out", help="folder for the PNG files")] = Path(
        "runs/samples"
    ),
    n: Annotated[int, typer.Option("--n", min=1, max=10_000, help="how many test images")] = 8,
    data: Annotated[
        Path, typer.Option("--data", help="Fashion-MNIST folder")
    ] = DEFAULT_FASHION_MNIST_DIR,
) -> None:
    """Write Fashion-MNIST test images as PNG files named <index>-<true label>.png."""
    from atelier.runtime.preprocess import encode_png
    from atelier.training.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist

    arrays = load_fashion_mnist(data)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = FASHION_MNIST_CLASSES[int(arrays["test_y"][i])].replace("/", "-").replace(" ", "-")
        (out / f"{i:04d}-{label}.png").write_bytes(encode_png(arrays["test_x"][i]))
    typer.echo(f"wrote {n} PNG files to {out}")
