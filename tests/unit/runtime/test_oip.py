"""Tests for atelier.runtime.oip (health and metadata answers) and ModelSpec.from_mar: what
every runtime says about itself, and that it is what the parser really accepts."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from atelier.runtime import oip, protocol
from atelier.runtime.preprocess import encode_png
from atelier.runtime.protocol import Limits, parse_request
from atelier.runtime.spec import MODEL_CONFIG_FILE, ModelSpec
from support.mars import SPEC, write_mar

pytestmark = pytest.mark.unit


def route(path: str) -> oip.Route:
    return next(r for r in oip.ROUTES if r.path == path)


# --- the spec, from the archive ----------------------------------------------------------


def test_the_spec_comes_from_the_mar_with_the_manifests_version(tmp_path: Path) -> None:
    mar = write_mar(tmp_path / "m.mar", SPEC, manifest_version="7")
    spec = ModelSpec.from_mar(mar)
    assert spec.version == "7"
    assert (spec.name, spec.in_channels, spec.image_size, spec.num_classes) == ("m", 1, 28, 10)
    assert spec.class_names == SPEC.class_names
    assert ModelSpec.from_mar(write_mar(tmp_path / "n.mar", SPEC)).version == "3"


@pytest.mark.parametrize("case", ["not a zip", "no model config", "incomplete config"])
def test_an_unreadable_mar_is_a_valueerror_naming_it(tmp_path: Path, case: str) -> None:
    mar = tmp_path / "bad.mar"
    if case == "not a zip":
        mar.write_bytes(b"PK but not really")
    else:
        with zipfile.ZipFile(mar, "w") as z:
            if case == "incomplete config":
                z.writestr(MODEL_CONFIG_FILE, json.dumps({"arch": "compact"}))
            else:
                z.writestr("weights.pt", b"")
    with pytest.raises(ValueError, match=r"bad\.mar"):
        ModelSpec.from_mar(mar)


def test_metadata_and_spec_import_neither_torch_nor_numpy() -> None:
    """The OIP front is a light process: it answers metadata without torch."""
    code = (
        "import sys, atelier.runtime.oip, atelier.runtime.spec, atelier.serving.oip_front; "
        "heavy = {'torch', 'numpy', 'PIL'} & set(sys.modules); assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- the answers --------------------------------------------------------------------------


def test_server_metadata_names_the_extensions_the_parser_speaks() -> None:
    status, body, headers = oip.answer(route("/v2"), SPEC, False, "1.2.3")
    assert status == 200 and headers == {}
    assert body == {"name": "atelier", "version": "1.2.3", "extensions": ["binary_tensor_data"]}
    assert protocol.BINARY_HEADER is oip.BINARY_HEADER


def test_model_metadata_describes_what_is_answered() -> None:
    status, meta, _ = oip.answer(route("/v2/models/{model_name}"), SPEC, False, "1", "m")
    assert status == 200
    assert (meta["name"], meta["versions"], meta["platform"]) == ("m", ["3"], "pytorch")
    assert meta["inputs"] == [{"name": "input-0", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    assert [o["name"] for o in meta["outputs"]] == list(protocol.OUTPUT_NAMES)
    assert all(isinstance(v, str) for v in meta["parameters"].values())


def _tensor(name: str, datatype: str, shape: list[int], n: int) -> dict[str, object]:
    shape = [n if d == -1 else d for d in shape]
    pixels = np.zeros((n, 28, 28), np.uint8)
    if datatype == "BYTES":
        data: list[object] = [base64.b64encode(encode_png(p)).decode() for p in pixels]
    else:
        data = pixels.reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def test_the_advertised_input_and_every_listed_datatype_parse() -> None:
    """The metadata is the parser's truth: its input as advertised, and each datatype the
    parameters list (in each shape they name), under any name."""
    meta = oip.model_metadata(SPEC)
    advertised = meta["inputs"][0]
    req = parse_request({"inputs": [_tensor(advertised["name"], advertised["datatype"],
                                            advertised["shape"], 2)]}, SPEC, Limits())  # fmt: skip
    assert req.images.shape == (2, 1, 28, 28)
    params = meta["parameters"]
    assert params["input_datatypes"].split(",") == list(protocol.V2_DATATYPES)
    for datatype in protocol.V2_DATATYPES:
        text = params[f"input_{datatype}"]
        shapes = [[-1, 1, 28, 28], [-1, 28, 28]] if datatype != "BYTES" else [[-1], [-1, 1]]
        for shape in shapes:
            assert str(shape) in text, (datatype, text)
            if datatype == "FP32":
                body = {"inputs": [{**_tensor("any-name", "UINT8", shape, 3), "datatype": "FP32"}]}
            else:
                body = {"inputs": [_tensor("any-name", datatype, shape, 3)]}
            assert parse_request(body, SPEC, Limits()).images.shape == (3, 1, 28, 28)


def test_three_channel_models_advertise_no_two_dimensional_shape() -> None:
    rgb = ModelSpec(**{**SPEC.__dict__, "in_channels": 3, "image_size": 32})
    meta = oip.model_metadata(rgb)
    assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
    assert meta["parameters"]["input_UINT8"] == "shape [-1, 3, 32, 32], pixel values 0-255"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/", {"status": "alive"}),
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        ("/v2/models", {"models": ["m"]}),
        ("/v1/models", {"models": ["m"]}),
    ],
)
def test_server_routes(path: str, body: dict[str, object]) -> None:
    assert oip.answer(route(path), SPEC, True, "1") == (200, body, {})


MODEL_ROUTES = [r for r in oip.ROUTES if "{model_name}" in r.path]


@pytest.mark.parametrize("r", MODEL_ROUTES, ids=[r.path for r in MODEL_ROUTES])
def test_model_routes_answer_for_the_served_model_and_version_only(r: oip.Route) -> None:
    version = "3" if "{model_version}" in r.path else None
    status, body, _ = oip.answer(r, SPEC, True, "1", "m", version)
    assert status == 200 and body["name"] == "m"
    wrong = [("other", version)] + ([("m", "4")] if version else [])
    for name, v in wrong:
        status, body, headers = oip.answer(r, SPEC, True, "1", name, v)
        assert status == 404 and headers == {"X-Atelier-Error": "model_not_found"}
        message = body["error"] if r.path.startswith("/v2") else body["error"]["message"]
        assert (repr(v) if name == "m" else repr(name)) in message, message


@pytest.mark.parametrize("r", [r for r in oip.ROUTES if r.needs_ready], ids=lambda r: r.path)
def test_a_model_not_ready_is_a_503_on_the_ready_routes(r: oip.Route) -> None:
    name = "m" if "{model_name}" in r.path else None
    version = "3" if "{model_version}" in r.path else None
    status, body, headers = oip.answer(r, SPEC, False, "1", name, version)
    assert status == 503 and headers == {"X-Atelier-Error": "model_not_ready"}
    if r.path.startswith("/v2"):
        assert body == {"error": "model 'm' version '3' is not ready yet"}
    else:
        assert body["error"]["type"] == "model_not_ready"


def test_only_the_ready_routes_read_readiness() -> None:
    assert {r.path for r in oip.ROUTES if r.needs_ready} == {
        "/v2/health/ready",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/versions/{model_version}/ready",
        "/v1/models/{model_name}",
    }
    for r in oip.ROUTES:
        if not r.needs_ready:
            name = "m" if "{model_name}" in r.path else None
            assert oip.answer(r, SPEC, False, "1", name)[0] == 200, r.path
