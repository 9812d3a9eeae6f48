"""`atelier dashboards build | snapshot`: Grafana dashboards as code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

dashboards_app = typer.Typer(
    no_args_is_help=True, help="Grafana dashboards as code: build the JSON, snapshot to PNG."
)


@dashboards_app.command("build")
def dashboards_build(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for <uid>.json (default monitoring/grafana/dashboards)"),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="write nothing; fail naming the files that are stale")
    ] = False,
) -> None:
    """Generate the Grafana dashboard JSON from src/atelier/monitoring/dashboards.py."""
    from atelier.monitoring import dashboards

    target = out or dashboards.default_out_dir()
    if check:
        dashboards.check(target)
        typer.echo(f"dashboards in {target} are up to date")
        return
    for path in dashboards.write(target):
        typer.echo(f"wrote {path}")


@dashboards_app.command("snapshot")
def dashboards_snapshot(
    prometheus: Annotated[
        str, typer.Option("--prometheus", help="Prometheus base URL")
    ] = "http://127.0.0.1:9090",
    out: Annotated[Path, typer.Option("--out", help="folder for the PNGs and index.md")] = Path(
        "runs/dashboard-snapshots"
    ),
    range_: Annotated[str, typer.Option("--range", help="time range, e.g. 15m, 1h")] = "15m",
    step: Annotated[str, typer.Option("--step", help="query resolution, e.g. 15s")] = "15s",
    model: Annotated[str, typer.Option("--model", help="the $model variable")] = "fashion-mnist",
    window: Annotated[
        str, typer.Option("--window", help="the $window variable (drift dashboard)")
    ] = "last_1000",
) -> None:
    """Query every dashboard panel in a live Prometheus and render one PNG per dashboard."""
    from atelier.tools.snapshot import snapshot

    result = snapshot(prometheus, out, range_=range_, step=step, model=model, window=window)
    for path in [*result.pngs, result.index]:
        typer.echo(str(path))
    c = result.counts()
    typer.echo(f"panels: {c['data']} with data, {c['no data']} no data, {c['error']} query errors")
    result.raise_for_failures()
