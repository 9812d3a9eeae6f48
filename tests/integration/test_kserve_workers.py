"""The KServe runtime with two worker processes on one port (one server for the module):
readiness waits for a loaded model, /metrics sums the workers, a killed worker is replaced,
SIGTERM stops everything with status 0 and leaves no files behind."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from atelier.runtime.preprocess import encode_png
from atelier.tools.kserve import WORKER_STARTED, KServeRuntime, KServeSettings
from atelier.training.archive import ArchiveResult

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
WORKERS = 2


def store_root(result: ArchiveResult) -> Path:
    return result.version_dir.parent.parent


def worker_pids(server: KServeRuntime) -> set[int]:
    """The supervisor's spawned workers (not multiprocessing's resource tracker)."""
    assert server.proc is not None
    children = psutil.Process(server.proc.pid).children()
    return {p.pid for p in children if "spawn_main" in " ".join(p.cmdline())}


def metric(server: KServeRuntime, name: str, **labels: str) -> float:
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture(scope="module")
def started_log() -> dict[str, int]:
    """What the fixture saw while the server started."""
    return {}


@pytest.fixture(scope="module")
def workers_server(
    smoke_store: ArchiveResult,
    tmp_path_factory: pytest.TempPathFactory,
    started_log: dict[str, int],
) -> Iterator[KServeRuntime]:
    run_dir = tmp_path_factory.mktemp("kserve-workers")
    server = KServeRuntime(
        KServeSettings(
            store=store_root(smoke_store),
            run_dir=run_dir,
            model_name=MODEL,
            workers=WORKERS,
            extra_env={"ATELIER_SPOOL_DIR": str(run_dir / "spool")},
        )
    )
    server.start()
    try:
        # The first time the model answers ready, a worker has loaded it and logged so.
        ready = f"{server.inference_url}/v2/models/{MODEL}/ready"
        deadline = time.monotonic() + server.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                if requests.get(ready, timeout=2).status_code == 200:
                    started_log["at_first_ready"] = server.workers_started()
                    break
            except requests.RequestException:
                pass
            time.sleep(0.05)
        server.wait_ready()  # every worker serves
        yield server
    finally:
        server.stop()


def send(url: str, bodies: list[bytes]) -> list[int]:
    """Every body on its own connection, at once; the status codes."""
    codes = [0] * len(bodies)

    def post(i: int) -> None:
        r = requests.post(url, data=bodies[i], headers={"Content-Type": "image/png"}, timeout=60)
        codes[i] = r.status_code

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def test_ready_only_once_a_worker_has_loaded_the_model(
    workers_server: KServeRuntime, started_log: dict[str, int]
) -> None:
    assert started_log["at_first_ready"] >= 1
    assert len(worker_pids(workers_server)) == WORKERS


def test_metrics_are_the_sum_over_the_workers(
    workers_server: KServeRuntime, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    pngs = [encode_png(img) for img in test_images[0][:8]]
    url = f"{workers_server.inference_url}/predictions/{MODEL}"
    spool = workers_server.s.run_dir / "spool"
    before = metric(workers_server, "atelier_requests_total", code="200")
    sent = 0
    for _ in range(30):  # until both workers have answered some
        assert send(url, pngs) == [200] * len(pngs)
        sent += len(pngs)
        served_by = {int(f.stem.split("-")[1]) for f in spool.glob("features-*.jsonl")}
        if len(served_by) == WORKERS:
            break
    assert served_by == worker_pids(workers_server), "both workers answered (their spools)"
    # Whichever worker answers /metrics, the count is every worker's.
    for _ in range(4):
        got = metric(workers_server, "atelier_requests_total", code="200") - before
        assert got == sent


def test_process_metrics_cover_every_process(workers_server: KServeRuntime) -> None:
    assert workers_server.proc is not None
    procs = [
        psutil.Process(workers_server.proc.pid),
        *psutil.Process(workers_server.proc.pid).children(),
    ]
    biggest = max(p.memory_info().rss for p in procs)
    cpu = sum(sum(p.cpu_times()[:2]) for p in procs)
    newest = max(p.create_time() for p in procs)
    assert metric(workers_server, "process_resident_memory_bytes") > biggest
    assert metric(workers_server, "process_cpu_seconds_total") >= cpu - 0.05
    assert abs(metric(workers_server, "process_start_time_seconds") - newest) < 1.0


def test_a_killed_worker_is_replaced_and_its_counts_are_kept(
    workers_server: KServeRuntime, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    url = f"{workers_server.inference_url}/predictions/{MODEL}"
    png = encode_png(test_images[0][0])
    counted = metric(workers_server, "atelier_requests_total", code="200")
    started = workers_server.workers_started()
    victim, survivor = sorted(worker_pids(workers_server))
    os.kill(victim, signal.SIGKILL)
    # The other worker keeps answering while the supervisor starts a new one.
    assert send(url, [png]) == [200]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and workers_server.workers_started() <= started:
        time.sleep(0.2)
    pids = worker_pids(workers_server)
    assert survivor in pids and victim not in pids and len(pids) == WORKERS
    assert f"Child process [{victim}] died" in workers_server.log_path.read_text()
    # The dead worker's requests still count: counters never go back.
    assert metric(workers_server, "atelier_requests_total", code="200") >= counted + 1


def test_sigterm_stops_every_worker_with_status_0(workers_server: KServeRuntime) -> None:
    assert workers_server.proc is not None
    pids = worker_pids(workers_server)
    private = list((workers_server.s.run_dir / "tmp").glob(f"{MODEL}-workers-*"))
    assert len(private) == 1 and (private[0] / "metrics").is_dir()
    os.kill(workers_server.proc.pid, signal.SIGTERM)  # the supervisor only
    assert workers_server.proc.wait(timeout=60) == 0, workers_server.log_tail()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    # Each worker's unzipped .mar and the metrics files went with the server.
    assert not private[0].exists()
    log = workers_server.log_path.read_text()
    assert log.count("Finished server process") >= WORKERS
    assert WORKER_STARTED in log
