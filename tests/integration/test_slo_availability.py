"""The availability SLI on a real TorchServe scraped by a real Prometheus with the rules.

TorchServe's frontend answers its own 500 for about half of real PNGs posted as
application/x-www-form-urlencoded (curl's --data-binary without a Content-Type): it fails to
decode them as a form before any handler runs. That is visible in its Requests5XX and must not
burn the error budget; a request queued for a worker that the handler never answers (here the
worker is killed while it holds the request) must. One TorchServe with one worker, Prometheus
and Alertmanager from monitoring/ with 1s scrape and evaluation intervals, as one story.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from atelier.runtime.preprocess import encode_png
from atelier.tools.stack import MonitoringStack, StackSettings, wait_until
from atelier.tools.torchserve import TorchServe, TorchServeSettings
from atelier.training.archive import ArchiveResult

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
SEL = f'{{job="atelier-torchserve", model="{MODEL}"}}'
GOOD, FRONTEND_500S = 40, 15
WINDOWS = ("5m", "30m", "1h")


@pytest.fixture(scope="module")
def live(smoke_store: ArchiveResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("slo")
    settings = TorchServeSettings(
        store=smoke_store.version_dir.parent.parent, run_dir=base / "torchserve", model_name=MODEL
    )
    stack = MonitoringStack(
        StackSettings(
            run_dir=base / "stack", model=MODEL, torchserve=[f"127.0.0.1:{settings.metrics_port}"],
            scrape_interval="1s", evaluation_interval="1s",
        )
    )  # fmt: skip
    ts = TorchServe(settings)
    try:
        ts.__enter__()
        # One worker, so the worker killed below is the one holding the request.
        r = requests.put(
            f"{ts.management_url}/models/{MODEL}?min_worker=1&max_worker=1&synchronous=true",
            timeout=120,
        )
        assert r.status_code == 200, r.text
        stack.start()
        yield {"ts": ts, "prom": stack.prom}
    finally:
        stack.stop()
        ts.stop()


def post(ts: TorchServe, body: bytes, content_type: str) -> requests.Response:
    return requests.post(f"{ts.inference_url}/predictions/{MODEL}", data=body,
                         headers={"Content-Type": content_type}, timeout=60)  # fmt: skip


def total(prom: Any, expr: str) -> float:
    return prom.value(f"sum({expr})") or 0.0


def settled(prom: Any, queued: float, answered: float) -> None:
    """Prometheus has scraped the final counts, and the rules have evaluated on them."""
    wait_until(
        lambda: (
            total(prom, f"ts_inference_requests_total{SEL}") == queued
            and total(prom, f"atelier_requests_total{SEL}") == answered
        ),
        60,
        f"{queued:g} queued and {answered:g} answered requests scraped",
    )
    time.sleep(3)  # a few evaluations after that scrape


def error_ratios(prom: Any) -> dict[str, float | None]:
    """The recorded error ratio per window, now."""
    return {w: prom.value(f"atelier:request_errors:ratio_rate{w}{SEL}") for w in WINDOWS}


def test_frontend_500s_for_form_encoded_images_burn_no_budget(live: dict, test_images) -> None:
    ts: TorchServe = live["ts"]
    prom = live["prom"]
    x, _ = test_images
    wait_until(lambda: any(t["health"] == "up" for t in prom.targets()), 60, "TorchServe scraped")
    # Every series the story touches exists before it starts (a counter appears at its first
    # increment, and rate() counts from a series' first sample).
    assert post(ts, encode_png(x[0]), "image/png").status_code == 200
    assert post(ts, b"not an image", "image/png").status_code == 400
    settled(prom, 2, 2)
    time.sleep(5)

    frontend_500s = handler_400s = 0
    i = 1
    for n in range(GOOD):
        assert post(ts, encode_png(x[n]), "image/png").status_code == 200
        # curl --data-binary @image.png: a form content type, chosen by curl, not the client.
        while frontend_500s < FRONTEND_500S * (n + 1) // GOOD:
            r = post(ts, encode_png(x[i]), "application/x-www-form-urlencoded")
            i += 1
            assert r.status_code in (400, 500), r.text
            if r.status_code == 500:
                frontend_500s += 1
            else:  # decoded as a form: the handler's 400 malformed_request
                handler_400s += 1
        time.sleep(0.05)
    assert frontend_500s == FRONTEND_500S
    queued = 2 + GOOD + handler_400s
    settled(prom, queued, queued)
    # TorchServe counted its 500s: they are in Requests5XX (an SLI on the frontend's classes
    # would be far over budget), and nowhere in the SLI.
    fives = total(prom, f"Requests5XX{SEL}")
    assert fives >= FRONTEND_500S
    assert fives / sum(total(prom, f"Requests{c}XX{SEL}") for c in (2, 4, 5)) > 14.4 * 0.001
    # No error in any window; Prometheus' float arithmetic may leave 1e-16 where 0 is meant.
    assert error_ratios(prom) == dict.fromkeys(WINDOWS, pytest.approx(0.0, abs=1e-12))
    five_xx = prom.value(f'sum(atelier:requests:rate5m{{code="5xx", model="{MODEL}"}})')
    assert five_xx == pytest.approx(0.0, abs=1e-12)
    assert not prom.firing("ErrorBudgetBurn")


def test_a_request_the_handler_never_answers_counts(live: dict, test_images) -> None:
    ts: TorchServe = live["ts"]
    prom = live["prom"]
    x, _ = test_images
    queued = total(prom, f"ts_inference_requests_total{SEL}")
    answered = total(prom, f"atelier_requests_total{SEL}")
    status = ts.model_status()
    assert status
    (worker,) = status[0]["workers"]
    pid = int(worker["pid"])
    # The worker is stopped, takes the request from the frontend's queue and dies with it.
    os.kill(pid, signal.SIGSTOP)
    answer: dict[str, int] = {}
    client = threading.Thread(
        target=lambda: answer.update(code=post(ts, encode_png(x[0]), "image/png").status_code)
    )
    client.start()
    time.sleep(2)
    os.kill(pid, signal.SIGKILL)
    client.join(timeout=60)
    # TorchServe's own answer: a 5xx ("Worker died."), or 413 when it has seen the exit
    # status 137 first (it takes a SIGKILL for the kernel's out-of-memory killer).
    code = answer.get("code", 0)
    assert code == 413 or code >= 500, answer
    settled(prom, queued + 1, answered)
    ratios = error_ratios(prom)
    expected = 1 / (queued + 1)
    for w, ratio in ratios.items():
        assert ratio is not None and ratio == pytest.approx(expected, rel=0.25), (w, ratios)
    # The worker comes back and serves.
    wait_until(ts.is_ready, 120, "the worker restarted")
    assert post(ts, encode_png(x[1]), "image/png").status_code == 200
