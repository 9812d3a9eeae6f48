"""Several KServe runtime processes on one socket, with one /metrics that sums them.

``--workers N`` (N > 1) runs uvicorn's own multi-process supervisor
(``uvicorn.supervisors.Multiprocess``), the one KServe's ``RESTServerMultiProcess``
mirrors:

- the parent binds the socket on ``--host``/``--port`` and does not listen on it; it
  loads no model and does not import kserve. Each worker is a fresh (spawned) Python process that
  builds the app itself through the factory ``atelier.serving.kserve_runtime:worker_app``:
  it unzips the .mar, loads the model, installs our routes before KServe's, and only then
  starts serving on the inherited socket (the first worker's ``listen`` opens it: until a
  model is loaded a connection is refused, so readiness is never true before the model
  is). KServe's own multi-process server cannot be used: it loads the model in the parent
  and pickles it into its children, whose app is KServe's module-level one without our
  routes.
- the parent pings every worker every 0.5 s; a worker that died or hangs (no answer in
  5 s) is killed and **restarted** (it loads the model again; the others keep serving).
  A worker that fails before it serves (the model does not load) stops the server: the
  parent exits non-zero (ServerError).
- SIGTERM or SIGINT to the parent is passed to every worker; each finishes its requests
  (uvicorn's graceful shutdown, up to the grace period) and exits 0, then the parent
  removes its private folder (the workers' unzipped .mar copies and the metrics files)
  and exits 0.
- the parent's private folder holds ``PROMETHEUS_MULTIPROC_DIR``: every worker's metrics
  live in memory-mapped files there (prometheus_client's multiprocess mode), and
  ``/metrics``, whichever worker answers it, is the sum over all workers, including the
  counts of workers that have died. The ``process_*`` series are summed over the server's
  processes (the parent and its children, read from /proc): CPU seconds and memory add
  up, ``process_start_time_seconds`` is the newest start (so it changes when a worker
  restarts, as the worker-restart rule expects), ``process_max_fds`` is the lowest limit.
  A restarted worker's CPU seconds leave the sum, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from atelier.runtime.errors import ServerError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from starlette.requests import Request
    from starlette.responses import Response

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKERS_ENV = "ATELIER_KSERVE_WORKERS"  # the default of --workers
WORKER_ARGV_ENV = "ATELIER_KSERVE_WORKER_ARGV"  # parent -> workers: their flags, as JSON
MAX_WORKERS = 64
log = logging.getLogger("uvicorn.error")


def available_cores() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def default_torch_threads(workers: int) -> int:
    """Intra-op threads per worker: $OMP_NUM_THREADS when it is set (an operator's choice,
    as TorchServe's advice for small machines), else the cores shared out between the
    workers, at least 1."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, available_cores() // workers)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


_cleanups: list[Callable[[], None]] = []


def on_stop(cleanup: Callable[[], None]) -> None:
    """Run ``cleanup`` when this serving process stops on SIGTERM/SIGINT (see ServerConfig)."""
    _cleanups.append(cleanup)


class ServerConfig(uvicorn.Config):
    """uvicorn's config, plus one step a serving process (the one process, or each worker)
    takes when it is made, before uvicorn takes the signals. After its graceful shutdown
    uvicorn restores the handlers it found and raises the signal again; the handler set here
    then runs the process's cleanups (its .mar copy, its spool), flushes the logs and ends the
    process with status 0 at once: the interpreter's own teardown of torch and kserve takes
    seconds, and the supervisor (or the pod's grace period) waits for it."""

    def configure_logging(self) -> None:
        super().configure_logging()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)


def _stop(signum: int, frame: object) -> None:
    try:
        for cleanup in reversed(_cleanups):
            cleanup()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run_supervisor(config: uvicorn.Config, private_dir: Path) -> None:
    """Serve with ``config.workers`` processes until SIGTERM/SIGINT; ``private_dir`` is the
    parent's own folder (metrics files, the workers' .mar copies), removed at the end."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors.multiprocess import Multiprocess

    metrics_dir = private_dir / "metrics"
    metrics_dir.mkdir()
    os.environ[MULTIPROC_ENV] = str(metrics_dir)  # the workers inherit it
    sock = config.bind_socket()
    try:
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(private_dir, ignore_errors=True)
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise ServerError(
            f"worker {failed[0]} could not start (its error is above); the server stopped"
        )


def private_dir(work_dir: Path | None, model_name: str) -> Path:
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{model_name}-workers-", dir=work_dir))


def configure_parent_logging() -> None:
    """The parent's few lines (workers started, died, stopped) in KServe's log format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d %(process)s %(name)s %(levelname)s %(message)s",
            "%Y-%m-%d %H:%M:%S",
        )
    )
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


# --- /metrics in a worker: every worker's files summed, and the server's processes


def server_pids() -> list[int]:
    """The supervisor (this worker's parent) and its children."""
    parent = os.getppid()
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return [os.getpid()]
    return [parent, *(int(c) for c in children)]


class ServerProcessCollector:
    """prometheus_client's process_* series for the whole server rather than one process."""

    def __init__(self, pids: Callable[[], Iterable[int]] = server_pids) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import ProcessCollector

        merged: dict[str, Metric] = {}
        for pid in self._pids():
            for family in ProcessCollector(pid=partial(int, pid), registry=None).collect():
                value = family.samples[0].value
                seen = merged.get(family.name)
                if seen is None:
                    merged[family.name] = family
                    continue
                old = seen.samples[0]
                if family.name.endswith("start_time_seconds"):
                    new = max(old.value, value)
                elif family.name.endswith("max_fds"):
                    new = min(old.value, value)
                else:
                    new = old.value + value
                seen.samples[0] = old._replace(value=new)
        yield from merged.values()


def install_metrics_route(app: Any) -> None:
    """GET /metrics as the sum over every worker; registered before KServe's own route."""
    from prometheus_client import CollectorRegistry, PlatformCollector, exposition
    from prometheus_client.multiprocess import MultiProcessCollector
    from starlette.responses import Response

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(ServerProcessCollector())
    PlatformCollector(registry=registry)

    async def metrics(request: Request) -> Response:
        # As KServe's own handler: the format the scraper asks for (text or OpenMetrics).
        encoder, content_type = exposition.choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    app.add_route("/metrics", metrics, methods=["GET"])
