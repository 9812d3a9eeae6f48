"""Start, watch and stop a real TorchServe on a model store, behind the OIP front.

By default the process started is the OIP front (``python -m atelier.serving.oip_front``,
as in the serving image): it listens on ``inference_port`` (``inference_url``), answers the
Open Inference Protocol's health and metadata routes, forwards everything else to
TorchServe's own inference port (``torchserve_url``), and launches and supervises TorchServe
(``--launch``). ``oip_front=False`` starts TorchServe alone on ``inference_port``.

TorchServe's temp files, logs and metrics files go into a run folder (not /tmp or ./logs),
and readiness is the model's worker state (the front's ``/v2/models/M/ready``, which asks the
management API; without the front, the management API itself), because /ping says Healthy
before the model is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
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
    # The OIP front on inference_port, TorchServe's own inference API on this port behind it;
    # False: TorchServe alone on inference_port (the bench's side-by-side uses both URLs).
    oip_front: bool = True
    torchserve_inference_port: int = field(default_factory=free_port)
    # The front's --grace at stop: seconds for requests in flight, then for TorchServe's Java
    # frontend (its graceful exit takes 4-6 s here), before what is left is killed. The image
    # gives 20 s; a local server (the tests' many) stops in about one.
    front_grace_s: float = 1.0
    # Behind the front, TorchServe runs at this niceness, as in the serving image: the front
    # (a few percent of the CPU) is then not queued behind busy workers, and a request waits
    # in TorchServe's batch queue rather than in the front's.
    torchserve_nice: int = 5


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
        """Where clients send requests: the OIP front, or TorchServe when it runs alone."""
        return f"http://{self.s.host}:{self.s.inference_port}"

    @property
    def torchserve_url(self) -> str:
        """TorchServe's own inference API (behind the front, when there is one)."""
        port = self.s.torchserve_inference_port if self.s.oip_front else self.s.inference_port
        return f"http://{self.s.host}:{port}"

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
            TS_INFERENCE_ADDRESS=self.torchserve_url,
            TS_MANAGEMENT_ADDRESS=self.management_url,
            TS_METRICS_ADDRESS=self.metrics_url,
            TS_GRPC_INFERENCE_ADDRESS=self.s.host,
            TS_GRPC_MANAGEMENT_ADDRESS=self.s.host,
            TS_GRPC_INFERENCE_PORT=str(self.s.grpc_inference_port),
            TS_GRPC_MANAGEMENT_PORT=str(self.s.grpc_management_port),
            TS_MODEL_STORE=str(self.s.store / "model-store"),
            TS_METRICS_CONFIG=str(self.s.store / "config" / "metrics.yaml"),
            OMP_NUM_THREADS=str(self.s.omp_threads),
        )
        if not self.s.oip_front:
            # The worker imports the atelier copy shipped in the .mar, not a checkout.
            env["PYTHONPATH"] = ""
        env.update(self.s.extra_env)
        return env

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "torchserve"
        if not exe.exists():
            found = shutil.which("torchserve")
            if not found:
                raise ServerError("torchserve is not installed", hint="run make setup")
            exe = Path(found)
        torchserve = [
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
        if not self.s.oip_front:
            return torchserve
        # TorchServe's workers import the atelier copy shipped in the .mar, not a checkout:
        # env clears PYTHONPATH for TorchServe only, the front keeps the launcher's. nice: see
        # TorchServeSettings.torchserve_nice.
        return [
            sys.executable,
            "-m",
            "atelier.serving.oip_front",
            "--store",
            str(self.s.store),
            "--model-name",
            self.s.model_name,
            "--host",
            self.s.host,
            "--port",
            str(self.s.inference_port),
            "--upstream",
            self.torchserve_url,
            "--management",
            self.management_url,
            "--grace",
            str(self.s.front_grace_s),
            "--launch",
            "--",
            "env",
            "PYTHONPATH=",
            "nice",
            "-n",
            str(self.s.torchserve_nice),
            *torchserve,
        ]

    def terminate(self) -> None:
        """The OIP front alone gets SIGTERM and stops TorchServe in order (its Java frontend
        stops the workers, as `torchserve --stop` does); TorchServe alone: its whole group."""
        if not self.s.oip_front:
            return super().terminate()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

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
        if self.s.oip_front:
            url = f"{self.inference_url}/v2/models/{self.s.model_name}/ready"
            try:
                return requests.get(url, timeout=2).status_code == 200
            except requests.RequestException:
                return False
        status = self.model_status()
        if not status:
            return False
        workers = status[0].get("workers", [])
        return any(w.get("status") == "READY" for w in workers)

    def describe(self) -> str:
        return json.dumps(
            {
                "inference": self.inference_url,
                "torchserve": self.torchserve_url,
                "management": self.management_url,
                "metrics": self.metrics_url,
            }
        )
