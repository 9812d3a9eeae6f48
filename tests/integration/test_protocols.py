"""One protocol conformance suite, run against both real runtimes (TorchServe and KServe).

Raw images, multipart uploads, KServe v1 and v2 must give the same bodies on both servers,
every bad request a 4xx with its kind in the X-Atelier-Error header and the body of its
protocol (``{"error": "<message>"}`` on v2, ``{"error": {"type", "message"}}`` on raw and v1),
and the server must keep answering correctly afterwards.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.training.data.idx import load_fashion_mnist
from atelier.training.loop import RunResult
from support.answers import error_kind
from support.hostile_images import nan_tiff, png_bomb

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"


@pytest.fixture(scope="module")
def images(fashion_mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    data = load_fashion_mnist(fashion_mnist_dir)
    return data["test_x"][:200], data["test_y"][:200]


@pytest.fixture(scope="module")
def clf(smoke_run: RunResult) -> Classifier:
    return Classifier.from_dir(smoke_run.run_dir)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Client:
    def __init__(self, base: str) -> None:
        self.base = base

    def raw(
        self, body: bytes, content_type: str | None = "image/png", **headers: str
    ) -> requests.Response:
        h = dict(headers)
        if content_type:
            h["Content-Type"] = content_type
        return requests.post(f"{self.base}/predictions/{MODEL}", data=body, headers=h, timeout=60)

    def v1(self, body: Any, **kw: Any) -> requests.Response:
        return self._json(f"{self.base}/v1/models/{MODEL}:predict", body, **kw)

    def v2(self, body: Any, **kw: Any) -> requests.Response:
        return self._json(f"{self.base}/v2/models/{MODEL}/infer", body, **kw)

    def _json(
        self, url: str, body: Any, headers: dict[str, str] | None = None
    ) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        return requests.post(url, data=data, headers=h, timeout=60)


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.inference_url)


def v2_tensor(arr: np.ndarray, datatype: str, shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": "input-0", "shape": shape or list(arr.shape), "datatype": datatype,
            "data": arr.reshape(-1).tolist()}  # fmt: skip


# --- good requests --------------------------------------------------------------------


def test_raw_png(client: Client, images, clf: Classifier) -> None:
    x, _ = images
    r = client.raw(encode_png(x[0]), **{"X-Request-Id": "req-123"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"label", "class_id", "confidence", "top_k", "model_version", "request_id"}
    expected = clf.predict_proba(x[:1])[0]
    assert body["class_id"] == int(expected.argmax())
    assert body["label"] == clf.spec.class_names[body["class_id"]]
    assert body["confidence"] == pytest.approx(float(expected.max()), abs=1e-5)
    assert len(body["top_k"]) == 5
    assert body["request_id"] == "req-123"
    assert body["model_version"] == "1"


def test_raw_jpeg_rgb_any_size(client: Client, images, clf: Classifier) -> None:
    x, _ = images
    big = Image.fromarray(x[1][0]).resize((112, 112)).convert("RGB")
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=95)
    r = client.raw(buf.getvalue(), content_type="image/jpeg", **{"X-Top-K": "3"})
    assert r.status_code == 200, r.text
    assert len(r.json()["top_k"]) == 3
    assert r.json()["class_id"] == int(clf.predict_images([buf.getvalue()])[0].argmax())


def test_multipart_upload(client: Client, images, clf: Classifier) -> None:
    x, _ = images
    png = encode_png(x[2])
    files = {"data": ("x.png", png, "image/png")}
    r = requests.post(f"{client.base}/predictions/{MODEL}", files=files, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["class_id"] == int(clf.predict_proba(x[2:3])[0].argmax())


def test_v1_b64_and_pixel_arrays(client: Client, images, clf: Classifier) -> None:
    x, _ = images
    body = {"instances": [{"b64": b64(encode_png(x[0]))}, b64(encode_png(x[1])), x[2][0].tolist()]}
    r = client.v1(body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert list(r.json()) == ["predictions"]
    expected = clf.predict_proba(x[:3])
    assert [p["class_id"] for p in preds] == list(expected.argmax(axis=1))
    for p, e in zip(preds, expected, strict=True):
        assert p["confidence"] == pytest.approx(float(e.max()), abs=1e-5)


@pytest.mark.parametrize(
    "layout", ["UINT8 n,28,28", "UINT8 n,1,28,28", "FP32 n,28,28", "FP32 n,1,28,28"]
)
def test_v2_tensors(client: Client, images, clf: Classifier, layout: str) -> None:
    x, _ = images
    batch = x[:4]
    datatype, dims = layout.split()
    arr = batch[:, 0] if dims == "n,28,28" else batch
    tensor = v2_tensor(arr.astype(np.float32) / 255.0 if datatype == "FP32" else arr, datatype)
    r = client.v2({"id": "abc", "inputs": [tensor]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == MODEL and body["model_version"] == "1" and body["id"] == "abc"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["probabilities"]["datatype"] == "FP32" and out["probabilities"]["shape"] == [4, 10]
    assert out["label"]["datatype"] == "BYTES" and out["label"]["shape"] == [4]
    probs = np.array(out["probabilities"]["data"]).reshape(4, 10)
    np.testing.assert_allclose(probs, clf.predict_proba(batch), atol=1e-5)
    assert out["label"]["data"] == [clf.spec.class_names[i] for i in probs.argmax(axis=1)]


def test_v2_bytes_requested_outputs_and_generated_id(
    client: Client, images, clf: Classifier
) -> None:
    x, _ = images
    tensor = {"name": "img", "shape": [2], "datatype": "BYTES",
              "data": [b64(encode_png(x[0])), b64(encode_png(x[1]))]}  # fmt: skip
    r = client.v2({"inputs": [tensor], "outputs": [{"name": "label"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [o["name"] for o in body["outputs"]] == ["label"]
    assert body["outputs"][0]["data"] == [
        clf.spec.class_names[i] for i in clf.predict_proba(x[:2]).argmax(1)
    ]
    assert isinstance(body["id"], str) and len(body["id"]) >= 8


def test_parity_200_images_over_v2(client: Client, images, clf: Classifier) -> None:
    """The same 200 test images give the same classes and probabilities (1e-5) in-process
    and through the server, 32 images per request."""
    x, _ = images
    expected = clf.predict_proba(x)
    served = []
    for start in range(0, len(x), 32):
        r = client.v2({"inputs": [v2_tensor(x[start : start + 32], "UINT8")]})
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        served.append(np.array(out["probabilities"]["data"]).reshape(-1, 10))
    probs = np.concatenate(served)
    assert (probs.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


# --- every error type with its status and body -----------------------------------------

PNG_OK = encode_png(np.zeros((28, 28), np.uint8))
PIX = np.zeros((1, 28, 28), np.uint8)
Send = Callable[[Client], requests.Response]
# Decompression bombs, by content (the whole image is there, zeros compress to ~150 KB) and
# by header (the size is declared, the data is one row).
BOMB_16BIT = png_bomb(8900, 8900, bit_depth=16)
BOMB_16BIT_HEADER = png_bomb(8900, 8900, bit_depth=16, rows=1)
BOMB_PALETTE = png_bomb(8900, 8900, colour_type=3)
BLANK_6300 = b64(png_bomb(6300, 6300))
BLANK_2048 = b64(png_bomb(2048, 2048))

BAD_REQUESTS: list[tuple[str, Send, int, str]] = [
    ("raw empty body", lambda c: c.raw(b""), 400, "empty_body"),
    ("raw random bytes", lambda c: c.raw(bytes(range(256)) * 4), 400, "invalid_image"),
    ("raw truncated png", lambda c: c.raw(PNG_OK[:40]), 400, "invalid_image"),
    ("raw png header only", lambda c: c.raw(PNG_OK[:8]), 400, "invalid_image"),
    ("raw text body", lambda c: c.raw(b"hello", content_type="text/plain"), 415, "unsupported_media_type"),
    ("raw 5 MB body", lambda c: c.raw(b"\0" * (5 * 1024 * 1024)), 413, "payload_too_large"),
    ("raw png as json", lambda c: c.raw(PNG_OK, content_type="application/json"), 400, "malformed_request"),
    ("raw top_k zero", lambda c: c.raw(PNG_OK, **{"X-Top-K": "0"}), 400, "malformed_request"),
    ("raw top_k text", lambda c: c.raw(PNG_OK, **{"X-Top-K": "many"}), 400, "malformed_request"),
    ("v1 malformed json", lambda c: c.v1(b'{"instances": [1,'), 400, "malformed_request"),
    ("v1 empty object", lambda c: c.v1({}), 400, "malformed_request"),
    ("v1 json array", lambda c: c.v1([1, 2, 3]), 400, "malformed_request"),
    ("v1 zero instances", lambda c: c.v1({"instances": []}), 400, "malformed_request"),
    ("v1 instances not a list", lambda c: c.v1({"instances": "x"}), 400, "malformed_request"),
    ("v1 bad base64", lambda c: c.v1({"instances": [{"b64": "***"}]}), 400, "invalid_image"),
    ("v1 b64 of garbage", lambda c: c.v1({"instances": [{"b64": b64(b"garbage")}]}), 400, "invalid_image"),
    ("v1 wrong shape", lambda c: c.v1({"instances": [np.zeros((27, 28)).tolist()]}), 400, "wrong_shape"),
    ("v1 ragged array", lambda c: c.v1({"instances": [[[1, 2], [3]]]}), 400, "wrong_shape"),
    ("v1 pixel 300", lambda c: c.v1({"instances": [np.full((28, 28), 300).tolist()]}), 400, "invalid_value"),
    ("v1 pixel strings", lambda c: c.v1({"instances": [[["a"] * 28] * 28]}), 400, "invalid_value"),
    ("v1 instance a number", lambda c: c.v1({"instances": [7]}), 400, "malformed_request"),
    ("v1 10000 instances", lambda c: c.v1({"instances": [{"b64": "AAAA"}] * 10_000}), 400, "too_many_instances"),
    ("v2 wrong datatype", lambda c: c.v2({"inputs": [v2_tensor(PIX, "INT64")]}), 400, "wrong_datatype"),
    ("v2 shape/data mismatch", lambda c: c.v2({"inputs": [v2_tensor(PIX, "UINT8", [2, 28, 28])]}), 400,
     "shape_data_mismatch"),
    ("v2 NaN in FP32", lambda c: c.v2(
        {"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "FP32", "data": [float("nan")] * 784}]}),
     400, "invalid_value"),
    ("v2 FP32 above 1", lambda c: c.v2({"inputs": [v2_tensor(PIX.astype(np.float32) + 2, "FP32")]}), 400,
     "invalid_value"),
    ("v2 three channels", lambda c: c.v2({"inputs": [v2_tensor(np.zeros((1, 3, 28, 28), np.uint8), "UINT8")]}),
     400, "wrong_shape"),
    ("v2 27 wide", lambda c: c.v2({"inputs": [v2_tensor(np.zeros((1, 28, 27), np.uint8), "UINT8")]}), 400,
     "wrong_shape"),
    ("v2 zero images", lambda c: c.v2({"inputs": [{"name": "x", "shape": [0, 28, 28], "datatype": "UINT8",
                                                    "data": []}]}), 400, "malformed_request"),
    ("v2 unknown output", lambda c: c.v2({"inputs": [v2_tensor(PIX, "UINT8")], "outputs": [{"name": "logits"}]}),
     400, "unknown_output"),
    ("v2 two inputs", lambda c: c.v2({"inputs": [v2_tensor(PIX, "UINT8")] * 2}), 400, "malformed_request"),
    ("v2 missing data", lambda c: c.v2({"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "UINT8"}]}),
     400, "malformed_request"),
    ("v2 bad base64 bytes", lambda c: c.v2({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                                         "data": ["%%%"]}]}), 400, "invalid_image"),
    ("v2 negative shape", lambda c: c.v2({"inputs": [v2_tensor(PIX, "UINT8", [-1, 28, 28])]}), 400, "wrong_shape"),
    ("v2 id not a string", lambda c: c.v2({"id": 5, "inputs": [v2_tensor(PIX, "UINT8")]}), 400,
     "malformed_request"),
    ("v2 10000 instances", lambda c: c.v2({"inputs": [{"name": "x", "shape": [10_000, 28, 28],
                                                        "datatype": "UINT8", "data": [0]}]}), 400,
     "too_many_instances"),
    ("raw 16-bit bomb", lambda c: c.raw(BOMB_16BIT), 413, "image_too_large"),
    ("raw 16-bit bomb by header", lambda c: c.raw(BOMB_16BIT_HEADER), 413, "image_too_large"),
    ("raw palette bomb", lambda c: c.raw(BOMB_PALETTE), 413, "image_too_large"),
    ("v1 64 blank 6300x6300", lambda c: c.v1({"instances": [{"b64": BLANK_6300}] * 64}), 413,
     "image_too_large"),
    ("v1 over the request budget", lambda c: c.v1({"instances": [{"b64": BLANK_2048}] * 5}), 413,
     "image_too_large"),
    ("v2 bytes bomb", lambda c: c.v2({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                                   "data": [b64(BOMB_16BIT)]}]}), 413, "image_too_large"),
    ("raw NaN float tiff", lambda c: c.raw(nan_tiff(), content_type="image/tiff"), 400, "invalid_image"),
    ("v1 boolean pixels", lambda c: c.v1({"instances": [[[True] * 28] * 28]}), 400, "invalid_value"),
    ("v2 UINT8 as strings", lambda c: c.v2({"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "UINT8",
                                                         "data": ["7"] * 784}]}), 400, "invalid_value"),
    ("v2 1 MB id", lambda c: c.v2({"id": "x" * 1_000_000, "inputs": [v2_tensor(PIX, "UINT8")]}), 400,
     "invalid_request_id"),
    ("raw long X-Request-Id", lambda c: c.raw(PNG_OK, **{"X-Request-Id": "r" * 1000}), 400,
     "invalid_request_id"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "send", "status", "kind"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_gets_its_error(
    client: Client, case: str, send: Send, status: int, kind: str
) -> None:
    r = send(client)
    assert r.status_code == status, (case, r.status_code, r.text)
    assert error_kind(r) == kind


def worker_pids(server: Any) -> list[int]:
    """The processes that decode images: TorchServe's Python workers, or the KServe server."""
    import psutil

    root = psutil.Process(server.proc.pid)
    procs = [root, *root.children(recursive=True)]
    workers = [p.pid for p in procs if "model_service_worker" in " ".join(p.cmdline())]
    return workers or [p.pid for p in procs if "python" in p.name()]


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set since it started, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


