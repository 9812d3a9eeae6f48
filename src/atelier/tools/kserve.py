"""Start the KServe runtime (atelier.serving.kserve_runtime) as a child process, the way
TorchServe is started (atelier.tools.torchserve)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import requests

from atelier.runtime.errors import ServerError
from atelier.tools.process import ProcessSettings, ServerProcess, free_port

LOG_FILE = "kserve.out"


# uvicorn logs this once per worker, when the worker serves (its model is loaded).
WORKER_STARTED = "Application startup complete."


@dataclass
class KServeSettings(ProcessSettings):
    http_port: int = field(default_factory=free_port)
    # None: the runtime's own defaults ($ATELIER_KSERVE_WORKERS or 1 worker; the batch size
    # and delay of the store's config.properties; torch threads = cores / workers).
    workers: int | None = None
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    torch_threads: int | None = None


class KServeRuntime(ServerProcess):
    """The KServe runtime in its own process group; use as a context manager."""

    label = "the KServe runtime"
    log_file = LOG_FILE

    def __init__(self, settings: KServeSettings) -> None:
        super().__init__(settings.run_dir, settings.model_name, settings.ready_timeout_s)
        self.s = settings

    @property
    def inference_url(self) -> str:
        return f"http://{self.s.host}:{self.s.http_port}"

    @property
    def metrics_url(self) -> str:
        """KServe serves /metrics on its HTTP port."""
        return self.inference_url

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "atelier.serving.kserve_runtime",
            "--store",
            str(self.s.store),
            "--model-name",
            self.s.model_name,
            "--host",
            self.s.host,
            "--port",
            str(self.s.http_port),
            "--work-dir",
            str(self.s.run_dir / "tmp"),
            *self.tuning_flags(),
        ]

    def tuning_flags(self) -> list[str]:
        flags = {
            "--workers": self.s.workers,
            "--batch-size": self.s.batch_size,
            "--max-batch-delay-ms": self.s.max_batch_delay_ms,
            "--torch-threads": self.s.torch_threads,
        }
        return [part for flag, v in flags.items() if v is not None for part in (flag, str(v))]

    def environment(self) -> dict[str, str]:
        tmp = self.s.run_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            TMPDIR=str(tmp),
            OMP_NUM_THREADS=str(self.s.omp_threads),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.s.extra_env)
        return env

    def check_can_start(self) -> None:
        mar = self.s.store / "model-store" / f"{self.s.model_name}.mar"
        if not mar.is_file():
            raise ServerError(f"{mar} does not exist", hint="run atelier archive first")

    def is_ready(self) -> bool:
        """The model answers ready, and with several workers every one of them serves."""
        try:
            r = requests.get(f"{self.inference_url}/v2/models/{self.s.model_name}/ready", timeout=2)
        except requests.RequestException:
            return False
        if r.status_code != 200:
            return False
        workers = self.s.workers or 1
        return workers == 1 or self.workers_started() >= workers

    def workers_started(self) -> int:
        if not self.log_path.is_file():
            return 0
        return self.log_path.read_text(errors="replace").count(WORKER_STARTED)

    def describe(self) -> str:
        return json.dumps({"inference": self.inference_url, "metrics": self.metrics_url})
