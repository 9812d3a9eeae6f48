"""Open Inference Protocol health, metadata and versioned routes on both runtimes, judged by
the standard clients: tritonclient[http] and the kserve SDK's InferenceRESTClient.

On TorchServe every GET route here is answered by the OIP front (atelier.serving.oip_front)
and every inference request forwarded through it; on the KServe runtime by its own routes.
Both answer from atelier.runtime.oip, so the same assertions hold on both. The metadata is
checked against what the server really takes: the advertised input infers as advertised,
and each output comes back with the advertised datatype and shape.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

import atelier
from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.training.archive import ArchiveResult
from atelier.training.loop import RunResult

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
N = 16


@pytest.fixture(scope="module")
def clf(smoke_run: RunResult) -> Classifier:
    return Classifier.from_dir(smoke_run.run_dir)


@pytest.fixture(scope="module")
def batch(test_images: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """16 real test images, uint8 (16, 1, 28, 28)."""
    return test_images[0][:N]


@pytest.fixture(scope="module")
def expected(clf: Classifier, batch: np.ndarray) -> np.ndarray:
    return clf.predict_proba(batch).argmax(axis=1)


@pytest.fixture(scope="module")
def version(smoke_store: ArchiveResult) -> str:
    return smoke_store.version


@pytest.fixture(scope="module")
def client(server: Any) -> triton.InferenceServerClient:
    host = server.inference_url.removeprefix("http://")
    return triton.InferenceServerClient(url=host, connection_timeout=60, network_timeout=60)


# --- tritonclient ---------------------------------------------------------------------------


def test_server_is_live_ready_and_says_what_it_speaks(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert client.get_server_metadata() == {
        "name": "atelier",
        "version": atelier.__version__,
        "extensions": ["binary_tensor_data"],
    }


def test_model_is_ready_in_the_served_version_only(
    client: triton.InferenceServerClient, version: str
) -> None:
    assert client.is_model_ready(MODEL) is True
    assert client.is_model_ready(MODEL, version) is True
    assert client.is_model_ready(MODEL, "999") is False
    assert client.is_model_ready("nope") is False


def test_model_metadata_with_and_without_the_version(
    client: triton.InferenceServerClient, version: str, clf: Classifier
) -> None:
    meta = client.get_model_metadata(MODEL)
    assert client.get_model_metadata(MODEL, version) == meta
    assert (meta["name"], meta["versions"], meta["platform"]) == (MODEL, [version], "pytorch")
    assert meta["inputs"] == [{"name": "input-0", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, clf.spec.num_classes]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["parameters"]["input_datatypes"] == "UINT8,FP32,BYTES"


@pytest.mark.parametrize(
    ("name", "model_version", "needle"),
    [("nope", "", "'nope' is not served here"), (MODEL, "999", "no version '999'")],
)
def test_unknown_model_or_version_raises_the_servers_message(
    client: triton.InferenceServerClient, name: str, model_version: str, needle: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata(name, model_version)
    assert info.value.status() == "404"
    assert needle in info.value.message(), info.value.message()


def test_the_advertised_input_infers_into_the_advertised_outputs(
    client: triton.InferenceServerClient, version: str, batch: np.ndarray, expected: np.ndarray
) -> None:
    """What a generic client builds from the metadata alone, on the versioned route."""
    meta = client.get_model_metadata(MODEL, version)
    spec = meta["inputs"][0]
    shape = [N if d == -1 else d for d in spec["shape"]]
    inp = triton.InferInput(spec["name"], shape, spec["datatype"])
    inp.set_data_from_numpy(batch.reshape(shape).astype(triton_to_np_dtype(spec["datatype"])))
    outputs = [triton.InferRequestedOutput(o["name"]) for o in meta["outputs"]]
    result = client.infer(MODEL, [inp], model_version=version, outputs=outputs)
    assert result.get_response()["model_version"] == version
    for out in meta["outputs"]:
        got = result.as_numpy(out["name"])
        assert got is not None
        assert list(got.shape) == [N if d == -1 else d for d in out["shape"]]
        assert got.dtype == np.dtype(triton_to_np_dtype(out["datatype"]))
    probs = result.as_numpy("probabilities")
    assert probs is not None and (probs.argmax(axis=1) == expected).all()


def test_infer_on_another_version_raises_the_servers_404(
    client: triton.InferenceServerClient, batch: np.ndarray
) -> None:
    inp = triton.InferInput("input-0", [1, 28, 28], "UINT8")
    inp.set_data_from_numpy(batch[:1, 0])
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [inp], model_version="999")
    assert info.value.status() == "404"
    assert "no version '999'" in info.value.message()


# --- the kserve SDK's InferenceRESTClient ---------------------------------------------------


def run_kserve(server: Any, protocol: str, scenario: Callable[[Any, str], Awaitable[None]]) -> None:
    """``scenario(client, base_url)`` with a kserve InferenceRESTClient for ``protocol``."""
    from kserve import InferenceRESTClient, RESTConfig

    async def main() -> None:
        config = RESTConfig(protocol=protocol, timeout=60, retries=0)
        async with InferenceRESTClient(config) as kclient:
            await scenario(kclient, server.inference_url)

    asyncio.run(main())


def test_kserve_client_health_v2_and_v1(server: Any) -> None:
    import httpx

    async def v2(kclient: Any, base: str) -> None:
        assert await kclient.is_server_live(base) is True
        assert await kclient.is_server_ready(base) is True
        assert await kclient.is_model_ready(base, MODEL) is True
        assert await kclient.is_model_ready(base, "nope") is False

    async def v1(kclient: Any, base: str) -> None:
        assert await kclient.is_server_live(base) is True
        assert await kclient.is_model_ready(base, MODEL) is True
        with pytest.raises(httpx.HTTPStatusError) as info:
            await kclient.is_model_ready(base, "nope")
        assert info.value.response.status_code == 404
        assert "'nope' is not served here" in str(info.value)

    run_kserve(server, "v2", v2)
    run_kserve(server, "v1", v1)


def _kserve_input(batch: np.ndarray, datatype: str, binary: bool) -> Any:
    from kserve import InferInput

    if datatype == "BYTES":
        pngs = [encode_png(img[0]) for img in batch]
        values = pngs if binary else [base64.b64encode(p).decode() for p in pngs]
        arr = np.array(values, dtype=np.object_)
    else:
        arr = batch.astype(np.float32) / 255.0 if datatype == "FP32" else batch
    inp = InferInput(f"images-{datatype.lower()}", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", ["UINT8", "FP32", "BYTES"])
def test_kserve_client_infers_every_datatype_in_json_and_binary(
    server: Any, batch: np.ndarray, expected: np.ndarray, datatype: str, binary: bool
) -> None:
    from kserve import InferRequest
    from kserve.protocol.infer_type import RequestedOutput

    async def scenario(kclient: Any, base: str) -> None:
        outputs = [
            RequestedOutput(name, {"binary_data": binary}) for name in ("probabilities", "label")
        ]
        inputs = [_kserve_input(batch, datatype, binary)]
        request = InferRequest(MODEL, inputs, f"kserve-{datatype}", request_outputs=outputs)
        response = await kclient.infer(base, request, model_name=MODEL)
        assert response.id == f"kserve-{datatype}"
        out = {o.name: o for o in response.outputs}
        probs = out["probabilities"].as_numpy()
        assert probs.shape == (N, 10) and (probs.argmax(axis=1) == expected).all()
        labels = [v.decode() if isinstance(v, bytes) else v for v in out["label"].as_numpy()]
        assert len(labels) == N

    run_kserve(server, "v2", scenario)


def test_kserve_client_reads_the_servers_errors(server: Any) -> None:
    import httpx
    from kserve import InferInput, InferRequest

    async def scenario(kclient: Any, base: str) -> None:
        bad = InferInput("input-0", [1, 28, 27], "UINT8")
        bad.set_data_from_numpy(np.zeros((1, 28, 27), np.uint8), binary_data=True)
        with pytest.raises(httpx.HTTPStatusError) as info:
            await kclient.infer(base, InferRequest(MODEL, [bad]), model_name=MODEL)
        assert info.value.response.status_code == 400
        assert info.value.response.headers["X-Atelier-Error"] == "wrong_shape"
        assert "shape [1, 28, 27], expected" in str(info.value)
        good = InferInput("input-0", [1, 28, 28], "UINT8")
        good.set_data_from_numpy(np.zeros((1, 28, 28), np.uint8), binary_data=False)
        with pytest.raises(httpx.HTTPStatusError) as info:
            await kclient.infer(base, InferRequest("nope", [good]), model_name="nope")
        assert info.value.response.status_code == 404
        assert "'nope' is not served here" in str(info.value)

    run_kserve(server, "v2", scenario)
