"""Start, watch and stop a real MLflow tracking server (REST API, UI, Model Registry).

``mlflow server`` on 127.0.0.1 with a SQLite backend store and a local artifact folder
served through the server (``mlflow-artifacts:/``), one uvicorn worker, and MLflow's GenAI
job runner off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: it starts seven huey consumer
processes the tracking server does not need). The server and its children run in their
own process group, stopped by the group id (the child's pid). Ready means ``/health``
answers ``OK``.

Also runnable: ``python -m atelier.tools.mlflow_server --root runs/mlflow-server --port 5000``
(or ``--backend-store-uri sqlite:///runs/mlflow.db`` to browse the local store of
`atelier train`); it serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from atelier.runtime.errors import ServerError, exit_on_error
from atelier.tools.process import ServerProcess, free_port


@dataclass
class MlflowServerSettings:
    root: Path  # the server's folder: its log, and by default its database and artifacts
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    backend_store_uri: str | None = None  # default sqlite:///<root>/mlflow.db
    artifacts_destination: Path | None = None  # default <root>/mlartifacts
    ready_timeout_s: float = 240.0

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.backend_store_uri = self.backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.artifacts_destination = (
            self.artifacts_destination or self.root / "mlartifacts"
        ).resolve()


class MlflowServer(ServerProcess):
    """An ``mlflow server`` process in its own process group; use as a context manager."""

    label = "mlflow server"
    log_file = "mlflow-server.log"
    poll_interval_s = 0.5

    def __init__(self, settings: MlflowServerSettings) -> None:
        super().__init__(settings.root, "mlflow", settings.ready_timeout_s)
        self.s = settings
        self.subject = f"MLflow tracking server on {settings.host}:{settings.port}"

    @property
    def url(self) -> str:
        return f"http://{self.s.host}:{self.s.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", str(self.s.backend_store_uri),
            "--artifacts-destination", str(self.s.artifacts_destination),
            "--host", self.s.host,
            "--port", str(self.s.port),
            "--workers", "1",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        return env

    def check_can_start(self) -> None:
        try:
            import mlflow.server  # noqa: F401  (the full `mlflow`, not mlflow-skinny)
        except ImportError as exc:
            raise ServerError(
                f"no MLflow server here ({exc}): it is in atelier's `tools` extra (mlflow)"
            ) from exc

    def is_ready(self) -> bool:
        try:
            r = requests.get(f"{self.url}/health", timeout=2)
        except requests.RequestException:
            return False
        return r.status_code == 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atelier.tools.mlflow_server")
    parser.add_argument("--root", type=Path, default=Path("runs/mlflow-server"))
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend-store-uri", default=None)
    parser.add_argument("--artifacts-destination", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = MlflowServerSettings(
        args.root,
        port=args.port,
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
    )

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    with exit_on_error():
        try:
            with MlflowServer(settings) as server:
                print(f"ready: MLflow tracking server and UI on {server.url}", flush=True)
                print(f"  backend store {settings.backend_store_uri}", flush=True)
                print(f"  log           {server.log_path}", flush=True)
                while server.proc is not None and server.proc.poll() is None:
                    time.sleep(1)
                code = server.proc.returncode if server.proc else "?"
                raise ServerError(f"mlflow server exited with {code}; see {server.log_tail()}")
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
