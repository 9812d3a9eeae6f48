"""The Open Inference Protocol's health and metadata answers: the same on every runtime.

What a server says about itself and its model is written here once, and both runtimes route
the paths of ``ROUTES`` to ``answer`` (the KServe runtime on its FastAPI app, TorchServe
through the OIP front, atelier.serving.oip_front):

- server metadata (``GET /v2``): name ``atelier``, atelier's version, the extensions it
  speaks: ``binary_tensor_data`` (atelier.runtime.protocol parses and answers it);
- health: ``/v2/health/live`` (the process answers), ``/v2/health/ready`` (the one model is
  ready), ``/v2/models/M[/versions/V]/ready``; KServe v1's ``GET /`` (alive),
  ``GET /v1/models`` and ``GET /v1/models/M`` (ready);
- model metadata (``/v2/models/M[/versions/V]``): ``versions`` = the served version,
  ``platform`` ``pytorch`` (the .mar holds a state dict and the model's code, run eagerly
  by PyTorch: not TorchScript, Triton's ``pytorch_libtorch``), the outputs exactly as
  answered, and the input a generic client can send as advertised: ``input-0``, ``UINT8``
  ``[-1, C, H, W]``. The parser accepts more than one tensor description can say (any
  input name; ``FP32``; ``[-1, H, W]`` for one channel; ``BYTES`` of encoded images), so
  the metadata's ``parameters`` spell out every accepted form (string values, as OIP's
  ``$parameters`` hold).

A versioned route answers for the served version only; any other version, or another
model's name, is a 404 ``model_not_found``; a model that is not ready a 503
``model_not_ready``. Error bodies are ``errors.http_answer``'s: ``{"error": "<message>"}``
on v2, ``{"error": {"type", "message"}}`` on v1, with ``X-Atelier-Error``.

Only the standard library and atelier.runtime's ``errors`` and ``spec`` are imported (no
torch, no numpy), so a light process (the OIP front) can answer these routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atelier.runtime.errors import (
    AtelierError,
    ModelNotFoundError,
    ModelNotReadyError,
    http_answer,
)
from atelier.runtime.spec import ModelSpec

SERVER_NAME = "atelier"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "pytorch"
# The input name the metadata advertises; the parser takes the one input under any name.
INPUT_NAME = "input-0"
# What the v2 parser accepts and answers (atelier.runtime.protocol imports these).
V2_DATATYPES = ("UINT8", "FP32", "BYTES")
OUTPUT_NAMES = ("probabilities", "label")
# The header that says where the JSON of a binary tensor data request or answer ends.
BINARY_HEADER = "Inference-Header-Content-Length"

Answer = tuple[int, dict[str, Any], dict[str, str]]


@dataclass(frozen=True)
class Route:
    """A GET route: the path (Starlette and aiohttp both read ``{model_name}`` and
    ``{model_version}``) and what it answers."""

    path: str
    kind: str

    @property
    def needs_ready(self) -> bool:
        return self.kind in ("server_ready", "model_ready", "v1_model")


ROUTES: tuple[Route, ...] = (
    Route("/", "v1_live"),
    Route("/v1/models", "models"),
    Route("/v1/models/{model_name}", "v1_model"),
    Route("/v2", "server_metadata"),
    Route("/v2/health/live", "server_live"),
    Route("/v2/health/ready", "server_ready"),
    Route("/v2/models", "models"),
    Route("/v2/models/{model_name}", "model_metadata"),
    Route("/v2/models/{model_name}/versions/{model_version}", "model_metadata"),
    Route("/v2/models/{model_name}/ready", "model_ready"),
    Route("/v2/models/{model_name}/versions/{model_version}/ready", "model_ready"),
)


def route_protocol(path: str) -> str:
    """The protocol whose error body a path gets: "v2", "v1", or "raw"."""
    return "v2" if path.startswith("/v2") else "v1" if path.startswith("/v1") else "raw"


def server_metadata(server_version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": server_version, "extensions": list(EXTENSIONS)}


def _shapes(spec: ModelSpec) -> str:
    c, s = spec.in_channels, spec.image_size
    chw = f"[-1, {c}, {s}, {s}]"
    return f"{chw} or [-1, {s}, {s}]" if c == 1 else chw


def model_inputs(spec: ModelSpec) -> list[dict[str, Any]]:
    """The input as a client should send it: pixels, one byte each, batch first."""
    shape = [-1, spec.in_channels, spec.image_size, spec.image_size]
    return [{"name": INPUT_NAME, "datatype": "UINT8", "shape": shape}]


def model_outputs(spec: ModelSpec) -> list[dict[str, Any]]:
    """The outputs every v2 answer holds (atelier.runtime.protocol.format_answer)."""
    return [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, spec.num_classes]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]


def input_rules(spec: ModelSpec) -> dict[str, str]:
    """Every input form the parser accepts, beyond the one tensor ``inputs`` describes."""
    shapes = _shapes(spec)
    return {
        "input_name": "any: the one input tensor may have any name",
        "input_datatypes": ",".join(V2_DATATYPES),
        "input_UINT8": f"shape {shapes}, pixel values 0-255",
        "input_FP32": f"shape {shapes}, pixel values 0-1",
        "input_BYTES": "shape [-1] or [-1, 1], each element an encoded image (PNG or JPEG): "
        "the file's bytes with the binary tensor data extension, base64 text in JSON",
    }


def model_metadata(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "versions": [spec.version],
        "platform": PLATFORM,
        "inputs": model_inputs(spec),
        "outputs": model_outputs(spec),
        "parameters": input_rules(spec),
    }


def check_model(spec: ModelSpec, name: str, version: str | None = None) -> None:
    """Raise ModelNotFoundError unless ``name`` (and ``version``, when given) is served."""
    if name != spec.name:
        raise ModelNotFoundError(
            f"model {name!r} is not served here; this server serves {spec.name!r}"
        )
    if version is not None and version != spec.version:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r} here; the served version is "
            f"{spec.version!r}"
        )


def not_ready(spec: ModelSpec) -> ModelNotReadyError:
    return ModelNotReadyError(f"model {spec.name!r} version {spec.version!r} is not ready yet")


def answer(
    route: Route,
    spec: ModelSpec,
    ready: bool,
    server_version: str,
    model_name: str | None = None,
    model_version: str | None = None,
) -> Answer:
    """(status, JSON body, headers) of a GET route. ``ready``: the model can answer now
    (read only for routes that ``needs_ready``)."""
    try:
        if model_name is not None:
            check_model(spec, model_name, model_version)
        if route.needs_ready and not ready:
            raise not_ready(spec)
        return 200, _body(route.kind, spec, server_version), {}
    except AtelierError as err:
        return http_answer(err, route_protocol(route.path))


def _body(kind: str, spec: ModelSpec, server_version: str) -> dict[str, Any]:
    if kind == "v1_live":
        return {"status": "alive"}
    if kind == "models":
        return {"models": [spec.name]}
    if kind in ("v1_model", "model_ready"):
        return {"name": spec.name, "ready": True}
    if kind == "server_metadata":
        return server_metadata(server_version)
    if kind == "server_live":
        return {"live": True}
    if kind == "server_ready":
        return {"ready": True}
    if kind == "model_metadata":
        return model_metadata(spec)
    raise ValueError(f"unknown route kind {kind!r}")
