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


@dataclass
class KServeSettings(ProcessSettings):
    http_port: int = field(default_factory=free_port)


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
        ]

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
        try:
            r = requests.get(f"{self.inference_url}/v2/models/{self.s.model_name}/ready", timeout=2)
        except requests.RequestException:
            return False
        return r.status_code == 200

    def describe(self) -> str:
        return json.dumps({"inference": self.inference_url, "metrics": self.metrics_url})
