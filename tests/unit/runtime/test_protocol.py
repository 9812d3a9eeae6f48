"""Tests for atelier.runtime.protocol: request parsing, responses and every error path."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from typing import Any

import numpy as np
import pytest
from PIL import Image

from atelier.runtime.errors import (
    REQUEST_ERRORS,
    EmptyBodyError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidRequestIdError,
    InvalidValueError,
    MalformedRequestError,
    PayloadTooLargeError,
    RequestError,
    ShapeMismatchError,
    TooManyInstancesError,
    UnknownOutputError,
    UnsupportedMediaTypeError,
    WrongDatatypeError,
    WrongShapeError,
)
from atelier.runtime.inference import ModelSpec
from atelier.runtime.preprocess import encode_png
from atelier.runtime.protocol import (
    OUTPUT_NAMES,
    Limits,
    Request,
    describe,
    format_answer,
    format_response,
    parse_request,
    parse_top_k,
    pick_upload,
)
from support.hostile_images import nan_tiff, png_bomb

pytestmark = pytest.mark.unit

SPEC = ModelSpec(
    arch="compact",
    in_channels=1,
    image_size=28,
    num_classes=10,
    class_names=[f"c{i}" for i in range(10)],
    mean=[0.5],
    std=[0.5],
    name="m",
    version="3",
)
LIMITS = Limits()
RESPONSE_KEYS = {"label", "class_id", "confidence", "top_k", "model_version", "request_id"}


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def png(seed: int = 0) -> bytes:
    return encode_png(image(seed))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_body(
    data: Any,
    shape: list[int],
    datatype: str = "UINT8",
    **extra: Any,
) -> dict[str, Any]:
    tensor = {"name": "input-0", "shape": shape, "datatype": datatype, "data": data}
    return {"inputs": [tensor], **extra}


def parse(payload: Any, **kwargs: Any) -> Request:
    return parse_request(payload, SPEC, LIMITS, **kwargs)


def probs_for(n: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).random((n, 10)).astype(np.float32)
    return p / p.sum(axis=1, keepdims=True)


# --- protocol detection


@pytest.mark.parametrize("content_type", [None, "image/png", "application/octet-stream"])
def test_png_bytes_are_raw(content_type: str | None) -> None:
    req = parse(png(1), content_type=content_type)
    assert req.protocol == "raw"
    assert req.images.dtype == np.uint8
    assert req.images.shape == (1, 1, 28, 28)
    np.testing.assert_array_equal(req.images[0, 0], image(1))


def test_bytearray_is_accepted() -> None:
    assert parse(bytearray(png(2))).protocol == "raw"


def test_json_bytes_without_content_type_are_v1() -> None:
    body = json.dumps({"instances": [{"b64": b64(png(3))}]}).encode()
    req = parse(body)
    assert req.protocol == "v1"
    np.testing.assert_array_equal(req.images[0, 0], image(3))


def test_json_bytes_without_content_type_are_v2() -> None:
    body = json.dumps(v2_body(image(4).tolist(), [1, 28, 28])).encode()
    req = parse(b"  \n" + body)  # leading whitespace still looks like JSON
    assert req.protocol == "v2"
    np.testing.assert_array_equal(req.images[0, 0], image(4))


def test_json_text_payload_is_parsed() -> None:
    req = parse(json.dumps({"instances": [b64(png(5))]}), content_type="application/json")
    assert req.protocol == "v1"


def test_dict_with_instances_is_v1() -> None:
    req = parse({"instances": [{"b64": b64(png(6))}, b64(png(7)), image(8).tolist()]})
    assert req.protocol == "v1"
    assert req.images.shape == (3, 1, 28, 28)
    for i, seed in enumerate((6, 7, 8)):
        np.testing.assert_array_equal(req.images[i, 0], image(seed))


def test_dict_with_tensor_inputs_is_v2() -> None:
    req = parse(v2_body(image(9).tolist(), [1, 28, 28]))
    assert req.protocol == "v2"
    assert req.v2_input_name == "input-0"
    assert req.outputs == OUTPUT_NAMES


@pytest.mark.parametrize(
    "inputs",
    [
        [{"b64": b64(png(10))}],
        [b64(png(10))],
        [image(10).tolist()],
    ],
    ids=["b64-dict", "b64-str", "pixels"],
)
def test_v1_inputs_holding_plain_instances_is_v1(inputs: list[Any]) -> None:
    req = parse({"inputs": inputs})
    assert req.protocol == "v1"
    np.testing.assert_array_equal(req.images[0, 0], image(10))


def test_image_content_type_wins_over_json_look() -> None:
    with pytest.raises(InvalidImageError):
        parse(b'{"instances": []}', content_type="image/png")


# --- request ids


def test_raw_uses_request_id_argument() -> None:
    assert parse(png(), request_id="hdr-1").request_id == "hdr-1"


def test_raw_without_request_id_gets_a_uuid() -> None:
    rid = parse(png()).request_id
    assert str(uuid.UUID(rid)) == rid


def test_v1_uses_request_id_argument() -> None:
    req = parse({"instances": [b64(png())]}, request_id="hdr-2")
    assert req.request_id == "hdr-2"


def test_v2_uses_request_id_argument_without_body_id() -> None:
    req = parse(v2_body(image().tolist(), [1, 28, 28]), request_id="hdr-3")
    assert req.request_id == "hdr-3"


def test_v2_body_id_wins_over_request_id_argument() -> None:
    req = parse(v2_body(image().tolist(), [1, 28, 28], id="body-id"), request_id="hdr-4")
    assert req.request_id == "body-id"


def test_v2_without_any_id_gets_a_uuid() -> None:
    rid = parse(v2_body(image().tolist(), [1, 28, 28])).request_id
    assert str(uuid.UUID(rid)) == rid


# --- v2 details


@pytest.mark.parametrize(
    "names",
    [("label", "probabilities"), ("probabilities", "label"), ("label",), ("probabilities",)],
)
def test_v2_requested_outputs_keep_their_order(names: tuple[str, ...]) -> None:
    body = v2_body(image().tolist(), [1, 28, 28], outputs=[{"name": n} for n in names])
    req = parse(body)
    assert req.outputs == names
    resp = format_response(req, probs_for(1), SPEC)
    assert [o["name"] for o in resp["outputs"]] == list(names)


def test_v2_empty_outputs_means_all() -> None:
    assert parse(v2_body(image().tolist(), [1, 28, 28], outputs=[])).outputs == OUTPUT_NAMES


def test_fp32_is_scaled_to_uint8_exactly() -> None:
    values = np.linspace(0.0, 1.0, 784).reshape(28, 28)
    values[0, :4] = [0.0, 0.5, 1.0, 0.25]
    req = parse(v2_body(values.tolist(), [1, 28, 28], "FP32"))
    got = req.images[0, 0]
    assert got.dtype == np.uint8
    assert got[0, 0] == 0
    assert got[0, 1] == 128  # 0.5 * 255 = 127.5, rounded to even
    assert got[0, 2] == 255
    assert got[0, 3] == 64  # 63.75
    np.testing.assert_array_equal(got, np.rint(values * 255).astype(np.uint8))


def test_uint8_passes_through_unchanged() -> None:
    imgs = np.stack([image(s) for s in range(3)])
    req = parse(v2_body(imgs.reshape(-1).tolist(), [3, 28, 28], "UINT8"))
    assert req.images.dtype == np.uint8
    np.testing.assert_array_equal(req.images[:, 0], imgs)


def test_nhw_and_nchw_shapes_give_the_same_images() -> None:
    imgs = np.stack([image(s) for s in range(2)])
    flat = imgs.reshape(-1).tolist()
    a = parse(v2_body(flat, [2, 28, 28])).images
    b = parse(v2_body(flat, [2, 1, 28, 28])).images
    assert a.shape == b.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(a, b)


def test_nested_data_is_accepted() -> None:
    imgs = np.stack([image(s) for s in range(2)])[:, None]
    req = parse(v2_body(imgs.tolist(), [2, 1, 28, 28]))
    np.testing.assert_array_equal(req.images, imgs)


@pytest.mark.parametrize("shape", [[2], [2, 1]])
def test_v2_bytes_with_b64_elements(shape: list[int]) -> None:
    data = [{"b64": b64(png(11))}, b64(png(12))]
    req = parse(v2_body(data, shape, "BYTES"))
    assert req.protocol == "v2"
    assert req.images.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(req.images[0, 0], image(11))
    np.testing.assert_array_equal(req.images[1, 0], image(12))


# --- payload size


def test_content_length_over_limit_for_dict_payload() -> None:
    body = {"instances": [b64(png())]}
    with pytest.raises(PayloadTooLargeError, match="over the limit"):
        parse(body, content_length=LIMITS.max_payload_bytes + 1)


def test_content_length_at_limit_is_fine() -> None:
    body = {"instances": [b64(png())]}
    assert parse(body, content_length=LIMITS.max_payload_bytes).protocol == "v1"


def test_bytes_over_limit_without_content_length() -> None:
    small = Limits(max_payload_bytes=100)
    with pytest.raises(PayloadTooLargeError):
        parse_request(png(), SPEC, small)


# --- every error type, from a table


def _v2_missing(key: str) -> dict[str, Any]:
    body = v2_body(image().tolist(), [1, 28, 28])
    del body["inputs"][0][key]
    return body


def _truncated_png() -> bytes:
    return png()[:60]


ERROR_CASES: list[tuple[str, Any, dict[str, Any], type[RequestError], str | None]] = [
    # (id, payload, kwargs, error type, substring the message must hold)
    ("empty-bytes", b"", {}, EmptyBodyError, "empty"),
    ("none-body", None, {}, EmptyBodyError, "empty"),
    ("empty-str", "", {}, EmptyBodyError, "empty"),
    ("v1-empty-b64", {"instances": [""]}, {}, EmptyBodyError, "instances[0]"),
    ("v2-empty-b64", v2_body([{"b64": ""}], [1], "BYTES"), {}, EmptyBodyError, "inputs[0]"),
    ("bad-json", b"{not json", {}, MalformedRequestError, "JSON"),
    (
        "bad-json-typed",
        b"\xff\xfe",
        {"content_type": "application/json"},
        MalformedRequestError,
        "JSON",
    ),
    ("json-list", b"[1, 2]", {}, MalformedRequestError, "instances"),
    ("json-number", b"12", {"content_type": "application/json"}, MalformedRequestError, "int"),
    ("no-known-keys", {"foo": 1}, {}, MalformedRequestError, "foo"),
    ("instances-not-list", {"instances": 5}, {}, MalformedRequestError, "instances"),
    ("instances-empty", {"instances": []}, {}, MalformedRequestError, "instances"),
    ("instance-number", {"instances": [5]}, {}, MalformedRequestError, "instances[0]"),
    ("instance-dict-keys", {"instances": [{"x": 1}]}, {}, MalformedRequestError, "instances[0]"),
    ("instance-b64-not-str", {"instances": [{"b64": 3}]}, {}, MalformedRequestError, "b64"),
    ("inputs-empty", {"inputs": []}, {}, MalformedRequestError, "instances"),
    (
        "two-tensors",
        {"inputs": v2_body([0], [1])["inputs"] * 2},
        {},
        MalformedRequestError,
        "one input tensor",
    ),
    ("v2-lacks-name", _v2_missing("name"), {}, MalformedRequestError, "inputs[0] lacks name"),
    ("v2-lacks-data", _v2_missing("data"), {}, MalformedRequestError, "inputs[0] lacks data"),
    ("v2-lacks-shape", _v2_missing("shape"), {}, MalformedRequestError, "inputs[0] lacks shape"),
    (
        "v2-name-not-str",
        {"inputs": [{"name": 1, "shape": [1], "datatype": "BYTES", "data": [""]}]},
        {},
        MalformedRequestError,
        "inputs[0].name",
    ),
    (
        "v2-data-not-list",
        v2_body("abc", [1, 28, 28]),
        {},
        MalformedRequestError,
        "inputs[0].data",
    ),
    ("v2-zero-images", v2_body([], [0, 28, 28]), {}, MalformedRequestError, "inputs[0]"),
    (
        "v2-id-not-str",
        v2_body(image().tolist(), [1, 28, 28], id=5),
        {},
        MalformedRequestError,
        "'id'",
    ),
    (
        "v2-outputs-not-list",
        v2_body(image().tolist(), [1, 28, 28], outputs={"name": "label"}),
        {},
        MalformedRequestError,
        "outputs",
    ),
    (
        "v2-bytes-bad-element-dict",
        v2_body([{"b64": b64(png()), "x": 1}], [1], "BYTES"),
        {},
        MalformedRequestError,
        "inputs[0].data[0]",
    ),
    ("top-k-word", png(), {"top_k": "abc"}, MalformedRequestError, "X-Top-K"),
    ("top-k-zero", png(), {"top_k": "0"}, MalformedRequestError, "X-Top-K"),
    ("top-k-too-big", {"instances": [b64(png())]}, {"top_k": "11"}, MalformedRequestError, "11"),
    (
        "text-plain",
        b"hello",
        {"content_type": "text/plain"},
        UnsupportedMediaTypeError,
        "text/plain",
    ),
    (
        "text-str",
        "hello",
        {"content_type": "text/csv; charset=utf-8"},
        UnsupportedMediaTypeError,
        "text/csv",
    ),
    ("garbage-bytes", b"\x00\x01garbage", {}, InvalidImageError, "body"),
    ("truncated-png", _truncated_png(), {}, InvalidImageError, "body"),
    ("v1-bad-b64", {"instances": [{"b64": "!!!"}]}, {}, InvalidImageError, "instances[0]"),
    (
        "v1-b64-not-image",
        {"instances": [b64(b"not an image")]},
        {},
        InvalidImageError,
        "instances[0]",
    ),
    (
        "v2-b64-not-image",
        v2_body([b64(b"nope")], [1], "BYTES"),
        {},
        InvalidImageError,
        "inputs[0].data[0]",
    ),
    ("v2-wrong-hw", v2_body([0] * 27 * 27, [1, 27, 27]), {}, WrongShapeError, "inputs[0]"),
    ("v2-three-channels", v2_body([0] * 3 * 784, [1, 3, 28, 28]), {}, WrongShapeError, "[1, 3"),
    ("v2-shape-negative", v2_body([0], [-1]), {}, WrongShapeError, "inputs[0].shape"),
    ("v2-shape-empty", v2_body([0], []), {}, WrongShapeError, "inputs[0].shape"),
    ("v2-shape-bool", v2_body([0], [True, 28, 28]), {}, WrongShapeError, "inputs[0].shape"),
    ("v2-shape-float", v2_body([0], [1.0, 28, 28]), {}, WrongShapeError, "inputs[0].shape"),
    ("v2-bytes-2d-shape", v2_body([b64(png())], [1, 2], "BYTES"), {}, WrongShapeError, "[n]"),
    ("v2-ragged", v2_body([[1, 2], [3]], [1, 28, 28]), {}, WrongShapeError, "ragged"),
    ("v1-wrong-hw", {"instances": [[[0] * 27] * 27]}, {}, WrongShapeError, "instances[0]"),
    ("v1-ragged", {"instances": [[[0, 1], [2]]]}, {}, WrongShapeError, "instances[0]"),
    ("v2-int64", v2_body([0] * 784, [1, 28, 28], "INT64"), {}, WrongDatatypeError, "INT64"),
    ("v2-dtype-none", v2_body([0] * 784, [1, 28, 28], None), {}, WrongDatatypeError, "datatype"),
    ("v2-too-few", v2_body([0] * 10, [1, 28, 28]), {}, ShapeMismatchError, "inputs[0]"),
    ("v2-too-many", v2_body([0] * 785, [1, 28, 28]), {}, ShapeMismatchError, "785"),
    ("v2-bytes-count", v2_body([b64(png())], [2], "BYTES"), {}, ShapeMismatchError, "inputs[0]"),
    ("fp32-over-one", v2_body([2.0] * 784, [1, 28, 28], "FP32"), {}, InvalidValueError, "[0, 1]"),
    ("uint8-negative", v2_body([-1] * 784, [1, 28, 28]), {}, InvalidValueError, "inputs[0]"),
    ("uint8-over-255", v2_body([256] * 784, [1, 28, 28]), {}, InvalidValueError, "inputs[0]"),
    ("uint8-fraction", v2_body([1.5] * 784, [1, 28, 28]), {}, InvalidValueError, "whole"),
    (
        "fp32-nan",
        b'{"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "FP32", "data": ['
        + b",".join([b"NaN"] * 784)
        + b"]}]}",
        {},
        InvalidValueError,
        "NaN",
    ),
    ("v2-strings", v2_body(["a"] * 784, [1, 28, 28]), {}, InvalidValueError, "inputs[0]"),
    ("v2-objects", v2_body([{}] * 784, [1, 28, 28]), {}, InvalidValueError, "inputs[0]"),
    ("v1-pixel-over", {"instances": [[[300] * 28] * 28]}, {}, InvalidValueError, "instances[0]"),
    ("v1-too-many", {"instances": [b64(png())] * 65}, {}, TooManyInstancesError, "65"),
    ("v2-too-many", v2_body([0] * 65 * 784, [65, 28, 28]), {}, TooManyInstancesError, "65"),
    (
        "unknown-output",
        v2_body(image().tolist(), [1, 28, 28], outputs=[{"name": "logits"}]),
        {},
        UnknownOutputError,
        "logits",
    ),
    (
        "content-length",
        {"instances": [b64(png())]},
        {"content_length": LIMITS.max_payload_bytes + 1},
        PayloadTooLargeError,
        str(LIMITS.max_payload_bytes),
    ),
    (
        "bytes-too-long",
        b"\x00" * (LIMITS.max_payload_bytes + 1),
        {},
        PayloadTooLargeError,
        str(LIMITS.max_payload_bytes + 1),
    ),
    # Decompression bombs: refused from the header, before a pixel is decoded.
    ("bomb-16bit", png_bomb(8900, 8900, bit_depth=16, rows=1), {}, ImageTooLargeError,
     "8900x8900 = 79,210,000 pixels"),
    ("bomb-palette", png_bomb(8900, 8900, colour_type=3, rows=1), {}, ImageTooLargeError,
     "per image"),
    ("bomb-v2-bytes", v2_body([b64(png_bomb(6300, 6300, rows=1))], [1], "BYTES"), {},
     ImageTooLargeError, "inputs[0].data[0]: 6300x6300"),
    ("request-pixels", {"instances": [b64(png_bomb(2048, 2048))] * 5}, {}, ImageTooLargeError,
     "instances[4]: 2048x2048 brings the request to 20,971,520 pixels"),
    ("nan-tiff", nan_tiff(), {}, InvalidImageError, "NaN"),
    ("v1-booleans", {"instances": [[[True] * 28] * 28]}, {}, InvalidValueError, "booleans"),
    ("v2-uint8-strings", v2_body(["12"] * 784, [1, 28, 28]), {}, InvalidValueError, "strings"),
    ("v2-id-1mb", v2_body([0] * 784, [1, 28, 28], id="x" * 1_000_000), {},
     InvalidRequestIdError, "1,000,000 characters, at most 128"),
    ("v2-id-newline", v2_body([0] * 784, [1, 28, 28], id="a\nb"), {}, InvalidRequestIdError,
     "'id'"),
    ("header-id-long", png(), {"request_id": "r" * 129}, InvalidRequestIdError, "X-Request-Id"),
    ("header-id-space", png(), {"request_id": "a b"}, InvalidRequestIdError, "X-Request-Id"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "kwargs", "error", "needle"),
    [pytest.param(p, k, e, n, id=i) for i, p, k, e, n in ERROR_CASES],
)
def test_error_table(
    payload: Any, kwargs: dict[str, Any], error: type[RequestError], needle: str | None
) -> None:
    with pytest.raises(RequestError) as info:
        parse(payload, **kwargs)
    err = info.value
    assert type(err) is error, f"{type(err).__name__}: {err.message}"
    assert err.message.strip()
    assert err.kind == error.kind
    assert 400 <= err.http_status < 500
    if needle is not None:
        assert needle in err.message


def test_error_table_covers_every_request_error() -> None:
    covered = {case[3] for case in ERROR_CASES}
    missing = [cls.__name__ for cls in REQUEST_ERRORS if cls not in covered]
    assert not missing


def test_request_error_statuses() -> None:
    assert PayloadTooLargeError.http_status == 413
    assert UnsupportedMediaTypeError.http_status == 415
    for cls in REQUEST_ERRORS:
        assert 400 <= cls.http_status < 500
    assert len({cls.kind for cls in REQUEST_ERRORS}) == len(REQUEST_ERRORS)


# --- inputs that once escaped as something other than a RequestError


@pytest.mark.parametrize("element", [5, None, [b64(png())], 1.5], ids=["int", "null", "list", "f"])
def test_v2_bytes_non_string_element(element: Any) -> None:
    with pytest.raises(RequestError):
        parse(v2_body([element], [1], "BYTES"))


@pytest.mark.parametrize("protocol", ["v1", "v2", "v2-json-bytes"])
def test_huge_integer_pixels(protocol: str) -> None:
    huge = 10**400
    if protocol == "v1":
        payload: Any = {"instances": [[[huge] * 28] * 28]}
    elif protocol == "v2":
        payload = v2_body([huge] * 784, [1, 28, 28])
    else:
        payload = json.dumps(v2_body([huge] * 784, [1, 28, 28])).encode()
    with pytest.raises(InvalidValueError):
        parse(payload)


def test_deeply_nested_json() -> None:
    with pytest.raises(MalformedRequestError):
        parse(b'{"instances": ' + b"[" * 100_000)


def _lab_tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("LAB", (30, 30)).save(buf, format="TIFF")
    return buf.getvalue()


def test_lab_tiff_is_not_an_invalid_image_error() -> None:
    with pytest.raises(InvalidImageError):
        parse(_lab_tiff())


def test_v2_tensor_without_datatype_names_the_field() -> None:
    with pytest.raises(MalformedRequestError) as info:
        parse(_v2_missing("datatype"))
    assert "datatype" in info.value.message


# --- fuzz: nothing escapes as anything but a RequestError

FUZZ_KEYS = ["instances", "inputs", "outputs", "id", "name", "shape", "datatype", "data", "b64"]
FUZZ_MEDIA = [None, "image/png", "application/json", "text/plain", "application/octet-stream"]
FUZZ_TOP_K = [None, "", "3", "abc", "0", "99", "-1", "10"]


def _fuzz_value(rng: np.random.Generator, depth: int = 0) -> Any:
    kind = int(rng.integers(0, 10 if depth < 3 else 6))
    if kind == 0:
        return int(rng.integers(-1000, 1000))
    if kind == 1:
        return float(rng.choice([rng.normal() * 100, float("nan"), float("inf"), 0.5, 1e300]))
    if kind == 2:
        return str(rng.choice(["", "abc", "BYTES", "UINT8", "FP32", b64(png()), "!!", "é"]))
    if kind == 3:
        return None
    if kind == 4:
        return bool(rng.integers(0, 2))
    if kind == 5:
        return [int(d) for d in rng.integers(-1, 30, int(rng.integers(0, 5)))]
    if kind in (6, 7):
        return [_fuzz_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    return _fuzz_dict(rng, depth + 1)


def _fuzz_dict(rng: np.random.Generator, depth: int = 0) -> dict[str, Any]:
    keys = rng.choice([*FUZZ_KEYS, "x", "y"], size=int(rng.integers(0, 4)), replace=False)
    return {str(k): _fuzz_value(rng, depth) for k in keys}


def _fuzz_tensor(rng: np.random.Generator) -> dict[str, Any]:
    """A v2 body that is often valid, else has one field perturbed."""
    datatype = str(rng.choice(["UINT8", "FP32", "BYTES", "INT8"], p=[0.4, 0.3, 0.2, 0.1]))
    n = int(rng.choice([0, 1, 2], p=[0.1, 0.5, 0.4]))
    if datatype == "BYTES":
        shape: list[Any] = [n]
        data: Any = [str(rng.choice([b64(png()), "", "zz", b64(png())[:50]])) for _ in range(n)]
    else:
        shape = [n, int(rng.choice([1, 1, 3])), 28, 28]
        if rng.random() < 0.3:
            shape = shape[: int(rng.integers(1, 4))]
        size = int(np.prod(shape)) if rng.random() < 0.7 else int(rng.integers(0, 2 * 784))
        data = rng.random(size).round(3).tolist()
        if datatype != "FP32":
            top = 255 if rng.random() < 0.8 else 300
            data = [round(v * top) for v in data]
    tensor: dict[str, Any] = {"name": "t", "shape": shape, "datatype": datatype, "data": data}
    body: dict[str, Any] = {"inputs": [tensor]}
    where = int(rng.integers(0, 10))
    if where < 3:
        tensor[("name", "shape", "data")[where]] = _fuzz_value(rng, 2)
    elif where == 3:
        body["outputs"] = _fuzz_value(rng, 2)
    elif where == 4:
        body["id"] = _fuzz_value(rng, 3)
    return body


def _fuzz_case(rng: np.random.Generator, i: int) -> tuple[Any, Any, dict[str, Any]]:
    """(payload as sent, payload before JSON encoding, keyword arguments)."""
    # Mostly no header, so that most cases reach the body parsers.
    kwargs: dict[str, Any] = {"content_type": None, "top_k": None}
    if rng.random() < 0.3:
        kwargs["content_type"] = FUZZ_MEDIA[int(rng.integers(0, len(FUZZ_MEDIA)))]
    if rng.random() < 0.2:
        kwargs["top_k"] = FUZZ_TOP_K[int(rng.integers(0, len(FUZZ_TOP_K)))]
    good = png(i)
    kind = i % 6
    if kind == 0:
        payload: Any = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
    elif kind == 1:
        cut = int(rng.integers(0, len(good)))
        payload = good[:cut]
    elif kind == 2:
        flipped = bytearray(good)
        for pos in rng.integers(0, len(good), int(rng.integers(1, 4))):
            flipped[int(pos)] ^= int(rng.integers(1, 256))
        payload = bytes(flipped)
    elif kind == 3:
        payload = _fuzz_dict(rng)
    elif kind == 4:
        payload = _fuzz_tensor(rng)
    else:
        payload = {"instances": _fuzz_value(rng, 1)} if rng.random() < 0.5 else _fuzz_value(rng)
    obj = payload
    if isinstance(payload, dict | list) and rng.random() < 0.5:
        text = json.dumps(payload)
        if rng.random() < 0.3:
            text = text[: int(rng.integers(0, len(text) + 1))]
        payload = text.encode()
    return payload, obj, kwargs


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_only_request_errors_escape() -> None:
    rng = np.random.default_rng(20241122)
    escaped = []
    cases = 0
    while cases < 300:
        payload, _obj, kwargs = _fuzz_case(rng, cases)
        cases += 1
        try:
            req = parse(payload, **kwargs)
        except RequestError as err:
            assert err.message.strip()
            continue
        except Exception as exc:  # anything else is what this test looks for
            escaped.append((repr(payload)[:120], kwargs, f"{type(exc).__name__}: {exc}"))
            continue
        assert req.images.dtype == np.uint8
        assert req.images.ndim == 4 and req.images.shape[1:] == (1, 28, 28)
    assert not escaped, escaped[:5]


# --- responses


def _req(protocol: str, n: int, top_k: int = 5, **kw: Any) -> Request:
    return Request(protocol, np.zeros((n, 1, 28, 28), np.uint8), "rid-7", top_k, **kw)


def test_format_raw() -> None:
    p = probs_for(1)
    resp = format_response(_req("raw", 1, top_k=3), p, SPEC)
    assert set(resp) == RESPONSE_KEYS
    assert resp["model_version"] == "3"
    assert resp["request_id"] == "rid-7"
    best = int(p[0].argmax())
    assert resp["class_id"] == best
    assert resp["label"] == f"c{best}"
    assert resp["confidence"] == pytest.approx(float(p[0, best]))
    assert len(resp["top_k"]) == 3
    json.dumps(resp)  # plain JSON types only


def test_format_v1() -> None:
    p = probs_for(3)
    resp = format_response(_req("v1", 3, top_k=2), p, SPEC)
    assert set(resp) == {"predictions"}
    preds = resp["predictions"]
    assert isinstance(preds, list) and len(preds) == 3
    for row, pred in zip(p, preds, strict=True):
        assert set(pred) == {"label", "class_id", "confidence", "top_k"}
        assert pred["class_id"] == int(row.argmax())
        assert len(pred["top_k"]) == 2
    json.dumps(resp)


def test_format_v2() -> None:
    p = probs_for(2)
    resp = format_response(_req("v2", 2), p, SPEC)
    assert resp["model_name"] == "m"
    assert resp["model_version"] == "3"
    assert resp["id"] == "rid-7"
    probs, label = resp["outputs"]
    assert probs["name"] == "probabilities"
    assert probs["datatype"] == "FP32"
    assert probs["shape"] == [2, 10]
    assert len(probs["data"]) == 20
    np.testing.assert_allclose(np.array(probs["data"]).reshape(2, 10), p, rtol=1e-6)
    assert label["name"] == "label"
    assert label["datatype"] == "BYTES"
    assert label["shape"] == [2]
    assert label["data"] == [f"c{int(i)}" for i in p.argmax(axis=1)]
    json.dumps(resp)


def test_format_v2_only_label() -> None:
    resp = format_response(_req("v2", 1, outputs=("label",)), probs_for(1), SPEC)
    assert [o["name"] for o in resp["outputs"]] == ["label"]


@pytest.mark.parametrize("top_k", [1, 3, 5, 10])
def test_describe_orders_top_k(top_k: int) -> None:
    p = probs_for(1, seed=top_k)[0]
    d = describe(SPEC, p, top_k)
    probs = [e["probability"] for e in d["top_k"]]
    assert len(probs) == top_k
    assert probs == sorted(probs, reverse=True)
    assert [e["class_id"] for e in d["top_k"]] == [int(i) for i in np.argsort(-p)[:top_k]]
    assert all(e["label"] == f"c{e['class_id']}" for e in d["top_k"])
    assert d["top_k"][0]["class_id"] == d["class_id"]
    assert d["confidence"] == pytest.approx(probs[0])


@pytest.mark.parametrize(("top_k", "length"), [(0, 1), (-3, 1), (50, 10)])
def test_describe_clamps_top_k(top_k: int, length: int) -> None:
    assert len(describe(SPEC, probs_for(1)[0], top_k)["top_k"]) == length


def test_describe_ties_keep_class_order() -> None:
    d = describe(SPEC, np.full(10, 0.1, dtype=np.float32), 4)
    assert [e["class_id"] for e in d["top_k"]] == [0, 1, 2, 3]


# --- parse_top_k and pick_upload


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 5), ("", 5), ("1", 1), ("3", 3), (" 7 ", 7), (10, 10)]
)
def test_parse_top_k(raw: Any, expected: int) -> None:
    assert parse_top_k(raw, SPEC, LIMITS) == expected


def test_parse_top_k_default_is_capped_by_classes() -> None:
    spec = ModelSpec("compact", 1, 28, 3, ["a", "b", "c"], [0.5], [0.5])
    assert parse_top_k(None, spec, LIMITS) == 3


@pytest.mark.parametrize("raw", ["abc", "2.5", "0", "11", "-1", [3]])
def test_parse_top_k_rejects(raw: Any) -> None:
    with pytest.raises(MalformedRequestError, match="X-Top-K"):
        parse_top_k(raw, SPEC, LIMITS)


@pytest.mark.parametrize("name", ["data", "file", "image", "body"])
def test_pick_upload_named_field(name: str) -> None:
    assert pick_upload({name: b"img", "note": "hello"}) == (b"img", None)


def test_pick_upload_prefers_data_over_file() -> None:
    assert pick_upload({"file": b"second", "data": b"first"})[0] == b"first"


def test_pick_upload_single_unnamed_file() -> None:
    assert pick_upload({"upload": bytearray(b"img"), "note": "text"})[0] == b"img"


@pytest.mark.parametrize(
    "fields", [{}, {"note": "text"}, {"a": b"1", "b": b"2"}], ids=["none", "text", "two"]
)
def test_pick_upload_rejects(fields: dict[str, Any]) -> None:
    with pytest.raises(MalformedRequestError, match="multipart") as info:
        pick_upload(fields)
    assert "data" in info.value.message


def test_pick_upload_then_parse() -> None:
    payload, content_type = pick_upload({"file": png(13)})
    req = parse(payload, content_type=content_type)
    assert req.protocol == "raw"
    np.testing.assert_array_equal(req.images[0, 0], image(13))


# --- the binary tensor data extension


def binary_request(
    tensor: dict[str, Any], raw: bytes, **extra: Any
) -> tuple[bytes, dict[str, Any]]:
    """A v2 body in binary form and the keyword arguments parse_request takes with it."""
    header = json.dumps({"inputs": [tensor], **extra}).encode()
    return header + raw, {"binary_header": str(len(header))}


def binary_tensor(shape: list[int], datatype: str, size: int) -> dict[str, Any]:
    return {"name": "input-0", "shape": shape, "datatype": datatype,
            "parameters": {"binary_data_size": size}}  # fmt: skip


def bytes_elements(*elements: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def test_binary_uint8_gives_the_json_images() -> None:
    pixels = np.stack([image(1), image(2)])
    body, kw = binary_request(binary_tensor([2, 28, 28], "UINT8", pixels.size), pixels.tobytes())
    req = parse(body, **kw)
    assert req.protocol == "v2"
    np.testing.assert_array_equal(req.images, parse(v2_body(pixels.tolist(), [2, 28, 28])).images)


def test_binary_fp32_is_little_endian_and_scaled_as_json() -> None:
    pixels = np.stack([image(3)])[:, None].astype("<f4") / 255
    body, kw = binary_request(
        binary_tensor([1, 1, 28, 28], "FP32", pixels.nbytes), pixels.tobytes()
    )
    expected = parse(v2_body(pixels.tolist(), [1, 1, 28, 28], "FP32")).images
    np.testing.assert_array_equal(parse(body, **kw).images, expected)


@pytest.mark.parametrize("content_type", [None, "application/json", "application/octet-stream"])
def test_binary_bytes_are_whole_image_files(content_type: str | None) -> None:
    raw = bytes_elements(png(4), png(5))
    body, kw = binary_request(binary_tensor([2], "BYTES", len(raw)), raw, id="bin-1")
    req = parse(body, content_type=content_type, **kw)
    assert req.request_id == "bin-1"
    expected = parse(v2_body([b64(png(4)), b64(png(5))], [2], "BYTES")).images
    np.testing.assert_array_equal(req.images, expected)


def test_binary_header_with_json_data_only() -> None:
    header = json.dumps(v2_body(image(6)[None].tolist(), [1, 28, 28])).encode()
    req = parse(header, binary_header=str(len(header)))
    np.testing.assert_array_equal(req.images[0, 0], image(6))


@pytest.mark.parametrize(
    ("request_flag", "per_output", "binary"),
    [
        (None, None, set()),
        (True, None, {"probabilities", "label"}),
        (True, {"label": False, "probabilities": None}, {"probabilities"}),
        (False, {"label": True}, {"label"}),
        (None, {"probabilities": True}, {"probabilities"}),
    ],
)
def test_binary_outputs_requested(
    request_flag: bool | None, per_output: dict[str, bool | None] | None, binary: set[str]
) -> None:
    extra: dict[str, Any] = {}
    if request_flag is not None:
        extra["parameters"] = {"binary_data_output": request_flag}
    if per_output is not None:
        extra["outputs"] = [
            {"name": name, **({} if flag is None else {"parameters": {"binary_data": flag}})}
            for name, flag in per_output.items()
        ]
    req = parse(v2_body(image(0)[None].tolist(), [1, 28, 28], **extra))
    assert req.binary_outputs == binary


def test_format_answer_binary_outputs() -> None:
    p = probs_for(3)
    req = _req("v2", 3, binary_outputs=frozenset(OUTPUT_NAMES))
    body, raw = format_answer(req, p, SPEC)
    probs, label = body["outputs"]
    assert "data" not in probs and "data" not in label
    n_probs = probs["parameters"]["binary_data_size"]
    assert n_probs == 3 * 10 * 4
    np.testing.assert_array_equal(np.frombuffer(raw[:n_probs], "<f4").reshape(3, 10), p)
    labels, pos = [], n_probs
    while pos < len(raw):
        size = int.from_bytes(raw[pos : pos + 4], "little")
        labels.append(raw[pos + 4 : pos + 4 + size].decode())
        pos += 4 + size
    assert label["parameters"]["binary_data_size"] == len(raw) - n_probs
    assert labels == [f"c{int(i)}" for i in p.argmax(axis=1)]
    assert format_response(req, p, SPEC) == body


def test_format_answer_json_has_no_binary() -> None:
    assert format_answer(_req("v2", 1), probs_for(1), SPEC)[1] == b""


PNG_ELEMENTS = bytes_elements(png(7))
BINARY_ERRORS: list[tuple[str, bytes, str, type[RequestError], str]] = [
    ("header not a number", b"{}", "ten", MalformedRequestError, "not a whole number"),
    ("header beyond the body", b'{"inputs": []}', "999", MalformedRequestError, "beyond the body"),
    ("header not JSON", b"\x89PNG....", "4", MalformedRequestError, "not valid JSON"),
    ("header not v2", b'{"instances": [1]}', "18", MalformedRequestError, "v2 request"),
    ("size beyond the data",
     *binary_request(binary_tensor([1, 28, 28], "UINT8", 784), b"\0" * 700)[0:1],
     "", MalformedRequestError, "binary_data_size is 784"),
    ("size not the shape's",
     *binary_request(binary_tensor([1, 28, 28], "UINT8", 700), b"\0" * 700)[0:1],
     "", ShapeMismatchError, "needs 784 bytes"),
    ("FP32 size of UINT8",
     *binary_request(binary_tensor([1, 28, 28], "FP32", 784), b"\0" * 784)[0:1],
     "", ShapeMismatchError, "needs 3,136 bytes"),
    ("bytes left over",
     *binary_request(binary_tensor([1, 28, 28], "UINT8", 784), b"\0" * 790)[0:1],
     "", MalformedRequestError, "6 bytes of binary data"),
    ("no binary_data_size and no data",
     *binary_request({"name": "x", "shape": [1, 28, 28], "datatype": "UINT8"}, b"\0" * 784)[0:1],
     "", MalformedRequestError, "binary_data_size"),
    ("both data and size",
     *binary_request({**binary_tensor([1], "BYTES", 4), "data": ["x"]}, b"\0" * 4)[0:1],
     "", MalformedRequestError, "both data"),
    ("size negative",
     *binary_request(binary_tensor([1], "BYTES", -1), b"")[0:1],
     "", MalformedRequestError, "non-negative integer"),
    ("BYTES element truncated",
     *binary_request(binary_tensor([1], "BYTES", len(PNG_ELEMENTS) - 5), PNG_ELEMENTS[:-5])[0:1],
     "", MalformedRequestError, "element 0 declares"),
    ("BYTES length truncated",
     *binary_request(binary_tensor([1], "BYTES", 2), b"\1\0")[0:1],
     "", MalformedRequestError, "truncated 4-byte length"),
    ("BYTES count not the shape's",
     *binary_request(binary_tensor([2], "BYTES", len(PNG_ELEMENTS)), PNG_ELEMENTS)[0:1],
     "", ShapeMismatchError, "holds 1"),
    ("BYTES element not an image",
     *binary_request(binary_tensor([1], "BYTES", 12), bytes_elements(b"garbage!"))[0:1],
     "", InvalidImageError, "inputs[0][0]"),
    ("UINT8 binary wrong shape",
     *binary_request(binary_tensor([1, 28, 27], "UINT8", 756), b"\0" * 756)[0:1],
     "", WrongShapeError, "expected"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "body", "header", "error", "needle"), BINARY_ERRORS, ids=[c[0] for c in BINARY_ERRORS]
)
def test_binary_framing_errors(
    case: str, body: bytes, header: str, error: type[RequestError], needle: str
) -> None:
    if not header:  # a well-framed header: the whole JSON before the binary part
        header = str(body.index(b"}]}") + 3)
    with pytest.raises(error, match=re.escape(needle)) as info:
        parse(body, binary_header=header)
    assert info.value.protocol == "v2"


def test_binary_data_size_without_the_header() -> None:
    with pytest.raises(MalformedRequestError, match="Inference-Header-Content-Length"):
        parse({"inputs": [binary_tensor([1, 28, 28], "UINT8", 784)]})


@pytest.mark.parametrize(
    ("payload", "protocol"),
    [({"instances": [7]}, "v1"), (v2_body([1], [1, 28, 28]), "v2"), ({"x": 1}, None)],
)
def test_request_errors_carry_the_protocol(payload: Any, protocol: str | None) -> None:
    with pytest.raises(RequestError) as info:
        parse(payload)
    assert info.value.protocol == protocol
