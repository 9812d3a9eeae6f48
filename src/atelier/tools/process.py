"""A model server run as a child process in its own session: start, wait ready, stop.

TorchServe and the KServe runtime differ only in their command, environment, pre-start
checks and readiness probe; the process handling lives here once. The whole process group
(TorchServe's Java frontend and its Python workers, say) is stopped by the group id, which
is the child's pid.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import requests

from atelier.runtime.errors import ServerError


def metric_sum(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on a Prometheus text endpoint (``url`` is the base,
    ``/metrics`` is appended) whose labels include ``labels``."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        series, _, rest = head.partition("{")
        if series != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


# Ports handed out by this process: two servers started one after the other never get the same.
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (32768 on Linux by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server about to start. Drawn below the kernel's
    ephemeral range: a port from inside it (what binding port 0 gives) can be taken by any
    outgoing connection between this check and the server's bind, and under load it was
    (TorchServe: "Failed to bind ... Address already in use")."""
    low = _ephemeral_low()
    if low > 2048:
        for _ in range(200):
            port = random.randint(max(1024, low - 12_000), low - 1)
            if port in _HANDED_OUT:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ProcessSettings:
    """What every model server process needs; each runtime adds its ports."""

    store: Path
    run_dir: Path
    model_name: str
    host: str = "127.0.0.1"
    ready_timeout_s: float = 120.0
    omp_threads: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The server runs with the run folder as its working directory: paths must be absolute.
        self.store = self.store.resolve()
        self.run_dir = self.run_dir.resolve()


class ServerProcess:
    label = "server"
    log_file = "server.out"
    poll_interval_s = 0.3

    def __init__(self, run_dir: Path, model_name: str, ready_timeout_s: float) -> None:
        self.run_dir = run_dir
        self.model_name = model_name
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.subject = f"model {model_name}"  # what readiness means, for the timeout message

    # --- what a server supplies
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    def check_can_start(self) -> None:
        """Raise ServerError naming what is missing, before anything is started."""

    def is_ready(self) -> bool:
        raise NotImplementedError

    def terminate(self) -> None:
        """Ask the server to stop: SIGTERM to its whole process group by default."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)  # start_new_session: the group id is its pid

    # --- shared
    @property
    def log_path(self) -> Path:
        return self.run_dir / self.log_file

    def start(self) -> Self:
        self.check_can_start()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.run_dir,
            )
        return self

    def wait_ready(self) -> Self:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"{self.label} exited with {self.proc.returncode}; see {self.log_tail()}"
                )
            if self.is_ready():
                return self
            time.sleep(self.poll_interval_s)
        raise ServerError(
            f"{self.subject} not ready on {self.label} after "
            f"{self.ready_timeout_s:.0f}s; see {self.log_tail()}"
        )

    def log_tail(self, lines: int = 5) -> str:
        path = self.log_path
        if not path.exists():
            return str(path)
        return f"{path}: " + " | ".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the child's pid
        try:
            self.terminate()
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        # Grandchildren (workers) share the group: none may outlive the server.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def __enter__(self) -> Self:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
