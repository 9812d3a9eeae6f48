"""The OIP front in front of the session's real TorchServe: what it forwards arrives as sent,
and TorchServe's answers come back as TorchServe wrote them. (Its health and metadata
answers are judged by the standard clients in test_oip_metadata.py; every other TorchServe
test goes through it too.)"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from atelier.runtime.preprocess import encode_png
from atelier.tools.torchserve import TorchServe

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
# Answer headers that differ between two answers to the same request.
PER_ANSWER = {"date", "server", "x-request-id", "connection", "content-length"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def png(test_images: tuple[np.ndarray, np.ndarray]) -> bytes:
    return encode_png(test_images[0][3, 0])


def same_answer(a: requests.Response, b: requests.Response) -> None:
    assert (a.status_code, a.reason) == (b.status_code, b.reason)
    assert a.content == b.content
    heads = [{k.lower(): v for k, v in r.headers.items() if k.lower() not in PER_ANSWER}
             for r in (a, b)]  # fmt: skip
    assert heads[0] == heads[1]


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (f"/predictions/{MODEL}", "png", {"Content-Type": "image/png", "X-Top-K": "3"}),
        (f"/predictions/{MODEL}", b"not an image", {"Content-Type": "image/png"}),
        (f"/v1/models/{MODEL}:predict", b'{"instances": "x"}', JSON),
        (f"/v2/models/{MODEL}/infer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8",'
         b' "data": [1]}]}', JSON),
        (f"/models/{MODEL}", b"", {}),
        ("/nope", b"", {}),
    ],
    ids=["raw", "raw-error", "v1-error", "v2-error", "torchserve-route", "unknown-route"],
)  # fmt: skip
def test_answers_through_the_front_are_torchserves_byte_for_byte(
    torchserve_server: TorchServe, png: bytes, path: str, body: bytes | str, headers: dict[str, str]
) -> None:
    """The same request, with the same X-Request-Id, to TorchServe and through the front."""
    data = png if body == "png" else body
    method = "POST" if data else "GET"
    answers = [
        requests.request(method, base + path, data=data, timeout=60,
                         headers={**headers, "X-Request-Id": "front-same-1"})
        for base in (torchserve_server.torchserve_url, torchserve_server.inference_url)
    ]  # fmt: skip
    same_answer(*answers)
    if path.startswith("/predictions") and body == "png":
        answer = answers[1].json()
        assert answer["request_id"] == "front-same-1" and len(answer["top_k"]) == 3
    if answers[0].status_code == 400:
        assert answers[1].headers["X-Atelier-Error"]


def test_a_chunked_body_is_forwarded(torchserve_server: TorchServe, png: bytes) -> None:
    def chunks() -> Iterator[bytes]:
        yield png[:10]
        yield png[10:]

    r = requests.post(f"{torchserve_server.inference_url}/predictions/{MODEL}", data=chunks(),
                      headers={"Content-Type": "image/png"}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["label"]


def _expect(torchserve_server: TorchServe, length: int, body: bytes | None) -> tuple[int, bytes]:
    """POST with Expect: 100-continue; the body is sent only after 100 Continue."""
    conn = http.client.HTTPConnection("127.0.0.1", torchserve_server.s.inference_port, timeout=30)
    try:
        conn.putrequest("POST", f"/predictions/{MODEL}")
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", str(length))
        conn.putheader("Expect", "100-continue")
        conn.endheaders()
        assert conn.sock is not None
        if body is not None:
            interim = conn.sock.recv(64)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
            conn.sock.sendall(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_expect_100_continue_as_on_torchserve(torchserve_server: TorchServe, png: bytes) -> None:
    """Over max_request_size (8 MiB in config.properties): TorchServe's bare 413 before the
    body is sent. Under it: 100 Continue, then the answer."""
    assert _expect(torchserve_server, 9 * 1024 * 1024, None) == (413, b"")
    status, body = _expect(torchserve_server, len(png), png)
    assert status == 200 and json.loads(body)["label"]


def test_the_front_and_torchserve_listen_where_the_launcher_says(
    torchserve_server: TorchServe,
) -> None:
    assert torchserve_server.inference_url != torchserve_server.torchserve_url
    ping = requests.get(f"{torchserve_server.torchserve_url}/ping", timeout=10)
    assert ping.json() == {"status": "Healthy"}
    assert requests.get(f"{torchserve_server.torchserve_url}/v2", timeout=10).status_code == 404
    assert requests.get(f"{torchserve_server.inference_url}/v2", timeout=10).status_code == 200
