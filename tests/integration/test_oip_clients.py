"""The Open Inference Protocol's standard client, tritonclient[http], against both runtimes.

What a user of the client gets by default must work: ``set_data_from_numpy`` sends the
binary tensor data extension, and ``infer`` without outputs asks for binary outputs. Every
datatype the server accepts (UINT8, FP32, BYTES of real PNG and JPEG files) goes through
JSON and binary, outputs come back as JSON and binary, and errors are read back through
``InferenceServerException`` with the server's message. 64 real test images give the same
classes through every path, and the classes of the model run in-process.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.training.loop import RunResult

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
N = 64  # ATELIER_MAX_INSTANCES' default: the most one request may hold


@pytest.fixture(scope="module")
def clf(smoke_run: RunResult) -> Classifier:
    return Classifier.from_dir(smoke_run.run_dir)


@pytest.fixture(scope="module")
def batch(test_images: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """64 real test images, uint8 (64, 1, 28, 28)."""
    return test_images[0][:N]


@pytest.fixture(scope="module")
def expected(clf: Classifier, batch: np.ndarray) -> np.ndarray:
    return clf.predict_proba(batch)


@pytest.fixture(scope="module")
def client(server: Any) -> triton.InferenceServerClient:
    host = server.inference_url.removeprefix("http://")
    return triton.InferenceServerClient(url=host, connection_timeout=60, network_timeout=60)


def tensor(batch: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    """The batch as the client's input: pixels (UINT8 0-255, FP32 0-1) or BYTES, each element
    a PNG file (binary) or its base64 text (JSON, where BYTES must be text)."""
    if datatype == "BYTES":
        pngs = [encode_png(img[0]) for img in batch]
        values = pngs if binary else [base64.b64encode(p).decode() for p in pngs]
        arr = np.array(values, dtype=np.object_)
    elif datatype == "FP32":
        arr = batch.astype(np.float32) / 255.0
    else:
        arr = batch
    inp = triton.InferInput("input-0", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def outputs(binary: bool) -> list[triton.InferRequestedOutput]:
    return [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("label", binary_data=binary),
    ]


def labels(result: triton.InferResult) -> list[str]:
    values = result.as_numpy("label")
    assert values is not None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]


@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("datatype", ["UINT8", "FP32", "BYTES"])
def test_every_path_gives_the_in_process_classes(
    client: triton.InferenceServerClient,
    clf: Classifier,
    batch: np.ndarray,
    expected: np.ndarray,
    datatype: str,
    binary_in: bool,
    binary_out: bool,
) -> None:
    result = client.infer(
        MODEL,
        [tensor(batch, datatype, binary_in)],
        outputs=outputs(binary_out),
        request_id=f"oip-{datatype}",
    )
    response = result.get_response()
    assert response["model_name"] == MODEL and response["id"] == f"oip-{datatype}"
    for out in response["outputs"]:
        assert ("parameters" in out and "binary_data_size" in out["parameters"]) is binary_out
        assert ("data" in out) is not binary_out
    probs = result.as_numpy("probabilities")
    assert probs is not None and probs.shape == (N, 10) and probs.dtype == np.float32
    assert (probs.argmax(axis=1) == expected.argmax(axis=1)).all()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert labels(result) == [clf.spec.class_names[i] for i in expected.argmax(axis=1)]


def test_default_call_is_binary_both_ways(
    client: triton.InferenceServerClient, batch: np.ndarray, expected: np.ndarray
) -> None:
    """The client's defaults: binary input data, no outputs named (so binary_data_output)."""
    inp = triton.InferInput("images", [8, 28, 28], "UINT8")
    inp.set_data_from_numpy(batch[:8, 0])
    result = client.infer(MODEL, [inp])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities", "label"]
    probs = result.as_numpy("probabilities")
    assert probs is not None
    assert (probs.argmax(axis=1) == expected[:8].argmax(axis=1)).all()


def test_binary_bytes_of_jpeg_files(
    client: triton.InferenceServerClient, clf: Classifier, batch: np.ndarray
) -> None:
    """JPEG files of any size and mode, as a BYTES tensor in binary: what only binary carries
    without base64."""
    jpegs = []
    for img in batch[:8]:
        buf = io.BytesIO()
        Image.fromarray(img[0]).resize((56, 56)).convert("RGB").save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    inp = triton.InferInput("jpegs", [len(jpegs)], "BYTES")
    inp.set_data_from_numpy(np.array(jpegs, dtype=np.object_))
    probs = client.infer(MODEL, [inp]).as_numpy("probabilities")
    assert probs is not None
    np.testing.assert_allclose(probs, clf.predict_images(jpegs), atol=1e-5)


def test_one_binary_output_and_one_json(
    client: triton.InferenceServerClient, batch: np.ndarray, expected: np.ndarray
) -> None:
    result = client.infer(
        MODEL,
        [tensor(batch[:4], "UINT8", binary=True)],
        outputs=[
            triton.InferRequestedOutput("label", binary_data=False),
            triton.InferRequestedOutput("probabilities", binary_data=True),
        ],
    )
    label, probs = result.get_response()["outputs"]
    assert label["name"] == "label" and "data" in label
    assert probs["name"] == "probabilities" and "data" not in probs
    got = result.as_numpy("probabilities")
    assert got is not None
    np.testing.assert_allclose(got, expected[:4], atol=1e-5)


