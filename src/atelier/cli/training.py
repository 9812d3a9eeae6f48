"""`atelier train | archive | samples`: a run folder, a model store version, sample images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from atelier.cli.options import DEFAULT_STORE
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
) -> None:
    """Train, evaluate and gate a model; write a run folder."""
    from atelier.runtime.errors import ConfigError
    from atelier.training.config import load_config
    from atelier.training.loop import train as run_train

    cfg = load_config(config, set_ or [])
    if resume and out is None:
        raise ConfigError("--resume needs --out: the run folder to continue")
    out_dir = out or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_train(cfg, out_dir, resume=resume)
    m = result.metrics
    typer.echo(
        f"run {result.run_dir}: test_accuracy={m['test_accuracy']:.4f} params={m['params']} "
        f"train_seconds={m['train_seconds']:.1f} gate=passed"
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
) -> None:
    """Build a versioned .mar from a run into the model store and make it current."""
    from atelier.training.archive import archive_run, serving_settings

    result = archive_run(
        run_dir, store, version=version, name=name, serving=serving_settings(run_dir, serving or [])
    )
    typer.echo(f"archived {result.name} version {result.version} -> {result.version_dir} (current)")


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
