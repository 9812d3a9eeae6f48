"""The KServe runtime on 127.0.0.1: our parser behind KServe's routes, its metrics, its socket.

What KServe itself would do differently is what is checked here: bodies KServe's own v1/v2
handlers would parse (NaN, bad JSON, unknown datatypes) reach our parser and get our errors;
a 10 MB body is a JSON 413; ids are generated; the atelier_* series are on KServe's /metrics;
the REST server listens on loopback only and no gRPC port is open; SIGTERM stops it cleanly.
The protocol conformance suite shared with TorchServe is tests/integration/test_protocols.py.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.tools.kserve import KServeRuntime, KServeSettings
from atelier.tools.process import free_port
from atelier.training.archive import ArchiveResult
from atelier.training.data.idx import load_fashion_mnist
from atelier.training.loop import RunResult
from support.answers import error_kind, error_message

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
TEN_MB = 10 * 1024 * 1024


def store_root(result: ArchiveResult) -> Path:
    return result.version_dir.parent.parent


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kserve-spool")


@pytest.fixture(scope="module")
def kserve(
    smoke_store: ArchiveResult, tmp_path_factory: pytest.TempPathFactory, spool_dir: Path
) -> Iterator[KServeRuntime]:
    runtime = KServeRuntime(
        KServeSettings(
            store=store_root(smoke_store),
            run_dir=tmp_path_factory.mktemp("kserve"),
            model_name=MODEL,
            extra_env={"ATELIER_SPOOL_DIR": str(spool_dir)},
        )
    )
    runtime.start()
    try:
        runtime.wait_ready()
        yield runtime
    finally:
        runtime.stop()
    assert runtime.proc is not None and runtime.proc.returncode == 0, runtime.log_tail()


@pytest.fixture(scope="module")
def images(fashion_mnist_dir: Path) -> np.ndarray:
    return load_fashion_mnist(fashion_mnist_dir)["test_x"][:16]


@pytest.fixture(scope="module")
def clf(smoke_run: RunResult) -> Classifier:
    return Classifier.from_dir(smoke_run.run_dir)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(
    base: str, path: str, body: Any, content_type: str | None = None, **headers: str
) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = dict(headers)
    if content_type or not isinstance(body, bytes):
        h["Content-Type"] = content_type or "application/json"
    return requests.post(f"{base}{path}", data=data, headers=h, timeout=60)


def raw(
    kserve: KServeRuntime, body: bytes, content_type: str | None = "image/png", **headers: str
) -> requests.Response:
    return post(kserve.inference_url, f"/predictions/{MODEL}", body, content_type, **headers)


def v1(kserve: KServeRuntime, body: Any, **headers: str) -> requests.Response:
    return post(kserve.inference_url, f"/v1/models/{MODEL}:predict", body, None, **headers)


def v2(kserve: KServeRuntime, body: Any, **headers: str) -> requests.Response:
    return post(kserve.inference_url, f"/v2/models/{MODEL}/infer", body, None, **headers)


def tensor(arr: np.ndarray, datatype: str) -> dict[str, Any]:
    return {
        "name": "input-0",
        "shape": list(arr.shape),
        "datatype": datatype,
        "data": arr.reshape(-1).tolist(),
    }


def assert_error(r: requests.Response, status: int, kind: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert error_kind(r) == kind


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# --- health, metadata, routing -----------------------------------------------------------


def test_kserve_health_ready_and_metadata_routes(kserve: KServeRuntime, clf: Classifier) -> None:
    base = kserve.inference_url
    assert requests.get(f"{base}/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(f"{base}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{base}/v2/models/{MODEL}/ready", timeout=10).json() == {
        "name": MODEL,
        "ready": True,
    }
    assert requests.get(f"{base}/v1/models/{MODEL}", timeout=10).json() == {
        "name": MODEL,
        "ready": True,
    }
    meta = requests.get(f"{base}/v2/models/{MODEL}", timeout=10).json()
    assert meta["name"] == MODEL
    assert meta["inputs"] == [{"name": "input-0", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "probabilities": [-1, clf.spec.num_classes],
        "label": [-1],
    }


def test_unknown_model_or_version_is_a_typed_404(kserve: KServeRuntime) -> None:
    png = encode_png(np.zeros((28, 28), np.uint8))
    base = kserve.inference_url
    paths = [
        "/predictions/nope",
        "/v1/models/nope:predict",
        "/v2/models/nope/infer",
        f"/v2/models/{MODEL}/versions/999/infer",
        f"/predictions/{MODEL}/999",
    ]
    for path in paths:
        r = post(base, path, png, "image/png")
        assert r.status_code == 404, (path, r.text)
        assert error_kind(r) == "model_not_found"
        assert ("'nope' is not served" if "nope" in path else "no version '999'") in (
            error_message(r)
        )


# --- good requests ------------------------------------------------------------------------


def test_raw_png_matches_in_process_predictions(
    kserve: KServeRuntime, images: np.ndarray, clf: Classifier, smoke_store: ArchiveResult
) -> None:
    expected = clf.predict_proba(images)
    n = clf.spec.num_classes
    for i, img in enumerate(images):
        r = raw(kserve, encode_png(img), **{"X-Top-K": str(n), "X-Request-Id": f"req-{i}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["class_id"] == int(expected[i].argmax())
        assert body["model_version"] == smoke_store.version
        assert body["request_id"] == f"req-{i}"
        served = np.zeros(n)
        for entry in body["top_k"]:
            served[entry["class_id"]] = entry["probability"]
        np.testing.assert_allclose(served, expected[i], atol=1e-5)
    versioned = post(
        kserve.inference_url,
        f"/predictions/{MODEL}/{smoke_store.version}",
        encode_png(images[0]),
        "image/png",
    )
    assert versioned.status_code == 200, versioned.text
    # No X-Request-Id: the runtime makes one.
    assert is_uuid(raw(kserve, encode_png(images[0])).json()["request_id"])


@pytest.mark.parametrize("field", ["data", "file", "image"])
def test_multipart_upload(
    kserve: KServeRuntime, images: np.ndarray, clf: Classifier, field: str
) -> None:
    files = {field: ("x.png", encode_png(images[3]), "image/png")}
    r = requests.post(f"{kserve.inference_url}/predictions/{MODEL}", files=files, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["class_id"] == int(clf.predict_proba(images[3:4])[0].argmax())


def test_v1_b64_and_pixel_arrays(
    kserve: KServeRuntime, images: np.ndarray, clf: Classifier
) -> None:
    body = {
        "instances": [
            {"b64": b64(encode_png(images[0]))},
            b64(encode_png(images[1])),
            images[2][0].tolist(),
            images[3].tolist(),
        ]
    }
    r = v1(kserve, body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    expected = clf.predict_proba(images[:4])
    assert [p["class_id"] for p in preds] == list(expected.argmax(axis=1))
    for p, e in zip(preds, expected, strict=True):
        assert p["confidence"] == pytest.approx(float(e.max()), abs=1e-5)


@pytest.mark.parametrize("datatype", ["UINT8", "FP32", "BYTES"])
def test_v2_datatypes(
    kserve: KServeRuntime, images: np.ndarray, clf: Classifier, datatype: str
) -> None:
    batch = images[:4]
    if datatype == "BYTES":
        t = {
            "name": "img",
            "shape": [4],
            "datatype": "BYTES",
            "data": [b64(encode_png(img)) for img in batch],
        }
    elif datatype == "FP32":
        t = tensor(batch[:, 0].astype(np.float32) / 255.0, "FP32")
    else:
        t = tensor(batch, "UINT8")
    r = v2(kserve, {"id": f"id-{datatype}", "inputs": [t]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["id"]) == (MODEL, f"id-{datatype}")
    out = {o["name"]: o for o in body["outputs"]}
    probs = np.array(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
    np.testing.assert_allclose(probs, clf.predict_proba(batch), atol=1e-5)
    assert out["label"]["data"] == [clf.spec.class_names[i] for i in probs.argmax(axis=1)]


def test_v2_requested_outputs_and_ids(kserve: KServeRuntime, images: np.ndarray) -> None:
    t = tensor(images[:2], "UINT8")
    r = v2(kserve, {"inputs": [t], "outputs": [{"name": "label"}]})
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]
    # KServe needs a response id: with none in the body or the headers, one is made up...
    assert is_uuid(r.json()["id"])
    # ...X-Request-Id is used when the body has no id, and the body's id wins over it.
    assert v2(kserve, {"inputs": [t]}, **{"X-Request-Id": "hdr"}).json()["id"] == "hdr"
    assert v2(kserve, {"id": "body", "inputs": [t]}, **{"X-Request-Id": "hdr"}).json()["id"] == (
        "body"
    )
    assert_error(
        v2(kserve, {"inputs": [t], "outputs": [{"name": "logits"}]}), 400, "unknown_output"
    )


# --- bad requests: our errors, not KServe's --------------------------------------------


def nan_fp32() -> bytes:
    data = [0.5] * 784
    data[7] = float("nan")
    body = {"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "FP32", "data": data}]}
    text = json.dumps(body)  # Python writes NaN; orjson (KServe's parser) rejects it
    assert "NaN" in text
    return text.encode()


BAD: list[tuple[str, str, bytes, str | None, int, str]] = [
    ("raw invalid image", "raw", b"\x89PNG not really", "image/png", 400, "invalid_image"),
    ("raw empty", "raw", b"", "image/png", 400, "empty_body"),
    ("raw text", "raw", b"hello", "text/plain", 415, "unsupported_media_type"),
    ("v1 bad json", "v1", b'{"instances": [', "application/json", 400, "malformed_request"),
    ("v2 bad json", "v2", b'{"inputs": [', "application/json", 400, "malformed_request"),
    ("v2 wrong datatype", "v2",
     json.dumps({"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "INT64",
                             "data": [0] * 784}]}).encode(),
     "application/json", 400, "wrong_datatype"),
    ("v2 NaN in FP32", "v2", nan_fp32(), "application/json", 400, "invalid_value"),
    ("v2 wrong shape", "v2",
     json.dumps({"inputs": [{"name": "x", "shape": [1, 27, 28], "datatype": "UINT8",
                             "data": [0] * 756}]}).encode(),
     "application/json", 400, "wrong_shape"),
    ("v2 shape/data mismatch", "v2",
     json.dumps({"inputs": [{"name": "x", "shape": [2, 28, 28], "datatype": "UINT8",
                             "data": [0] * 784}]}).encode(),
     "application/json", 400, "shape_data_mismatch"),
    ("v1 body on the v2 route", "v2", json.dumps({"instances": [[[0] * 28] * 28]}).encode(),
     "application/json", 400, "malformed_request"),
    ("png on the v1 route", "v1", encode_png(np.zeros((28, 28), np.uint8)), "image/png",
     400, "malformed_request"),
    ("broken multipart", "raw", b"--xx\r\nContent-Disposition: form-data\r\n\r\nzz\r\n--xx--\r\n",
     "multipart/form-data; boundary=xx", 400, "malformed_request"),
]  # fmt: skip
PATHS = {
    "raw": f"/predictions/{MODEL}",
    "v1": f"/v1/models/{MODEL}:predict",
    "v2": f"/v2/models/{MODEL}/infer",
}


@pytest.mark.parametrize(
    ("route", "body", "content_type", "status", "kind"),
    [b[1:] for b in BAD],
    ids=[b[0] for b in BAD],
)
def test_bad_request_gets_our_status_and_body(
    kserve: KServeRuntime, route: str, body: bytes, content_type: str | None, status: int, kind: str
) -> None:
    assert_error(post(kserve.inference_url, PATHS[route], body, content_type), status, kind)


@pytest.mark.parametrize("route", ["raw", "v1", "v2"])
def test_10_mb_body_is_our_413(kserve: KServeRuntime, route: str) -> None:
    content_type = "image/png" if route == "raw" else "application/json"
    body = b"\0" * TEN_MB if route == "raw" else b'{"instances": "' + b"A" * TEN_MB + b'"}'
    r = post(kserve.inference_url, PATHS[route], body, content_type)
    assert_error(r, 413, "payload_too_large")
    assert str(len(body)) in error_message(r)


def test_10_mb_chunked_body_is_413(kserve: KServeRuntime) -> None:
    """No Content-Length: the body is counted while it is read, and dropped past the limit."""

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"\0" * (1024 * 1024)

    r = requests.post(
        f"{kserve.inference_url}{PATHS['raw']}",
        data=chunks(),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert_error(r, 413, "payload_too_large")


def test_expect_100_continue_gets_413_before_sending_the_body(kserve: KServeRuntime) -> None:
    conn = http.client.HTTPConnection(kserve.s.host, kserve.s.http_port, timeout=30)
    try:
        conn.putrequest("POST", PATHS["raw"])
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", str(TEN_MB))
        conn.putheader("Expect", "100-continue")
        conn.endheaders()  # the body is never sent
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"]["type"] == "payload_too_large"
        assert resp.getheader("X-Atelier-Error") == "payload_too_large"
    finally:
        conn.close()


def test_still_answers_after_bad_input(
    kserve: KServeRuntime, images: np.ndarray, clf: Classifier
) -> None:
    for _, route, body, content_type, status, _kind in BAD:
        assert post(kserve.inference_url, PATHS[route], body, content_type).status_code == status
    r = raw(kserve, encode_png(images[5]))
    assert r.status_code == 200, r.text
    assert r.json()["class_id"] == int(clf.predict_proba(images[5:6])[0].argmax())
    r = v2(kserve, {"inputs": [tensor(images[:2], "UINT8")]})
    assert r.status_code == 200, r.text


# --- metrics, spool, socket --------------------------------------------------------------


def samples(kserve: KServeRuntime) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(f"{kserve.metrics_url}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls)


def test_metrics_have_the_atelier_series(
    kserve: KServeRuntime, images: np.ndarray, smoke_store: ArchiveResult
) -> None:
    dims = {"model_name": MODEL, "model_version": smoke_store.version}
    before = samples(kserve)
    assert raw(kserve, encode_png(images[0])).status_code == 200
    assert v2(kserve, {"inputs": [tensor(images[:8], "UINT8")]}).status_code == 200
    assert raw(kserve, b"junk", "image/png").status_code == 400
    after = samples(kserve)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **dims, **labels) - value(before, name, **dims, **labels)

    assert delta("atelier_requests_total", protocol="raw", code="200") == 1
    assert delta("atelier_requests_total", protocol="v2", code="200") == 1
    assert delta("atelier_requests_total", protocol="raw", code="400") == 1
    assert delta("atelier_errors_total", type="invalid_image") == 1
    for step in ("preprocess", "inference", "postprocess"):
        assert delta(f"atelier_{step}_seconds_count") == 3
        assert value(after, f"atelier_{step}_seconds_bucket", le="0.0005", **dims) >= 0
    # Images per forward pass: 1 and 8; buckets up to 256.
    assert delta("atelier_batch_size_count") == 2
    assert delta("atelier_batch_size_sum") == 9
    assert value(after, "atelier_batch_size_bucket", le="256.0", **dims) >= 2
    # KServe's own step histograms are there too, and no *_created series.
    kserve_predict = "request_predict_seconds_count"
    assert value(after, kserve_predict, model_name=MODEL) - value(before, kserve_predict) == 3
    assert not [n for n, _ in after if n.endswith("_created")]


def test_feature_records_are_spooled(
    kserve: KServeRuntime, images: np.ndarray, spool_dir: Path
) -> None:
    assert raw(kserve, encode_png(images[7]), **{"X-Request-Id": "spooled-1"}).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = [
            json.loads(line)
            for f in spool_dir.glob("features-*.jsonl")
            for line in f.read_text().splitlines()
        ]
        mine = [r for r in records if r["request_id"] == "spooled-1"]
        if mine:
            assert mine[0]["protocol"] == "raw" and mine[0]["model_name"] == MODEL
            return
        time.sleep(0.2)
    pytest.fail(f"no feature record for spooled-1 in {spool_dir}")


def test_listens_on_loopback_only_and_no_grpc(kserve: KServeRuntime) -> None:
    assert kserve.proc is not None
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(kserve.proc.pid).connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    # One socket: the REST server on 127.0.0.1 (KServe's default is 0.0.0.0, plus gRPC).
    assert listening == {("127.0.0.1", kserve.s.http_port)}
    others = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    for address in others:
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((address, kserve.s.http_port))


# --- the command line -------------------------------------------------------------------


def test_cli_serve_kserve_answers_and_stops_cleanly_on_sigterm(
    smoke_store: ArchiveResult, images: np.ndarray, tmp_path: Path
) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atelier",
            "serve",
            "--runtime",
            "kserve",
            "--store",
            str(store_root(smoke_store)),
            "--port",
            str(port),
            "--run-dir",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        # The command prints "ready: ..." once the server answers (it gives up after 120 s).
        while not (lines and lines[-1].startswith("ready:")):
            line = proc.stdout.readline()
            assert line, f"atelier serve exited before it was ready: {lines}"
            lines.append(line)
        r = post(base, f"/predictions/{MODEL}", encode_png(images[0]), "image/png")
        assert r.status_code == 200, r.text
        # The .mar is unzipped into a private folder under the run folder...
        assert list((run_dir / "tmp").glob(f"{MODEL}-mar-*"))
        os.killpg(proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        out = "".join(lines) + rest
    finally:
        if proc.poll() is None:  # the test failed: stop the command and the server it started
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 0, out
    assert "on KServe" in out and "stopped" in out, out
    # ...and removed when the server stops; the server is gone.
    assert not list((run_dir / "tmp").glob(f"{MODEL}-mar-*"))
    assert "Finished server process" in (run_dir / "kserve.out").read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/v2/health/live", timeout=2)


def test_cli_unknown_runtime_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "atelier", "serve", "--runtime", "triton"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--runtime" in proc.stderr and "triton" in proc.stderr
