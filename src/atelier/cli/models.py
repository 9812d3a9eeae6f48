"""`atelier promote` and `atelier models list`: the model store and the MLflow Model Registry
seen, and changed, together."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atelier.cli.options import DEFAULT_STORE

models_app = typer.Typer(no_args_is_help=True, help="The model store's versions and aliases.")

TRACKING_URI = typer.Option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    help="the registry's tracking URI (default: the one recorded in the store's model cards)",
)


def promote(
    name: Annotated[str, typer.Argument(help="the model's name, e.g. fashion-mnist")],
    version: Annotated[str, typer.Argument(help="the store version (`atelier models list`)")],
    store: Annotated[Path, typer.Option("--store", help="model store root")] = DEFAULT_STORE,
    tracking_uri: Annotated[str | None, TRACKING_URI] = None,
) -> None:
    """Make VERSION the store's current version and the registry's `champion`, together."""
    from atelier.training.registry import promote as run_promote

    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    result = run_promote(store, name, version, tracking_uri=tracking_uri, say=say)
    reg = (
        f" (registry version {result.registry_version} @champion)"
        if result.registry_version
        else ""
    )
    if not result.changed:
        typer.echo(f"{name} version {version}{reg} is already current: nothing changed")
        return
    typer.echo(
        f"promoted {name} version {version}{reg}: current in {store} "
        f"(was {result.previous or 'none'}; champion was registry version "
        f"{result.previous_champion or 'none'})"
    )


@models_app.command("list")
def list_models(
    name: Annotated[
        str | None, typer.Argument(help="model name (default: the store's current model)")
    ] = None,
    store: Annotated[Path, typer.Option("--store", help="model store root")] = DEFAULT_STORE,
    tracking_uri: Annotated[str | None, TRACKING_URI] = None,
) -> None:
    """Versions in the store and the registry: aliases, test accuracy, gate, when published."""
    from rich.console import Console
    from rich.table import Table

    from atelier.training.registry import list_versions

    rows = list_versions(store, name, tracking_uri, say=lambda line: typer.echo(line, err=True))
    table = Table(title=f"models in {store}")
    for col in ("store", "registry", "aliases", "current", "test acc", "gate", "published", "run"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.store_version or "-",
            r.registry_version or "-",
            ", ".join(f"@{a}" for a in r.aliases) or "-",
            "*" if r.current else "",
            "-" if r.test_accuracy is None else f"{r.test_accuracy:.4f}",
            r.gate,
            r.published,
            (r.run_id or "-")[:12],
        )
    Console(width=140).print(table)
    if not rows:
        typer.echo(f"no versions in {store}", err=True)
