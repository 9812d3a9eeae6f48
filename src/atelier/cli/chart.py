"""`atelier chart sync`: the Helm chart's copies of monitoring/."""

from __future__ import annotations

from typing import Annotated

import typer

chart_app = typer.Typer(
    no_args_is_help=True, help="The Helm chart: sync its copies of monitoring/."
)


@chart_app.command("sync")
def chart_sync(
    check: Annotated[
        bool, typer.Option("--check", help="write nothing; fail naming the copies that are stale")
    ] = False,
) -> None:
    """Copy monitoring/ rules, routes and dashboards into charts/atelier/files/."""
    from atelier.tools import chart

    if check:
        chart.check()
        typer.echo("the chart's copies of monitoring/ are up to date")
        return
    written = chart.sync()
    for path in written:
        typer.echo(f"wrote {path}")
    if not written:
        typer.echo("the chart's copies of monitoring/ are up to date")
