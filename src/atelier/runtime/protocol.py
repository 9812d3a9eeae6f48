"""The three request protocols, parsed and answered in one place for every runtime.

- raw: image bytes (PNG, JPEG, any size or mode) or a multipart file upload;
  answer ``{"label", "class_id", "confidence", "top_k", "model_version", "request_id"}``.
- KServe v1: ``{"instances": [...]}``, each ``{"b64": "<base64 image>"}``, a base64 string
  or a pixel array (0-255, shape [H, W] or [C, H, W]); answer ``{"predictions": [...]}``.
- KServe v2 / Open Inference Protocol: one input tensor of datatype UINT8 (0-255) or FP32
  (0-1), shape [n, H, W] or [n, C, H, W], or BYTES (base64 encoded images), shape [n];
  answer outputs ``probabilities`` (FP32 [n, classes]) and ``label`` (BYTES [n]).

v2 also takes and gives the binary tensor data extension: a JSON header of
``Inference-Header-Content-Length`` bytes, then each input's raw bytes (``parameters.
binary_data_size``; UINT8 one byte a value, FP32 four little-endian, BYTES each element a
4-byte little-endian length and its bytes: a whole PNG or JPEG); outputs asked for with
``parameters.binary_data_output`` (request) or ``parameters.binary_data`` (output) come back
the same way (``format_answer``).

Every problem raises a RequestError subclass (atelier.runtime.errors), which the runtime turns
into its HTTP status and error body (``errors.http_answer``); a RequestError raised once the
body is known to be v1 or v2 carries that protocol. Only numpy, Pillow and the standard
library are imported: this module ships inside the .mar.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atelier.runtime.errors import (
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
from atelier.runtime.oip import BINARY_HEADER, OUTPUT_NAMES, V2_DATATYPES
from atelier.runtime.preprocess import (
    MAX_IMAGE_PIXELS,
    MAX_REQUEST_PIXELS,
    ImageDecodeError,
    PixelBudget,
    PixelBudgetError,
    bytes_to_array,
)
from atelier.runtime.records import MAX_REQUEST_ID_LENGTH, REQUEST_ID_PATTERN
from atelier.runtime.spec import ModelSpec

# OUTPUT_NAMES, V2_DATATYPES and BINARY_HEADER come from atelier.runtime.oip, which makes
# every runtime's OIP metadata from them.
# Bytes per value of the fixed-size datatypes in binary form (little-endian).
BINARY_DTYPES: dict[str, np.dtype[Any]] = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4")}
IMAGE_FILE_FIELDS = ("data", "file", "image", "body")


@dataclass(frozen=True)
class Limits:
    max_instances: int = 64
    # Below TorchServe's max_request_size (8 MiB), so bodies in between get our JSON 413.
    max_payload_bytes: int = 4 * 1024 * 1024
    default_top_k: int = 5
    # Decoded pixels per image and per request, checked from each image's header before
    # its pixels are decoded (see atelier.runtime.preprocess.PixelBudget).
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_request_pixels: int = MAX_REQUEST_PIXELS
    # Request ids are copied into every image's feature record.
    max_request_id_length: int = MAX_REQUEST_ID_LENGTH

    def budget(self) -> PixelBudget:
        return PixelBudget(self.max_image_pixels, self.max_request_pixels)


# What a request id may hold: enough for UUIDs, trace ids and "<client>-<n>" names.
REQUEST_ID_CHARS = re.compile(REQUEST_ID_PATTERN)


def check_request_id(value: str, where: str, limits: Limits) -> str:
    if len(value) > limits.max_request_id_length:
        raise InvalidRequestIdError(
            f"{where} has {len(value):,} characters, at most {limits.max_request_id_length}"
        )
    if not REQUEST_ID_CHARS.fullmatch(value):
        raise InvalidRequestIdError(
            f"{where} {value[:40]!r} may hold only letters, digits and . _ : / @ + = -"
        )
    return value


@dataclass
class Request:
    protocol: str  # "raw", "v1" or "v2"
    images: np.ndarray  # uint8 (n, C, H, W)
    request_id: str
    top_k: int
    outputs: tuple[str, ...] = OUTPUT_NAMES
    v2_input_name: str = "input-0"
    extra: dict[str, Any] = field(default_factory=dict)
    binary_outputs: frozenset[str] = frozenset()  # v2 outputs answered in binary


def new_request_id() -> str:
    return str(uuid.uuid4())


def _b64_image(value: Any, where: str, spec: ModelSpec, budget: PixelBudget) -> np.ndarray:
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise MalformedRequestError(f'{where}: expected {{"b64": "<base64 image>"}}')
        value = value["b64"]
    if not isinstance(value, str):
        raise MalformedRequestError(
            f"{where}: expected a base64 string, got {type(value).__name__}"
        )
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"{where}: not valid base64 ({exc})") from exc
    return _decode(raw, where, spec, budget)


def _decode(raw: bytes, where: str, spec: ModelSpec, budget: PixelBudget) -> np.ndarray:
    if not raw:
        raise EmptyBodyError(f"{where}: empty image")
    try:
        return bytes_to_array(raw, spec.image_size, spec.in_channels, budget, where)
    except PixelBudgetError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except ImageDecodeError as exc:
        raise InvalidImageError(f"{where}: {exc}") from exc


def _expected_shapes(spec: ModelSpec, batch: bool) -> str:
    n = "n, " if batch else ""
    s = spec.image_size
    chw = f"[{n}{spec.in_channels}, {s}, {s}]"
    return f"[{n}{s}, {s}] or {chw}" if spec.in_channels == 1 else chw


def _pixels(arr: np.ndarray, where: str, spec: ModelSpec, scale: float) -> np.ndarray:
    """Check a numeric pixel tensor (n, H, W) or (n, C, H, W); return uint8 (n, C, H, W)."""
    s, c = spec.image_size, spec.in_channels
    if arr.ndim == 3 and c == 1 and arr.shape[1:] == (s, s):
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1:] != (c, s, s):
        raise WrongShapeError(
            f"{where}: shape {list(arr.shape)}, expected {_expected_shapes(spec, batch=True)}"
        )
    if not np.isfinite(arr).all():
        raise InvalidValueError(f"{where}: NaN or infinite pixel values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > scale:
        raise InvalidValueError(
            f"{where}: pixel values must be in [0, {scale:g}], got [{lo:g}, {hi:g}]"
        )
    if scale == 255 and not np.array_equal(arr, np.floor(arr)):
        raise InvalidValueError(f"{where}: UINT8 pixels must be whole numbers")
    return np.rint(arr * (255.0 / scale)).astype(np.uint8)


def _numeric(data: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(data)
        if arr.dtype.kind not in "iuf":
            # Booleans, strings ("12"), nulls and objects are not pixel values, even where
            # numpy would convert them.
            kind = {"b": "booleans", "U": "strings", "S": "strings"}.get(arr.dtype.kind, "values")
            raise InvalidValueError(f"{where}: pixel values must be numbers, got {kind}")
        arr = arr.astype(np.float64, copy=False)
    except OverflowError as exc:
        raise InvalidValueError(f"{where}: a number is too large") from exc
    except (ValueError, TypeError) as exc:
        # Ragged nesting or non-numbers: say which.
        text = str(exc)
        if "inhomogeneous" in text or "sequence" in text:
            raise WrongShapeError(f"{where}: ragged array ({text.split(':')[0]})") from exc
        raise InvalidValueError(f"{where}: not numbers ({text})") from exc
    return arr


def _parse_v1(
    body: dict[str, Any], spec: ModelSpec, limits: Limits, budget: PixelBudget
) -> list[np.ndarray]:
    instances = body.get("instances", body.get("inputs"))
    if not isinstance(instances, list):
        raise MalformedRequestError("'instances' must be a list")
    if not instances:
        raise MalformedRequestError("'instances' is empty: send at least one image")
    if len(instances) > limits.max_instances:
        raise TooManyInstancesError(
            f"{len(instances)} instances, at most {limits.max_instances} per request"
        )
    images = []
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if isinstance(inst, dict | str):
            images.append(_b64_image(inst, where, spec, budget))
        elif isinstance(inst, list):
            arr = _numeric(inst, where)
            images.append(_pixels(arr[None], where, spec, 255.0)[0])
        else:
            raise MalformedRequestError(
                f'{where}: expected {{"b64": ...}}, a base64 string or a pixel array'
            )
    return images


@dataclass(frozen=True)
class V2Parsed:
    images: np.ndarray
    request_id: str | None
    outputs: tuple[str, ...]
    input_name: str
    binary_outputs: frozenset[str]


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise MalformedRequestError(f"{where}.parameters must be an object")
    return params


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise MalformedRequestError(f"{where}.parameters.{key} must be true or false")
    return value


def _binary_elements(raw: bytes, n: int, where: str) -> list[bytes]:
    """BYTES in binary: n elements, each a 4-byte little-endian length and that many bytes."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise MalformedRequestError(
                f"{where}: binary BYTES element {len(out)} has a truncated 4-byte length"
            )
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise MalformedRequestError(
                f"{where}: binary BYTES element {len(out)} declares {size:,} bytes, "
                f"{len(raw) - pos:,} are left in binary_data_size"
            )
        out.append(raw[pos : pos + size])
        pos += size
    if len(out) != n:
        raise ShapeMismatchError(
            f"{where}: shape [{n}] needs {n} BYTES elements, the binary data holds {len(out)}"
        )
    return out


