"""Defaults several command groups share."""

from __future__ import annotations

from pathlib import Path

import typer

DEFAULT_STORE = Path("model-store")

# MLflow tracking, as `atelier train` and `atelier tune` take it (atelier.training.tracking).
TRACKING_MODE = typer.Option(
    "--tracking", help="required | optional | off (env ATELIER_TRACKING; default required)"
)
EXPERIMENT = typer.Option(
    "--experiment", help="MLflow experiment (env MLFLOW_EXPERIMENT_NAME; default: name)"
)
