"""The `atelier` command line, assembled here from one module per command group.

Errors become one line on stderr and a non-zero exit here (``main``).
"""

from __future__ import annotations

import logging

import typer

from atelier.cli import drift, loadtest, models, serving, training, tuning
from atelier.cli.bench import bench_app
from atelier.cli.chart import chart_app
from atelier.cli.dashboards import dashboards_app
from atelier.cli.models import models_app
from atelier.cli.monitoring import monitoring_app
from atelier.runtime.errors import exit_on_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, archive, serve and watch an image classifier.",
)
app.add_typer(bench_app, name="bench")
app.add_typer(monitoring_app, name="monitoring")
app.add_typer(dashboards_app, name="dashboards")
app.add_typer(chart_app, name="chart")
app.add_typer(models_app, name="models")

app.command()(training.train)
app.command()(training.archive)
app.command()(tuning.tune)
app.command("tune-worker", hidden=True)(tuning.tune_worker)
app.command("tune-report", hidden=True)(tuning.tune_report)
app.command()(models.promote)
app.command()(serving.serve)
app.command(context_settings=drift.CONTEXT, add_help_option=False)(drift.drift)
app.command()(training.samples)
app.command()(serving.send)
app.command()(loadtest.loadtest)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Standalone mode: click answers usage errors itself (exit 2); our errors pass through.
    with exit_on_error(lambda line: typer.echo(line, err=True)):
        app()