def _tensor_data(
    tensor: dict[str, Any], where: str, binary: bytes | None, offset: int
) -> tuple[Any, bytes | None, int]:
    """The tensor's JSON ``data`` or its slice of the binary part; the next binary offset."""
    params = _parameters(tensor, where)
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            hint = " (or parameters.binary_data_size, with the binary data extension)"
            raise MalformedRequestError(f"{where} lacks data{hint}")
        return tensor["data"], None, offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedRequestError(
            f"{where}.parameters.binary_data_size must be a non-negative integer, got {size!r}"
        )
    if "data" in tensor:
        raise MalformedRequestError(f"{where} has both data and parameters.binary_data_size")
    if binary is None:
        raise MalformedRequestError(
            f"{where}.parameters.binary_data_size needs the binary data extension: "
            f"send the {BINARY_HEADER} header"
        )
    if offset + size > len(binary):
        raise MalformedRequestError(
            f"{where}.parameters.binary_data_size is {size:,} bytes, the body has "
            f"{len(binary) - offset:,} bytes of binary data left after its JSON header"
        )
    return None, binary[offset : offset + size], offset + size


def _parse_v2(
    body: dict[str, Any],
    spec: ModelSpec,
    limits: Limits,
    budget: PixelBudget,
    binary: bytes | None = None,
) -> V2Parsed:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise MalformedRequestError("'inputs' must be a non-empty list of tensors")
    if len(inputs) != 1:
        raise MalformedRequestError(f"expected one input tensor, got {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise MalformedRequestError("inputs[0] must be an object with name, shape, datatype, data")
    missing = [k for k in ("name", "shape", "datatype") if k not in tensor]
    if missing:
        raise MalformedRequestError(f"inputs[0] lacks {', '.join(missing)}")
    name, shape, datatype = tensor["name"], tensor["shape"], tensor["datatype"]
    if not isinstance(name, str):
        raise MalformedRequestError("inputs[0].name must be a string")
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise WrongShapeError(
            f"inputs[0].shape must be a list of non-negative integers, got {shape!r}"
        )
    if datatype not in V2_DATATYPES:
        raise WrongDatatypeError(
            f"inputs[0].datatype {datatype!r} is not one of {', '.join(V2_DATATYPES)}"
        )
    where = "inputs[0]"
    data, raw, used = _tensor_data(tensor, where, binary, 0)
    if binary is not None and used != len(binary):
        raise MalformedRequestError(
            f"the body has {len(binary) - used:,} bytes of binary data that no input's "
            "parameters.binary_data_size claims"
        )
    if raw is None and not isinstance(data, list):
        raise MalformedRequestError("inputs[0].data must be a list")
    n = shape[0]
    if n == 0:
        raise MalformedRequestError("inputs[0] holds 0 images: send at least one")
    if n > limits.max_instances:
        raise TooManyInstancesError(f"{n} images, at most {limits.max_instances} per request")
    if datatype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise WrongShapeError(f"{where}: BYTES shape must be [n], got {shape}")
        if raw is not None:
            images = np.stack([
                _decode(v, f"{where}[{i}]", spec, budget)
                for i, v in enumerate(_binary_elements(raw, n, where))
            ])  # fmt: skip
        else:
            if len(data) != n:
                raise ShapeMismatchError(
                    f"{where}: shape {shape} needs {n} elements, data has {len(data)}"
                )
            images = np.stack(
                [_b64_image(v, f"{where}.data[{i}]", spec, budget) for i, v in enumerate(data)]
            )
    else:
        if raw is not None:
            dtype = BINARY_DTYPES[datatype]
            need = math.prod(shape) * dtype.itemsize
            if len(raw) != need:
                raise ShapeMismatchError(
                    f"{where}: shape {shape} of {datatype} needs {need:,} bytes, "
                    f"binary_data_size is {len(raw):,}"
                )
            arr = np.frombuffer(raw, dtype=dtype)
        else:
            arr = _numeric(data, where).reshape(-1)
            if arr.size != math.prod(shape):
                raise ShapeMismatchError(
                    f"{where}: shape {shape} needs {math.prod(shape)} values, data has {arr.size}"
                )
        images = _pixels(arr.reshape(shape), where, spec, 255.0 if datatype == "UINT8" else 1.0)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedRequestError("'id' must be a string")
    if request_id:
        check_request_id(request_id, "'id'", limits)
    binary_all = _flag(_parameters(body, "request"), "binary_data_output", "request")
    outputs, binary_outputs = _requested_outputs(body.get("outputs"), bool(binary_all))
    return V2Parsed(images, request_id, outputs, name, binary_outputs)


def _requested_outputs(
    raw: Any, binary_all: bool = False
) -> tuple[tuple[str, ...], frozenset[str]]:
    """The outputs asked for, and those of them to answer in binary: each output's
    ``parameters.binary_data``, else the request's ``parameters.binary_data_output``."""
    if raw is None or raw == []:
        return OUTPUT_NAMES, frozenset(OUTPUT_NAMES if binary_all else ())
    if not isinstance(raw, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        raise MalformedRequestError("'outputs' must be a list of {\"name\": ...}")
    names = tuple(o["name"] for o in raw)
    unknown = [n for n in names if n not in OUTPUT_NAMES]
    if unknown:
        raise UnknownOutputError(
            f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(OUTPUT_NAMES)}"
        )
    binary = set()
    for i, o in enumerate(raw):
        own = _flag(_parameters(o, f"outputs[{i}]"), "binary_data", f"outputs[{i}]")
        if own if own is not None else binary_all:
            binary.add(o["name"])
    return names, frozenset(binary)


def parse_top_k(raw: Any, spec: ModelSpec, limits: Limits) -> int:
    if raw is None or raw == "":
        return min(limits.default_top_k, spec.num_classes)
    try:
        k = int(raw)
    except (TypeError, ValueError) as exc:
        raise MalformedRequestError(f"X-Top-K {raw!r} is not a whole number") from exc
    if not 1 <= k <= spec.num_classes:
        raise MalformedRequestError(f"X-Top-K must be between 1 and {spec.num_classes}, got {k}")
    return k


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _unsupported(media: str) -> UnsupportedMediaTypeError:
    return UnsupportedMediaTypeError(
        f"content type {media} is not supported; send image/png, image/jpeg or application/json"
    )


def parse_request(
    payload: Any,
    spec: ModelSpec,
    limits: Limits,
    content_type: str | None = None,
    content_length: int | None = None,
    top_k: Any = None,
    request_id: str | None = None,
    binary_header: str | None = None,
) -> Request:
    """Turn one request body (bytes, decoded JSON or a multipart dict) into images.

    ``binary_header`` is the request's Inference-Header-Content-Length: the body is then a
    v2 JSON header of that many bytes followed by the inputs' binary data. A RequestError
    raised once the body is known to be v1 or v2 has that ``protocol``."""
    if content_length is not None and content_length > limits.max_payload_bytes:
        raise PayloadTooLargeError(
            f"body of {content_length} bytes is over the limit of {limits.max_payload_bytes}"
        )
    media = _media_type(content_type)
    if isinstance(payload, bytes | bytearray) and len(payload) > limits.max_payload_bytes:
        raise PayloadTooLargeError(
            f"body of {len(payload)} bytes is over the limit of {limits.max_payload_bytes}"
        )
    if payload is None or (isinstance(payload, bytes | bytearray | str) and len(payload) == 0):
        raise EmptyBodyError("empty body: send an image, or KServe v1/v2 JSON")
    if request_id:
        check_request_id(request_id, "X-Request-Id", limits)
    budget = limits.budget()
    if binary_header is not None:
        try:
            body, binary = _split_binary(payload, binary_header)
            k = parse_top_k(top_k, spec, limits)
            v2 = _parse_v2(body, spec, limits, budget, binary)
        except RequestError as err:
            err.protocol = "v2"
            raise
        return _v2_request(v2, request_id, k)
    if isinstance(payload, str):
        if media.startswith("text/"):
            raise _unsupported(media)
        payload = payload.encode()
    if isinstance(payload, bytes | bytearray):
        raw = bytes(payload)
        looks_json = raw.lstrip()[:1] in (b"{", b"[")
        if media == "application/json" or (looks_json and not media.startswith("image/")):
            try:
                payload = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise MalformedRequestError(f"body is not valid JSON: {exc}") from exc
            except RecursionError as exc:
                raise MalformedRequestError("body is nested too deeply") from exc
        elif media.startswith("text/"):
            raise _unsupported(media)
        else:
            k = parse_top_k(top_k, spec, limits)
            return Request(
                "raw", _decode(raw, "body", spec, budget)[None], request_id or new_request_id(), k
            )
    if isinstance(payload, list):
        raise MalformedRequestError(
            "a JSON body must be an object with 'instances' (v1) or 'inputs' (v2)"
        )
    if not isinstance(payload, dict):
        raise MalformedRequestError(f"unexpected body of type {type(payload).__name__}")
    k = parse_top_k(top_k, spec, limits)
    if "instances" in payload or (
        "inputs" in payload
        and isinstance(payload["inputs"], list)
        and not any(
            isinstance(x, dict) and {"name", "shape", "datatype", "data"} & set(x)
            for x in payload["inputs"]
        )
    ):
        try:
            images = np.stack(_parse_v1(payload, spec, limits, budget))
        except RequestError as err:
            err.protocol = "v1"
            raise
        return Request("v1", images, request_id or new_request_id(), k)
    if "inputs" in payload:
        try:
            v2 = _parse_v2(payload, spec, limits, budget)
        except RequestError as err:
            err.protocol = "v2"
            raise
        return _v2_request(v2, request_id, k)
    raise MalformedRequestError(
        "a JSON body needs 'instances' (KServe v1) or 'inputs' (KServe v2); "
        f"got keys {sorted(payload)[:5]}"
    )


def _v2_request(v2: V2Parsed, request_id: str | None, top_k: int) -> Request:
    rid = v2.request_id or request_id or new_request_id()
    return Request("v2", v2.images, rid, top_k, v2.outputs, v2.input_name,
                   binary_outputs=v2.binary_outputs)  # fmt: skip


def _split_binary(payload: Any, header: str) -> tuple[dict[str, Any], bytes]:
    """A binary tensor data body: its JSON header (decoded) and the binary data after it."""
    if not header.strip().isdigit():
        raise MalformedRequestError(f"{BINARY_HEADER} {header[:40]!r} is not a whole number")
    length = int(header)
    if isinstance(payload, dict):  # decoded by the server: nothing but JSON was sent
        return payload, b""
    if isinstance(payload, str):
        payload = payload.encode()
    if not isinstance(payload, bytes | bytearray):
        raise MalformedRequestError(f"unexpected body of type {type(payload).__name__}")
    raw = bytes(payload)
    if length > len(raw):
        raise MalformedRequestError(
            f"{BINARY_HEADER} is {length:,}, beyond the body's {len(raw):,} bytes"
        )
    try:
        body = json.loads(raw[:length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequestError(
            f"the body's first {length:,} bytes ({BINARY_HEADER}) are not valid JSON: {exc}"
        ) from exc
    except RecursionError as exc:
        raise MalformedRequestError("body is nested too deeply") from exc
    if not isinstance(body, dict) or "inputs" not in body:
        raise MalformedRequestError(
            f"with {BINARY_HEADER}, the JSON header must be a KServe v2 request with 'inputs'"
        )
    return body, raw[length:]


def pick_upload(fields: dict[str, Any]) -> tuple[Any, str | None]:
    """The image of a multipart upload: the field named data/file/image, else the only file."""
    for name in IMAGE_FILE_FIELDS:
        if name in fields:
            return fields[name], None
    files = [v for v in fields.values() if isinstance(v, bytes | bytearray)]
    if len(files) == 1:
        return files[0], None
    raise MalformedRequestError(
        f"multipart upload: send one file field named {', '.join(IMAGE_FILE_FIELDS[:3])}; "
        f"got fields {sorted(fields)[:5]}"
    )


def describe(spec: ModelSpec, probs: np.ndarray, top_k: int) -> dict[str, Any]:
    order = np.argsort(-probs, kind="stable")[: max(1, min(top_k, len(probs)))]
    best = int(order[0])
    return {
        "label": spec.class_names[best],
        "class_id": best,
        "confidence": float(probs[best]),
        "top_k": [
            {"label": spec.class_names[int(i)], "class_id": int(i), "probability": float(probs[i])}
            for i in order
        ],
    }


def _binary_bytes(values: list[str]) -> bytes:
    """BYTES elements in binary: each a 4-byte little-endian length, then its bytes."""
    out = bytearray()
    for value in values:
        raw = value.encode()
        out += struct.pack("<I", len(raw)) + raw
    return bytes(out)


def format_answer(req: Request, probs: np.ndarray, spec: ModelSpec) -> tuple[dict[str, Any], bytes]:
    """The answer to one parsed request, given its (n, classes) probabilities: the JSON body
    and, for v2 outputs asked for in binary, the bytes that follow it (else b"")."""
    if req.protocol == "raw":
        body = {
            **describe(spec, probs[0], req.top_k),
            "model_version": spec.version,
            "request_id": req.request_id,
        }
        return body, b""
    if req.protocol == "v1":
        return {"predictions": [describe(spec, p, req.top_k) for p in probs]}, b""
    outputs = []
    binary = bytearray()
    for name in req.outputs:
        tensor: dict[str, Any]
        if name == "probabilities":
            tensor = {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape)}
            if name in req.binary_outputs:
                raw = np.ascontiguousarray(probs, dtype="<f4").tobytes()
            else:
                tensor["data"] = [float(x) for x in probs.reshape(-1)]
        else:
            labels = [spec.class_names[int(i)] for i in probs.argmax(axis=1)]
            tensor = {"name": "label", "datatype": "BYTES", "shape": [len(probs)]}
            if name in req.binary_outputs:
                raw = _binary_bytes(labels)
            else:
                tensor["data"] = labels
        if name in req.binary_outputs:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binary += raw
        outputs.append(tensor)
    body = {
        "model_name": spec.name,
        "model_version": spec.version,
        "id": req.request_id,
        "outputs": outputs,
    }
    return body, bytes(binary)


def format_response(req: Request, probs: np.ndarray, spec: ModelSpec) -> dict[str, Any]:
    """The JSON body of ``format_answer`` (binary outputs are described, not included)."""
    return format_answer(req, probs, spec)[0]
