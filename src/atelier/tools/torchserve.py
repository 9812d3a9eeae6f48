"""Start, watch and stop a real TorchServe on a model store.

TorchServe's temp files, logs and metrics files go into a run folder (not /tmp or ./logs),
and readiness is the model's worker state from the management API, because /ping says
Healthy before the model is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from atelier.runtime.errors import MODEL_LOAD_FAILED, ServerError
from atelier.tools.process import ProcessSettings, ServerProcess, free_port


@dataclass
class TorchServeSettings(ProcessSettings):
    inference_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    # TorchServe always starts its gRPC servers; free ports keep two servers apart.
    grpc_inference_port: int = field(default_factory=free_port)
    grpc_management_port: int = field(default_factory=free_port)


class TorchServe(ServerProcess):
    """A TorchServe process in its own process group; use as a context manager."""

    label = "TorchServe"
    log_file = "torchserve.out"
    poll_interval_s = 0.5

    def __init__(self, settings: TorchServeSettings) -> None:
        super().__init__(settings.run_dir, settings.model_name, settings.ready_timeout_s)
        self.s = settings
        self._log_offset = 0

    @property
    def inference_url(self) -> str:
        return f"http://{self.s.host}:{self.s.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.s.host}:{self.s.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.s.host}:{self.s.metrics_port}"

    def environment(self) -> dict[str, str]:
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

    def check_can_start(self) -> None:
        if shutil.which("java") is None:
            raise ServerError(
                "java is not on PATH; TorchServe needs Java 17", hint="run make setup"
            )
        config = self.s.store / "config" / "config.properties"
        if not config.is_file():
            raise ServerError(f"{config} does not exist", hint="run atelier archive first")

    def model_status(self) -> list[dict[str, Any]] | None:
        try:
            r = requests.get(f"{self.management_url}/models/{self.s.model_name}", timeout=2)
        except requests.RequestException:
            return None
        if r.status_code != 200:
            return None
        data: list[dict[str, Any]] = r.json()
        return data

    def load_failure(self) -> str | None:
        """The worker's one-line reason, once the log has one (a bad ATELIER_* setting...).

        TorchServe retries a worker whose model fails to load, for ever; without this the
        launcher would wait for its whole ready timeout."""
        path = self.log_path
        if not path.exists():
            return None
        with path.open("rb") as fh:
            fh.seek(self._log_offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        self._log_offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            at = line.find(MODEL_LOAD_FAILED)
            if at >= 0:
                return line[at + len(MODEL_LOAD_FAILED) :].strip()
        return None

    def is_ready(self) -> bool:
        failure = self.load_failure()
        if failure:
            raise ServerError(f"{self.subject} failed to load on TorchServe: {failure}")
        status = self.model_status()
        if not status:
            return False
        workers = status[0].get("workers", [])
        return any(w.get("status") == "READY" for w in workers)

    def describe(self) -> str:
        return json.dumps(
            {
                "inference": self.inference_url,
                "management": self.management_url,
                "metrics": self.metrics_url,
            }
        )
