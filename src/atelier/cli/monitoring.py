"""`atelier monitoring up | alerts`: run the local Prometheus + Alertmanager, read its alerts."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from atelier.runtime.errors import MonitoringError

monitoring_app = typer.Typer(
    no_args_is_help=True, help="The local Prometheus and Alertmanager, loading monitoring/."
)


@monitoring_app.command("up")
def up(
    torchserve: Annotated[
        list[str] | None, typer.Option("--torchserve", help="TorchServe metrics host:port")
    ] = None,
    kserve: Annotated[
        list[str] | None, typer.Option("--kserve", help="KServe runtime host:port")
    ] = None,
    drift: Annotated[
        list[str] | None, typer.Option("--drift", help="drift sidecar host:port")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="the `model` label of the targets")] = (
        "fashion-mnist"
    ),
    prometheus_port: Annotated[int, typer.Option("--prometheus-port")] = 9090,
    alertmanager_port: Annotated[int, typer.Option("--alertmanager-port")] = 9093,
    webhook_port: Annotated[int, typer.Option("--webhook-port")] = 9099,
    scrape_interval: Annotated[str, typer.Option("--scrape-interval")] = "15s",
    evaluation_interval: Annotated[str, typer.Option("--evaluation-interval")] = "15s",
    group_wait: Annotated[
        str | None, typer.Option("--group-wait", help="override Alertmanager's group_wait")
    ] = None,
    group_interval: Annotated[
        str | None, typer.Option("--group-interval", help="override group_interval")
    ] = None,
    run_dir: Annotated[Path, typer.Option("--run-dir")] = Path("runs/monitoring"),
) -> None:
    """Start Prometheus and Alertmanager with monitoring/ and a webhook receiver; Ctrl-C stops."""
    from atelier.tools.stack import MonitoringStack, StackSettings

    settings = StackSettings(
        run_dir=run_dir,
        model=model,
        torchserve=torchserve or [],
        kserve=kserve or [],
        drift=drift or [],
        prometheus_port=prometheus_port,
        alertmanager_port=alertmanager_port,
        webhook_port=webhook_port,
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
        group_wait=group_wait,
        group_interval=group_interval,
    )

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    stack = MonitoringStack(settings)
    try:
        with stack:
            typer.echo("ready: Prometheus and Alertmanager with monitoring/")
            for what, url in stack.describe().items():
                typer.echo(f"  {what:<13} {url}")
            while True:
                for proc in (stack.prometheus, stack.alertmanager):
                    if proc.proc is not None and proc.proc.poll() is not None:
                        code = proc.proc.returncode
                        raise MonitoringError(f"{proc.label} exited with {code}: {proc.log_tail()}")
                time.sleep(1)
    except KeyboardInterrupt:
        typer.echo("stopped")


def _alert_rows(
    prom_alerts: list[dict[str, Any]], am_alerts: list[dict[str, Any]]
) -> list[list[str]]:
    # Alertmanager's state per alert (active, suppressed) by its labels.
    am_state = {tuple(sorted(a["labels"].items())): a["status"]["state"] for a in am_alerts}
    rows = []
    for a in sorted(prom_alerts, key=lambda a: (a["state"], a["labels"]["alertname"])):
        labels = a["labels"]
        key = tuple(sorted(labels.items()))
        extra = {
            k: v for k, v in labels.items() if k not in {"alertname", "severity", "model", "job"}
        }
        rows.append([
            labels["alertname"], labels.get("severity", ""), labels.get("model", ""),
            a["state"], am_state.get(key, "-"),
            " ".join(f"{k}={v}" for k, v in sorted(extra.items())),
        ])  # fmt: skip
    return rows


@monitoring_app.command("alerts")
def alerts(
    prometheus: Annotated[str, typer.Option("--prometheus")] = "http://127.0.0.1:9090",
    alertmanager: Annotated[str, typer.Option("--alertmanager")] = "http://127.0.0.1:9093",
) -> None:
    """Print the pending and firing alerts, with Alertmanager's view (active or suppressed)."""
    from atelier.tools.stack import AlertmanagerAPI, PrometheusAPI

    prom_alerts = PrometheusAPI(prometheus).alerts()
    am_alerts = AlertmanagerAPI(alertmanager).alerts()
    table = Table(title=f"alerts on {prometheus}")
    for column in ("alert", "severity", "model", "prometheus", "alertmanager", "labels"):
        table.add_column(column)
    for row in _alert_rows(prom_alerts, am_alerts):
        table.add_row(*row)
    Console(width=140).print(table)
    if not prom_alerts:
        typer.echo("no alerts pending or firing")
