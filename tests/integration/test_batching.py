"""Batches in the real TorchServe: one bad request in a batch gets its own 4xx, the rest
of the batch (of mixed protocols) is answered correctly; the spool records every image."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.runtime.records import SCHEMA
from atelier.tools.torchserve import TorchServe, TorchServeSettings
from atelier.training.archive import archive_run
from atelier.training.config import ArchiveDefaults
from atelier.training.data.idx import load_fashion_mnist
from atelier.training.loop import RunResult
from support.answers import error_kind

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"


@pytest.fixture(scope="module")
def batching_server(
    smoke_run: RunResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchServe]:
    """One worker, batchSize 8, a 5 s batch delay: eight concurrent requests form one batch."""
    store = tmp_path_factory.mktemp("batch-store")
    serving = ArchiveDefaults(batch_size=8, max_batch_delay_ms=5000, min_workers=1, max_workers=1)
    archive_run(smoke_run.run_dir, store, serving=serving)
    run = tmp_path_factory.mktemp("batch-ts")
    env = {"ATELIER_SPOOL_DIR": str(run / "spool")}
    ts = TorchServe(TorchServeSettings(store=store, run_dir=run, model_name=MODEL, extra_env=env))
    with ts:
        yield ts


def v2_body(shape: list[int], datatype: str, data: list) -> bytes:
    tensor = {"name": "x", "shape": shape, "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_one_bad_request_in_a_mixed_batch(
    batching_server: TorchServe, smoke_run: RunResult, fashion_mnist_dir: Path
) -> None:
    x = load_fashion_mnist(fashion_mnist_dir)["test_x"][:7]
    clf = Classifier.from_dir(smoke_run.run_dir)
    expected = clf.predict_proba(x).argmax(axis=1)
    base = batching_server.inference_url
    png = [encode_png(img) for img in x]
    b64 = [base64.b64encode(p).decode() for p in png]
    raw_url = f"{base}/predictions/{MODEL}"
    v1_url = f"{base}/v1/models/{MODEL}:predict"
    v2_url = f"{base}/v2/models/{MODEL}/infer"
    calls = [
        ("raw", raw_url, png[0], "image/png"),
        ("raw", raw_url, png[1], "image/png"),
        ("raw", raw_url, png[2], "image/png"),
        ("v1", v1_url, json.dumps({"instances": [{"b64": b64[3]}]}).encode(), "application/json"),
        ("v1", v1_url, json.dumps({"instances": [x[4][0].tolist()]}).encode(), "application/json"),
        ("v2", v2_url, v2_body([1, 28, 28], "UINT8", x[5].ravel().tolist()), "application/json"),
        ("v2", v2_url, v2_body([1], "BYTES", [b64[6]]), "application/json"),
        ("bad", raw_url, b"this is not an image", "image/png"),
    ]  # fmt: skip
    before = requests.get(f"{batching_server.metrics_url}/metrics", timeout=10).text
    results: list[requests.Response | None] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def send(i: int) -> None:
        _, url, body, ctype = calls[i]
        barrier.wait()
        headers = {"Content-Type": ctype, "X-Request-Id": f"batch-{i}"}
        results[i] = requests.post(url, data=body, headers=headers, timeout=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    got = []
    for i, ((kind, *_), r) in enumerate(zip(calls, results, strict=True)):
        assert r is not None
        if kind == "bad":
            assert r.status_code == 400, r.text
            assert error_kind(r) == "invalid_image"
            continue
        assert r.status_code == 200, r.text
        body = r.json()
        if kind == "raw":
            got.append(body["class_id"])
            assert body["request_id"] == f"batch-{i}"
        elif kind == "v1":
            got.append(body["predictions"][0]["class_id"])
        else:
            label = {o["name"]: o for o in body["outputs"]}["label"]["data"][0]
            got.append(clf.spec.class_names.index(label))
    assert got == list(expected)

    # All eight arrived in one TorchServe batch: one batch of 8 requests, 7 images forwarded.
    after = requests.get(f"{batching_server.metrics_url}/metrics", timeout=10).text
    batches = _metric(after, "atelier_batch_requests_count") - _metric(
        before, "atelier_batch_requests_count"
    )
    requests_in = _metric(after, "atelier_batch_requests_sum") - _metric(
        before, "atelier_batch_requests_sum"
    )
    images = _metric(after, "atelier_batch_size_sum") - _metric(before, "atelier_batch_size_sum")
    assert (batches, requests_in, images) == (1, 8, 7)
    assert _metric(after, "atelier_errors_total") - _metric(before, "atelier_errors_total") == 1

    # The spool holds one record per classified image, with the request ids.
    spool = batching_server.s.run_dir / "spool"
    records = []
    deadline = 50
    while deadline and len(records) < 7:
        records = [
            json.loads(line)
            for f in spool.glob("features-*.jsonl")
            for line in f.read_text().splitlines()
        ]
        deadline -= 1
        threading.Event().wait(0.1)
    assert sorted(r["request_id"] for r in records) == [f"batch-{i}" for i in range(7)]
    assert all(r["schema"] == SCHEMA and r["model_version"] == "1" for r in records)
    assert {r["protocol"] for r in records} == {"raw", "v1", "v2"}
    by_id = {r["request_id"]: r for r in records}
    assert by_id["batch-0"]["predicted_class"] == expected[0]
    assert 0 <= by_id["batch-0"]["brightness"] <= 1
