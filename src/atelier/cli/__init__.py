"""The `atelier` command line. Errors become one line on stderr and a non-zero exit here."""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from atelier.cli.monitoring import monitoring_app
from atelier.runtime.errors import AtelierError, exit_on_error
from atelier.training.config import DEFAULT_FASHION_MNIST_DIR

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, archive, serve and watch an image classifier.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print a table.")
app.add_typer(bench_app, name="bench")
app.add_typer(monitoring_app, name="monitoring")
dashboards_app = typer.Typer(
    no_args_is_help=True, help="Grafana dashboards as code: build the JSON, snapshot to PNG."
)
app.add_typer(dashboards_app, name="dashboards")
chart_app = typer.Typer(
    no_args_is_help=True, help="The Helm chart: sync its copies of monitoring/."
)
app.add_typer(chart_app, name="chart")

DEFAULT_STORE = Path("model-store")


@app.command()
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


@app.command()
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


class Runtime(StrEnum):
    torchserve = "torchserve"
    kserve = "kserve"


@app.command()
def serve(
    store: Annotated[Path, typer.Option("--store", help="model store root")] = DEFAULT_STORE,
    model: Annotated[
        str | None, typer.Option("--model", help="model name (default: the store's current)")
    ] = None,
    runtime: Annotated[
        Runtime,
        typer.Option(
            "--runtime",
            help="torchserve, or kserve (kserve's ModelServer: v1, v2, raw and /metrics "
            "all on --port)",
        ),
    ] = Runtime.torchserve,
    port: Annotated[int, typer.Option("--port", help="inference port", min=1, max=65535)] = 8085,
    management_port: Annotated[
        int,
        typer.Option(
            "--management-port", min=1, max=65535, help="TorchServe only; kserve: ignored"
        ),
    ] = 8081,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="TorchServe only; kserve serves /metrics on --port and ignores this",
        ),
    ] = 8082,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="logs and temp files (default: runs/<runtime>)"),
    ] = None,
) -> None:
    """Run TorchServe or KServe on the store in the foreground until SIGTERM or Ctrl-C."""
    import signal

    from atelier.runtime.errors import ConfigError
    from atelier.tools.kserve import KServeRuntime, KServeSettings
    from atelier.tools.torchserve import TorchServe, TorchServeSettings
    from atelier.training.archive import current

    cur = current(store)
    if model is None:
        if cur is None:
            raise ConfigError(
                f"{store} has no current model", hint="run atelier archive first, or pass --model"
            )
        model = str(cur["name"])
    run_dir = run_dir or Path("runs") / runtime.value
    server: TorchServe | KServeRuntime
    if runtime is Runtime.kserve:
        server = KServeRuntime(
            KServeSettings(store=store, run_dir=run_dir, model_name=model, http_port=port)
        )
        name = "KServe"
        urls = {
            "predictions": f"{server.inference_url}/predictions/{model}",
            "v1": f"{server.inference_url}/v1/models/{model}:predict",
            "v2": f"{server.inference_url}/v2/models/{model}/infer",
            "metrics": f"{server.metrics_url}/metrics",
        }
    else:
        server = TorchServe(
            TorchServeSettings(
                store=store,
                run_dir=run_dir,
                model_name=model,
                inference_port=port,
                management_port=management_port,
                metrics_port=metrics_port,
            )
        )
        name = "TorchServe"
        urls = {
            "predictions": f"{server.inference_url}/predictions/{model}",
            "management": f"{server.management_url}/models/{model}",
            "metrics": f"{server.metrics_url}/metrics",
        }

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        with server:
            typer.echo(f"ready: {model} version {cur['version'] if cur else '?'} on {name}")
            for what, url in urls.items():
                typer.echo(f"  {what:<11} {url}")
            while server.proc is not None and server.proc.poll() is None:
                server.proc.wait(timeout=None)
            code = server.proc.returncode if server.proc else "?"
            raise AtelierError(f"{name} exited with {code}")
    except KeyboardInterrupt:
        typer.echo("stopped")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def drift(ctx: typer.Context) -> None:
    """Run the drift sidecar (flags: atelier drift --help)."""
    from atelier.drift.server import main as drift_main

    drift_main(list(ctx.args))


@app.command()
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