# The documented bound (handlers/README.md): one request costs at most ~60 MB above what the
# worker already held; the margin covers the allocator keeping freed pages.
BOMB_RSS_GROWTH_MB = 150


def test_bombs_leave_the_workers_peak_rss_bounded(
    client: Client, server: Any, images, clf: Classifier
) -> None:
    pids = worker_pids(server)
    assert pids
    before = {pid: peak_rss_mb(pid) for pid in pids}
    bombs = [c for c in BAD_REQUESTS if c[3] == "image_too_large"]
    for _ in range(2):
        for case, send, status, kind in bombs:
            r = send(client)
            assert (r.status_code, error_kind(r)) == (status, kind), case
    after = {pid: peak_rss_mb(pid) for pid in pids}
    growth = {pid: after[pid] - before[pid] for pid in pids}
    assert max(growth.values()) <= BOMB_RSS_GROWTH_MB, (before, after)
    x, _ = images
    r = client.raw(encode_png(x[7]))
    assert r.status_code == 200
    assert r.json()["class_id"] == int(clf.predict_proba(x[7:8])[0].argmax())


def test_ten_megabyte_body_is_refused_with_4xx(client: Client) -> None:
    r = client.raw(b"\0" * (10 * 1024 * 1024))
    assert r.status_code == 413


def test_still_serving_after_the_corpus(client: Client, images, clf: Classifier) -> None:
    assert len(BAD_REQUESTS) >= 30
    for _, send, _, _ in BAD_REQUESTS:
        assert 400 <= send(client).status_code < 500
    x, _ = images
    r = client.raw(encode_png(x[5]))
    assert r.status_code == 200
    assert r.json()["class_id"] == int(clf.predict_proba(x[5:6])[0].argmax())
