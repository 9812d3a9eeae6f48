"""support.nginx: a real nginx in front of tiny HTTP upstreams that answer their own name.
Round-robin alternates, a stripped prefix route reaches the other group, a POST body
arrives intact and once, and a failed POST is not passed to the other upstream."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from support.nginx import NginxProxy

pytestmark = pytest.mark.integration  # a real nginx on 127.0.0.1 (pyproject's markers)


class Upstream(ThreadingHTTPServer):
    """Answers every request with its name, the path it got and what the body hashed to."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.seen: list[tuple[str, str]] = []  # (method, path)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keepalive, as nginx's upstream connections use it
    disable_nagle_algorithm = True
    server: Upstream

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path))
        reply = json.dumps(
            {
                "name": self.server.name,
                "path": self.path,
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstreams() -> Iterator[dict[str, Upstream]]:
    servers = {name: Upstream(name) for name in ("ts1", "ts2", "drift1", "drift2")}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture
def lb(upstreams: dict[str, Upstream]) -> Iterator[NginxProxy]:
    routes = {
        "/": [upstreams["ts1"].address, upstreams["ts2"].address],
        "/drift/": [f"http://{upstreams['drift1'].address}", upstreams["drift2"].address],
    }
    with NginxProxy(routes, strip_prefix={"/drift/"}) as proxy:
        yield proxy


def test_round_robin_alternates_between_both_upstreams(
    lb: NginxProxy, upstreams: dict[str, Upstream]
) -> None:
    answers = [requests.get(f"{lb.url}/predictions/fashion", timeout=5).json() for _ in range(6)]

    names = [a["name"] for a in answers]
    assert set(names) == {"ts1", "ts2"}
    assert all(a != b for a, b in itertools.pairwise(names)), names
    assert {a["path"] for a in answers} == {"/predictions/fashion"}  # passed as is
    # The access log says which upstream answered, in order.
    by_address = {u.address: name for name, u in upstreams.items()}
    assert [by_address[e.upstream] for e in lb.entries()] == names


def test_the_prefix_route_strips_and_reaches_the_other_group(
    lb: NginxProxy, upstreams: dict[str, Upstream]
) -> None:
    answers = [requests.get(f"{lb.url}/drift/feedback?id=7", timeout=5).json() for _ in range(2)]
    assert sorted(a["name"] for a in answers) == ["drift1", "drift2"]
    assert {a["path"] for a in answers} == {"/feedback?id=7"}
    assert upstreams["ts1"].seen == upstreams["ts2"].seen == []
    assert [e.uri for e in lb.entries()] == ["/drift/feedback?id=7"] * 2  # as the client sent


def test_a_post_body_arrives_intact_and_once(
    lb: NginxProxy, upstreams: dict[str, Upstream]
) -> None:
    body = os.urandom(3 * 1024 * 1024)  # larger than nginx's in-memory body buffer
    answer = requests.post(f"{lb.url}/v2/models/fashion/infer", data=body, timeout=10).json()

    assert answer["length"] == len(body)
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    posts = [s for u in upstreams.values() for s in u.seen if s[0] == "POST"]
    assert posts == [("POST", "/v2/models/fashion/infer")]


def test_a_failed_post_is_not_sent_to_the_other_upstream(
    lb: NginxProxy, upstreams: dict[str, Upstream]
) -> None:
    upstreams["ts2"].close()

    statuses = [
        requests.post(f"{lb.url}/v1/models/fashion:predict", data=b"{}", timeout=5).status_code
        for _ in range(2)
    ]

    assert sorted(statuses) == [200, 502]
    assert upstreams["ts1"].seen == [("POST", "/v1/models/fashion:predict")]


@pytest.mark.parametrize(
    ("routes", "strip", "message"),
    [
        ({"/": ["127.0.0.1:1/v1"]}, (), "host:port"),
        ({"/": ["127.0.0.1:1"]}, ("/drift/",), "names no route"),
        ({"v1": ["127.0.0.1:1"]}, (), "starting with /"),
        ({"/": []}, (), "some upstreams"),
    ],
)
def test_bad_routes_are_refused_before_anything_starts(
    routes: dict[str, list[str]], strip: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        NginxProxy(routes, strip_prefix=strip)
