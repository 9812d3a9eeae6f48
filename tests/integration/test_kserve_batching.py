"""Micro-batching in the real KServe runtime (the session's server): concurrent requests share
forward passes, and a bad request in a batch gets its own 400 while the others get theirs.

Which requests share a batch depends on when they arrive, so a round of concurrent
requests is repeated until the metrics show the bad one rode in a batch with good ones;
every round's answers are checked. If the runtime did not batch, no round would ever show it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import requests

from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.tools.kserve import KServeRuntime
from atelier.training.loop import RunResult
from support.answers import error_kind

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
ROUNDS = 20


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def send_together(calls: list[tuple[str, bytes, str]]) -> list[requests.Response]:
    """Every call on its own connection, released at once."""
    results: list[requests.Response | None] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def send(i: int) -> None:
        url, body, ctype = calls[i]
        barrier.wait()
        results[i] = requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def test_concurrent_requests_share_batches_and_a_bad_one_answers_alone(
    kserve_server: KServeRuntime,
    smoke_run: RunResult,
    test_images: tuple[np.ndarray, np.ndarray],
) -> None:
    x = test_images[0][:7]
    expected = Classifier.from_dir(smoke_run.run_dir).predict_proba(x).argmax(axis=1).tolist()
    url = f"{kserve_server.inference_url}/predictions/{MODEL}"
    calls = [(url, encode_png(img), "image/png") for img in x]
    calls.insert(3, (url, b"this is not an image", "image/png"))
    metrics_url = f"{kserve_server.metrics_url}/metrics"
    shared = 0
    for _ in range(ROUNDS):
        before = requests.get(metrics_url, timeout=10).text
        answers = send_together(calls)
        after = requests.get(metrics_url, timeout=10).text

        bad = answers.pop(3)
        assert bad.status_code == 400 and error_kind(bad) == "invalid_image", bad.text
        assert [r.status_code for r in answers] == [200] * 7, [r.text for r in answers]
        assert [r.json()["class_id"] for r in answers] == expected

        def delta(name: str, before: str = before, after: str = after, **labels: str) -> float:
            return metric(after, name, **labels) - metric(before, name, **labels)

        assert delta("atelier_requests_total", code="200") == 7
        assert delta("atelier_requests_total", code="400") == 1
        assert delta("atelier_errors_total", type="invalid_image") == 1
        assert delta("atelier_batch_requests_sum") == 8
        assert delta("atelier_batch_size_sum") == 7  # images forwarded
        batches = delta("atelier_batch_requests_count")
        forwards = delta("atelier_batch_size_count")  # batches with at least one image
        assert 1 <= batches <= 8
        # Fewer batches than requests: some were batched. As many forward passes as batches:
        # no batch held the bad request alone, so it was answered inside a batch of good ones.
        if batches < 8 and forwards == batches:
            shared += 1
            break
    assert shared, f"in {ROUNDS} rounds of 8 concurrent requests, none was batched with the bad one"
