"""Start, watch and stop a real TorchServe on a model store.

TorchServe's temp files, logs and metrics files go into a run folder (not /tmp or ./logs),
and readiness is the model's worker state from the management API, because /ping says
Healthy before the model is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from atelier.errors import ServerError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class TorchServeSettings:
    store: Path
    run_dir: Path
    model_name: str
    host: str = "127.0.0.1"
    inference_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    # TorchServe always starts its gRPC servers; free ports keep two servers apart.
    grpc_inference_port: int = field(default_factory=free_port)
    grpc_management_port: int = field(default_factory=free_port)
    ready_timeout_s: float = 120.0
    omp_threads: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # TorchServe runs with the run folder as its working directory: paths must be absolute.
        self.store = self.store.resolve()
        self.run_dir = self.run_dir.resolve()


class TorchServe:
    """A TorchServe process in its own process group; use as a context manager."""

    def __init__(self, settings: TorchServeSettings) -> None:
        self.s = settings
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def inference_url(self) -> str:
        return f"http://{self.s.host}:{self.s.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.s.host}:{self.s.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.s.host}:{self.s.metrics_port}"

    def _env(self) -> dict[str, str]:
        run = self.s.run_dir
        env = dict(os.environ)
        for var, sub in (
            ("TEMP", "tmp"),
            ("TMPDIR", "tmp"),
            ("LOG_LOCATION", "logs"),
            ("METRICS_LOCATION", "logs"),
        ):
            (run / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(run / sub)
        env.update(
            TS_INFERENCE_ADDRESS=self.inference_url,
            TS_MANAGEMENT_ADDRESS=self.management_url,
            TS_METRICS_ADDRESS=self.metrics_url,
            TS_GRPC_INFERENCE_ADDRESS=self.s.host,
            TS_GRPC_MANAGEMENT_ADDRESS=self.s.host,
            TS_GRPC_INFERENCE_PORT=str(self.s.grpc_inference_port),
            TS_GRPC_MANAGEMENT_PORT=str(self.s.grpc_management_port),
            TS_MODEL_STORE=str(self.s.store / "model-store"),
            TS_METRICS_CONFIG=str(self.s.store / "config" / "metrics.yaml"),
            OMP_NUM_THREADS=str(self.s.omp_threads),
            # The worker imports the atelier copy shipped in the .mar, not a checkout.
            PYTHONPATH="",
        )
        env.update(self.s.extra_env)
        return env

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "torchserve"
        if not exe.exists():
            found = shutil.which("torchserve")
            if not found:
                raise ServerError("torchserve is not installed", hint="run make setup")
            exe = Path(found)
        return [
            str(exe),
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(self.s.store / "model-store"),
            "--ts-config",
            str(self.s.store / "config" / "config.properties"),
        ]

    def start(self) -> TorchServe:
        if shutil.which("java") is None:
            raise ServerError(
                "java is not on PATH; TorchServe needs Java 17", hint="run make setup"
            )
        config = self.s.store / "config" / "config.properties"
        if not config.is_file():
            raise ServerError(f"{config} does not exist", hint="run atelier archive first")
        self.s.run_dir.mkdir(parents=True, exist_ok=True)
        log = (self.s.run_dir / "torchserve.out").open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.s.run_dir,
        )
        return self

    def model_status(self) -> list[dict[str, Any]] | None:
        try:
            r = requests.get(f"{self.management_url}/models/{self.s.model_name}", timeout=2)
        except requests.RequestException:
            return None
        if r.status_code != 200:
            return None
        data: list[dict[str, Any]] = r.json()
        return data

    def is_ready(self) -> bool:
        status = self.model_status()
        if not status:
            return False
        workers = status[0].get("workers", [])
        return any(w.get("status") == "READY" for w in workers)

    def wait_ready(self) -> TorchServe:
        deadline = time.monotonic() + self.s.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"TorchServe exited with {self.proc.returncode}; see {self.log_tail()}"
                )
            if self.is_ready():
                return self
            time.sleep(0.5)
        raise ServerError(
            f"model {self.s.model_name} not ready after {self.s.ready_timeout_s:.0f}s; "
            f"see {self.log_tail()}"
        )

    def log_tail(self) -> str:
        path = self.s.run_dir / "torchserve.out"
        return (
            f"{path}: " + " | ".join(path.read_text(errors="replace").splitlines()[-5:])
            if path.exists()
            else str(path)
        )

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the launcher's pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        # Java and the Python workers share the group; make sure none outlives the launcher.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def __enter__(self) -> TorchServe:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        return json.dumps(
            {
                "inference": self.inference_url,
                "management": self.management_url,
                "metrics": self.metrics_url,
            }
        )