@app.command()
def send(
    url: Annotated[
        str, typer.Option("--url", help="model server base URL")
    ] = "http://127.0.0.1:8085",
    model: Annotated[str, typer.Option("--model")] = "fashion-mnist",
    n: Annotated[int, typer.Option("--n", min=1, max=10_000, help="test images to send")] = 1024,
    offset: Annotated[int, typer.Option("--offset", min=0, help="first test image")] = 0,
    shift: Annotated[
        str,
        typer.Option("--shift", help="none, invert, brighten or rotate: traffic unlike training"),
    ] = "none",
    data: Annotated[
        Path, typer.Option("--data", help="Fashion-MNIST folder")
    ] = DEFAULT_FASHION_MNIST_DIR,
) -> None:
    """Send Fashion-MNIST test images to a model server as KServe v2 requests of 32."""
    import requests

    from atelier.runtime.errors import ConfigError
    from atelier.tools.shifts import SHIFTS, shift_images
    from atelier.training.data.idx import load_fashion_mnist

    if shift not in SHIFTS:
        raise ConfigError(f"--shift {shift!r}: choose one of {', '.join(SHIFTS)}")
    x = load_fashion_mnist(data)["test_x"][offset : offset + n]
    x = shift_images(x, shift)
    ok = failed = 0
    for start in range(0, len(x), 32):
        chunk = x[start : start + 32]
        tensor = {"name": "images", "shape": list(chunk.shape), "datatype": "UINT8",
                  "data": chunk.ravel().tolist()}  # fmt: skip
        try:
            r = requests.post(
                f"{url}/v2/models/{model}/infer", json={"inputs": [tensor]}, timeout=60
            )
        except requests.RequestException as exc:
            raise ConfigError(f"--url {url}: {exc}") from exc
        if r.status_code == 200:
            ok += len(chunk)
        else:
            failed += len(chunk)
    typer.echo(f"sent {ok} images ({shift}) to {url}; {failed} failed")


@app.command()
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


@bench_app.command("train")
def bench_train(
    configs: Annotated[
        list[Path] | None, typer.Option("--config", help="configs to run (default: all three)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="where the runs go")] = Path("runs/bench"),
) -> None:
    """Train each config, archive it into a scratch store, and print a table against the targets."""
    from atelier.tools.bench.train import bench_train as run

    run(configs, out)


@bench_app.command("serve")
def bench_serve(
    store: Annotated[
        Path, typer.Option("--store", help="store to serve (made from the smoke config if empty)")
    ] = Path("runs/bench-serve/store"),
    out: Annotated[Path, typer.Option("--out", help="where results go")] = Path("runs/bench-serve"),
    seconds: Annotated[float, typer.Option("--seconds", min=1.0, help="each wrk run")] = 5.0,
    concurrency: Annotated[list[int] | None, typer.Option("--concurrency", "-c", min=1)] = None,
    runtime: Annotated[
        list[str] | None, typer.Option("--runtime", help="torchserve and/or kserve")
    ] = None,
) -> None:
    """In-process limit against TorchServe and KServe under wrk; prints a table."""
    from atelier.runtime.errors import ConfigError
    from atelier.tools.bench.serve import bench_serve as run

    runtimes = runtime or ["torchserve", "kserve"]
    unknown = sorted(set(runtimes) - {"torchserve", "kserve"})
    if unknown:
        raise ConfigError(f"--runtime {', '.join(unknown)}: choose torchserve or kserve")
    run(store, out, seconds, concurrency or [1, 8, 32], runtimes)


@bench_app.command("drift")
def bench_drift(
    records: Annotated[
        int, typer.Option("--records", min=1000, help="records to ingest")
    ] = 100_000,
    store: Annotated[
        Path,
        typer.Option("--store", help="model store for the detection rows (smoke model if empty)"),
    ] = Path("runs/bench-serve/store"),
) -> None:
    """Drift sidecar: ingest rate, report time, RSS, false positives and detection."""
    from atelier.tools.bench.drift import bench_drift as run
    from atelier.tools.bench.serve import ensure_store

    ensure_store(store, store.parent)
    run(records, store)


@bench_app.command("capacity")
def bench_capacity(
    store: Annotated[
        Path, typer.Option("--store", help="store to serve (made from the smoke config if empty)")
    ] = Path("runs/bench-serve/store"),
    out: Annotated[Path, typer.Option("--out", help="where results go")] = Path(
        "runs/bench-capacity"
    ),
    step_seconds: Annotated[
        float, typer.Option("--step-seconds", min=1.0, help="each step of the ramp")
    ] = 5.0,
    connections: Annotated[
        list[int] | None,
        typer.Option("--connections", "-c", min=1, help="the ramp (default 1 2 4 ... 256)"),
    ] = None,
    slo_p99_ms: Annotated[float, typer.Option("--slo-p99-ms", min=0.001)] = 100.0,
    utilisation: Annotated[
        float, typer.Option("--utilisation", min=0.05, max=1.0, help="target share of the knee")
    ] = 0.6,
    design_peak_rps: Annotated[
        float, typer.Option("--design-peak-rps", min=1.0, help="rate maxReplicas is sized for")
    ] = 5000.0,
) -> None:
    """Highest req/s one TorchServe replica holds within the p99 SLO (wrk step ramp)."""
    from atelier.tools.bench.capacity import DEFAULT_CONNECTIONS
    from atelier.tools.bench.capacity import bench_capacity as run

    run(store, out, step_seconds, connections or list(DEFAULT_CONNECTIONS), slo_p99_ms,
        utilisation, design_peak_rps)  # fmt: skip


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


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Standalone mode: click answers usage errors itself (exit 2); our errors pass through.
    with exit_on_error(lambda line: typer.echo(line, err=True)):
        app()