# --- errors, read back through the client's exception ---------------------------------


def _infer_error(client: triton.InferenceServerClient, inp: triton.InferInput, **kw: Any) -> Any:
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [inp], **kw)
    return info.value


def _uint8(shape: list[int], values: np.ndarray, binary: bool = True) -> triton.InferInput:
    inp = triton.InferInput("input-0", shape, "UINT8")
    inp.set_data_from_numpy(values, binary_data=binary)
    return inp


def _fp32(values: np.ndarray, binary: bool) -> triton.InferInput:
    inp = triton.InferInput("input-0", list(values.shape), "FP32")
    inp.set_data_from_numpy(values, binary_data=binary)
    return inp


def _bytes(values: list[bytes]) -> triton.InferInput:
    inp = triton.InferInput("input-0", [len(values)], "BYTES")
    inp.set_data_from_numpy(np.array(values, dtype=np.object_))
    return inp


ZEROS = np.zeros((1, 28, 28), np.uint8)
ERRORS: list[tuple[str, Any, dict[str, Any], str]] = [
    ("wrong shape", lambda: _uint8([1, 28, 27], np.zeros((1, 28, 27), np.uint8)), {}, "expected"),
    ("wrong datatype", lambda: _wrong_datatype(), {}, "INT64"),
    ("FP32 above 1 in binary", lambda: _fp32(np.full((1, 28, 28), 2, np.float32), True), {},
     "[0, 1]"),
    ("FP32 NaN in binary", lambda: _fp32(np.full((1, 28, 28), np.nan, np.float32), True), {},
     "NaN"),
    ("BYTES not an image", lambda: _bytes([b"not a png"]), {}, "inputs[0][0]"),
    ("too many images", lambda: _uint8([65, 28, 28], np.zeros((65, 28, 28), np.uint8)), {},
     "at most 64"),
    ("unknown output", lambda: _uint8([1, 28, 28], ZEROS),
     {"outputs": [triton.InferRequestedOutput("logits")]}, "logits"),
    ("request id too long", lambda: _uint8([1, 28, 28], ZEROS), {"request_id": "r" * 200}, "128"),
]  # fmt: skip


def _wrong_datatype() -> triton.InferInput:
    inp = triton.InferInput("input-0", [1, 28, 28], "INT64")
    inp.set_data_from_numpy(np.zeros((1, 28, 28), np.int64))
    return inp


@pytest.mark.parametrize(("case", "make", "kw", "needle"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_reach_the_client_with_the_servers_message(
    client: triton.InferenceServerClient, case: str, make: Any, kw: dict[str, Any], needle: str
) -> None:
    err = _infer_error(client, make(), **kw)
    assert err.status() == "400", (case, str(err))
    assert needle in err.message(), (case, err.message())
    assert err.message() in str(err)
    assert "exception occurred in the client" not in str(err)


# Bad binary framing: the client always frames well, so these are sent by hand.
def _framed(header: dict[str, Any], binary: bytes, length: int | None = None) -> dict[str, Any]:
    head = json.dumps(header).encode()
    return {
        "data": head + binary,
        "headers": {
            "Inference-Header-Content-Length": str(len(head) if length is None else length)
        },
    }


def _binary_input(shape: list[int], datatype: str, size: int) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype,
                        "parameters": {"binary_data_size": size}}]}  # fmt: skip


FRAMING: list[tuple[str, dict[str, Any], str, str]] = [
    ("header length beyond the body", _framed(_binary_input([1, 28, 28], "UINT8", 784),
                                              b"\0" * 784, length=10_000),
     "malformed_request", "beyond the body"),
    ("binary_data_size beyond the data", _framed(_binary_input([1, 28, 28], "UINT8", 784),
                                                 b"\0" * 500),
     "malformed_request", "binary_data_size is 784"),
    ("size not shape x datatype", _framed(_binary_input([1, 28, 28], "FP32", 784), b"\0" * 784),
     "shape_data_mismatch", "needs 3,136 bytes"),
    ("no binary_data_size", _framed({"inputs": [{"name": "x", "shape": [1, 28, 28],
                                                 "datatype": "UINT8"}]}, b"\0" * 784),
     "malformed_request", "binary_data_size"),
    ("BYTES length past the data", _framed(_binary_input([1], "BYTES", 8),
                                           (100).to_bytes(4, "little") + b"\x89PNG"),
     "malformed_request", "declares 100 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "request_kw", "kind", "needle"), FRAMING, ids=[f[0] for f in FRAMING]
)
def test_bad_binary_framing_is_a_typed_400(
    server: Any, case: str, request_kw: dict[str, Any], kind: str, needle: str
) -> None:
    r = requests.post(f"{server.inference_url}/v2/models/{MODEL}/infer", timeout=60, **request_kw)
    assert r.status_code == 400, (case, r.text)
    assert r.headers["X-Atelier-Error"] == kind
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert needle in body["error"], body
