"""`atelier loadtest`: locust headless against a model server, judged against the SLO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def loadtest(
    url: Annotated[
        str | None,
        typer.Argument(
            help="model server base URL: an ingress, a port-forward, or the local stack "
            "(default http://127.0.0.1:8085)",
            show_default=False,
        ),
    ] = None,
    host_header: Annotated[
        str | None,
        typer.Option("--host-header", help="Host header for an ingress that routes by name"),
    ] = None,
    shape: Annotated[str | None, typer.Option("--shape", help="steady, ramp or spike")] = None,
    users: Annotated[
        int | None, typer.Option("--users", "-u", help="users (the peak for ramp and spike)")
    ] = None,
    spawn_rate: Annotated[
        float | None, typer.Option("--spawn-rate", help="users started per second")
    ] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="seconds")] = None,
    drift: Annotated[
        bool | None,
        typer.Option("--drift/--no-drift", help="send shifted images from midway on"),
    ] = None,
    shift: Annotated[
        str | None, typer.Option("--shift", help="drift mode's shift: invert, brighten, rotate")
    ] = None,
    drift_url: Annotated[
        str | None,
        typer.Option(
            "--drift-url",
            help="drift sidecar that gets true labels on /feedback (default: "
            "http://127.0.0.1:8095 if it answers and the URL is local)",
        ),
    ] = None,
    feedback_share: Annotated[
        float | None, typer.Option("--feedback-share", help="share of requests labelled")
    ] = None,
    model: Annotated[str | None, typer.Option("--model")] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option("--report-dir", help="HTML, CSV and summary (default runs/loadtest/latest)"),
    ] = None,
    slo_p99_ms: Annotated[
        float | None, typer.Option("--slo-p99-ms", help="p99 of all inference requests")
    ] = None,
    slo_error_ratio: Annotated[
        float | None, typer.Option("--slo-error-ratio", help="failed / all inference requests")
    ] = None,
) -> None:
    """Run locust headless against a model server; exit non-zero when the SLO is broken."""
    from atelier.tools import loadtest as lt

    settings = lt.load_settings(
        host=url, host_header=host_header, shape=shape, users=users, spawn_rate=spawn_rate,
        duration_s=duration, drift=drift, drift_shift=shift, drift_url=drift_url,
        feedback_share=feedback_share, model=model, report_dir=report_dir,
        slo_p99_ms=slo_p99_ms, slo_error_ratio=slo_error_ratio,
    )  # fmt: skip
    lt.run(settings, echo=typer.echo, find_drift_url=True)
