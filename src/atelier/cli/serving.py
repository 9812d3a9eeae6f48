"""`atelier serve | send`: run a model server on the store, send it test images."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from atelier.cli.options import DEFAULT_STORE
from atelier.runtime.errors import AtelierError
from atelier.training.config import DEFAULT_FASHION_MNIST_DIR


class Runtime(StrEnum):
    torchserve = "torchserve"
    kserve = "kserve"


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
    port: Annotated[
        int,
        typer.Option("--port", envvar="ATELIER_PORT", help="inference port", min=1, max=65535),
    ] = 8085,
    management_port: Annotated[
        int,
        typer.Option(
            "--management-port",
            envvar="ATELIER_MANAGEMENT_PORT",
            min=1,
            max=65535,
            help="TorchServe only; kserve: ignored",
        ),
    ] = 8081,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            envvar="ATELIER_METRICS_PORT",
            min=1,
            max=65535,
            help="TorchServe only; kserve serves /metrics on --port and ignores this",
        ),
    ] = 8082,
    grpc_inference_port: Annotated[
        int,
        typer.Option(
            "--grpc-inference-port",
            envvar="ATELIER_GRPC_INFERENCE_PORT",
            min=1,
            max=65535,
            help="TorchServe only: its gRPC inference server (TorchServe 0.12 cannot turn "
            "gRPC off; it binds the same host as the HTTP ports)",
        ),
    ] = 7070,
    grpc_management_port: Annotated[
        int,
        typer.Option(
            "--grpc-management-port",
            envvar="ATELIER_GRPC_MANAGEMENT_PORT",
            min=1,
            max=65535,
            help="TorchServe only: its gRPC management server",
        ),
    ] = 7071,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="logs and temp files (default: runs/<runtime>)"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="kserve only: server processes on --port, each with the model loaded "
            "(default: $ATELIER_KSERVE_WORKERS, else 1); TorchServe's come from the store's "
            "config.properties",
        ),
    ] = None,
) -> None:
    """Run TorchServe or KServe on the store in the foreground until SIGTERM or Ctrl-C."""
    import signal

    from atelier.runtime.errors import ConfigError
    from atelier.tools.kserve import KServeRuntime, KServeSettings
    from atelier.tools.torchserve import TorchServe, TorchServeSettings

    if runtime is Runtime.torchserve:
        ports = {
            "--port": port,
            "--management-port": management_port,
            "--metrics-port": metrics_port,
            "--grpc-inference-port": grpc_inference_port,
            "--grpc-management-port": grpc_management_port,
        }
        taken: dict[int, str] = {}
        for flag, number in ports.items():
            if number in taken:
                raise ConfigError(
                    f"{flag} and {taken[number]} are both {number}: TorchServe opens five "
                    "ports and each needs its own",
                    hint="pass distinct ports (flags or ATELIER_*_PORT env vars)",
                )
            taken[number] = flag
    from atelier.training.archive import current  # imports torch: after the flags are checked

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
            KServeSettings(
                store=store, run_dir=run_dir, model_name=model, http_port=port, workers=workers
            )
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
                grpc_inference_port=grpc_inference_port,
                grpc_management_port=grpc_management_port,
            )
        )
        name = "TorchServe (behind the OIP front)"
        urls = {
            "predictions": f"{server.inference_url}/predictions/{model}",
            "v1": f"{server.inference_url}/v1/models/{model}:predict",
            "v2": f"{server.inference_url}/v2/models/{model}/infer",
            "ready": f"{server.inference_url}/v2/models/{model}/ready",
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
