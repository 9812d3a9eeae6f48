"""Locust users and load shape for atelier: raw PNG, KServe v1 and v2 (single images and
batches) with real Fashion-MNIST test images, true labels sent to the drift sidecar.

Settings come from ATELIER_LOADTEST_* env vars (`atelier.tools.loadtest.LoadTestSettings`); the
request bodies, response checks, shapes and feedback queue live in `atelier.tools.loadtest`.

    atelier loadtest http://127.0.0.1:8085 --shape ramp --users 8 --duration 60
    ATELIER_LOADTEST_SHAPE=spike locust -f loadtest/locustfile.py --headless \
        --host http://INGRESS_HOST
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from locust import FastHttpUser, LoadTestShape, between, events
from locust.runners import WorkerRunner

from atelier.tools.loadtest import (
    FeedbackQueue,
    Workload,
    load_settings,
    make_shape,
    write_run_stats,
)

SETTINGS = load_settings()
WORKLOAD = Workload(SETTINGS)


@events.test_start.add_listener
def _start(environment: Any, **_: Any) -> None:
    WORKLOAD.start()


@events.quitting.add_listener
def _quit(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        write_run_stats(SETTINGS, WORKLOAD)


def _request_task(kind: str) -> Callable[[InferenceUser], None]:
    def send(user: InferenceUser) -> None:
        user.send(kind)

    send.__name__ = kind
    return send


class InferenceUser(FastHttpUser):
    """Sends the request mix; feedback goes outside locust's statistics (atelier.tools.loadtest)."""

    wait_time = between(SETTINGS.wait_s * 0.5, SETTINGS.wait_s * 1.5)
    network_timeout = SETTINGS.request_timeout_s
    connection_timeout = SETTINGS.request_timeout_s
    tasks = {_request_task(k): w for k, w in SETTINGS.mix.weights().items()}  # type: ignore[assignment]  # noqa: RUF012

    def on_start(self) -> None:
        self.feedback = FeedbackQueue(SETTINGS, WORKLOAD.counts, time.monotonic)
        self.session = requests.Session()

    def on_stop(self) -> None:
        self.session.close()

    def _post_feedback(self, url: str, body: dict[str, Any]) -> int:
        try:
            return self.session.post(url, json=body, timeout=SETTINGS.request_timeout_s).status_code
        except requests.RequestException:
            return 0

    def send(self, kind: str) -> None:
        self.feedback.flush(self._post_feedback)
        req = WORKLOAD.request(kind)
        body: Any = req.body  # bytes: sent as is
        with self.client.post(
            req.path, data=body, headers=req.headers, name=kind, catch_response=True
        ) as resp:
            problem = WORKLOAD.check(req, resp.status_code, resp.content)
            if problem:
                resp.failure(problem)
                return
            resp.success()
        if WORKLOAD.wants_feedback():
            self.feedback.add(req)


class SettingsShape(LoadTestShape):
    """steady, ramp or spike: ATELIER_LOADTEST_SHAPE, USERS, DURATION_S, ..."""

    plan = make_shape(SETTINGS)

    def tick(self) -> tuple[int, float] | None:
        return self.plan.tick(self.get_run_time())
