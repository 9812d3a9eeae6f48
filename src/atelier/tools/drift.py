"""Start the drift sidecar as a child process (tests, demo, benchmarks)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from atelier.tools.process import ServerProcess, free_port, metric_sum


@dataclass
class SidecarSettings:
    spool_dir: Path
    store: Path
    run_dir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    report_every_records: int = 1000
    report_every_seconds: float = 60.0
    ready_timeout_s: float = 60.0
    # The inference log; None: a SQLite file in run_dir (one sidecar).
    database_url: str | None = None
    pod_name: str | None = None
    reporter_lease_s: float = 15.0
    extra_env: dict[str, str] = field(default_factory=dict)


class DriftSidecar(ServerProcess):
    label = "the drift sidecar"
    log_file = "drift.out"

    def __init__(self, settings: SidecarSettings) -> None:
        super().__init__(settings.run_dir.resolve(), "drift", settings.ready_timeout_s)
        self.s = settings

    @property
    def url(self) -> str:
        return f"http://{self.s.host}:{self.s.port}"

    def command(self) -> list[str]:
        s = self.s
        return [
            sys.executable, "-m", "atelier.drift",
            "--spool-dir", str(s.spool_dir.resolve()), "--store", str(s.store.resolve()),
            "--state-dir", str(self.run_dir / "state"),
            "--database-url", s.database_url or f"sqlite:///{self.run_dir / 'inference-log.db'}",
            "--pod-name", s.pod_name or f"sidecar-{s.port}",
            "--reporter-lease-s", str(s.reporter_lease_s),
            "--host", s.host, "--port", str(s.port),
            "--report-every-records", str(s.report_every_records),
            "--report-every-seconds", str(s.report_every_seconds),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": "1", **self.s.extra_env}

    def is_ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        return metric_sum(self.url, name, **labels)
