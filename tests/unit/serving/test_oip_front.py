"""Tests for atelier.serving.oip_front without TorchServe: its settings, its answers when
TorchServe cannot be reached (a real front on 127.0.0.1, in this process), and the
supervisor (``--launch``) as a real process. Forwarding to a real TorchServe is tested in
tests/integration/test_oip_front.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from atelier.runtime.errors import ConfigError
from atelier.serving.oip_front import TORCHSERVE_MAX_REQUEST_SIZE, Front, FrontSettings
from atelier.tools.process import free_port
from support.mars import SPEC, store_with_mar

pytestmark = pytest.mark.unit


# --- settings -----------------------------------------------------------------------------


def test_torchserves_addresses_and_limit_come_from_its_own_env_and_config(tmp_path: Path) -> None:
    store = store_with_mar(tmp_path, config="# comment\nmax_request_size=1234\n")
    env = {
        "TS_INFERENCE_ADDRESS": "http://127.0.0.1:9085",
        "TS_MANAGEMENT_ADDRESS": "http://127.0.0.1:9081/",
    }
    s = FrontSettings.from_args(["--store", str(store)], env)
    assert (s.model_name, s.upstream, s.management) == (
        "m",
        "http://127.0.0.1:9085",
        "http://127.0.0.1:9081",
    )
    assert s.max_request_size == 1234 and s.launch == ()
    s = FrontSettings.from_args(["--store", str(store)], {"TS_MAX_REQUEST_SIZE": "99"})
    assert (s.upstream, s.max_request_size) == ("http://127.0.0.1:8085", 99)
    s = FrontSettings.from_args(["--store", str(store_with_mar(tmp_path / "bare"))], {})
    assert s.max_request_size == TORCHSERVE_MAX_REQUEST_SIZE
    s = FrontSettings.from_args(
        ["--store", str(store), "--port", "9", "--launch", "--", "torchserve", "--start"], {}
    )
    assert s.port == 9 and s.launch == ("torchserve", "--start")
    assert s.mar == store.resolve() / "model-store" / "m.mar"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--upstream", "127.0.0.1:8085"], {}, "--upstream '127.0.0.1:8085': expected http://HOST:PORT"),
        (["--management", "http://h:99999"], {}, "--management 'http://h:99999'"),
        ([], {"TS_INFERENCE_ADDRESS": "https://x:1"}, "expected http://HOST:PORT"),
        ([], {"TS_MAX_REQUEST_SIZE": "8M"}, "TS_MAX_REQUEST_SIZE: max_request_size '8M'"),
        (["--model-name", "other"], {}, "other.mar does not exist"),
        (["--launch"], {}, "--launch: name the command"),
        (["--launch", "--"], {}, "--launch: name the command"),
    ],
)  # fmt: skip
def test_bad_settings_are_config_errors_naming_them(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    store = store_with_mar(tmp_path)
    with pytest.raises(ConfigError) as info:
        FrontSettings.from_args(["--store", str(store), *args], env)
    assert needle in info.value.message


def test_a_store_without_one_archive_needs_a_model_name(tmp_path: Path) -> None:
    store = store_with_mar(tmp_path)
    store_with_mar(tmp_path, spec=type(SPEC)(**{**SPEC.__dict__, "name": "n"}))
    with pytest.raises(ConfigError, match="2 archives in model-store/"):
        FrontSettings.from_args(["--store", str(store)], {})


# --- a real front whose TorchServe is down --------------------------------------------------


def run_front(
    tmp_path: Path,
    scenario: Callable[[str], Awaitable[None]],
    upstream: web.Application | None = None,
    upstream_host: str = "127.0.0.1",
    **settings: Any,
) -> None:
    """Serve a Front on 127.0.0.1 and run ``scenario(base_url)`` against it. TorchServe's
    inference port (on ``upstream_host``) serves ``upstream`` (default: nothing listens),
    its management port nothing."""
    store = store_with_mar(tmp_path)
    s = FrontSettings(store=store, model_name="m", port=free_port(),
                      upstream=f"http://{upstream_host}:{free_port()}",
                      management=f"http://127.0.0.1:{free_port()}", **settings)  # fmt: skip

    async def main() -> None:
        runners = []
        if upstream is not None:
            runners.append(web.AppRunner(upstream, access_log=None, handle_signals=False))
            await runners[-1].setup()
            port = int(s.upstream.rsplit(":", 1)[1])
            await web.TCPSite(runners[-1], "127.0.0.1", port).start()
        runners.append(web.AppRunner(Front(s, SPEC).app(), access_log=None, handle_signals=False))
        await runners[-1].setup()
        await web.TCPSite(runners[-1], s.host, s.port).start()
        try:
            await scenario(f"http://{s.host}:{s.port}")
        finally:
            for runner in reversed(runners):
                await runner.cleanup()

    asyncio.run(main())


async def raw_exchange(base: str, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send ``request`` as bytes on a new connection: (status line, headers, body)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = head.decode().split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    writer.close()
    await writer.wait_closed()
    return status.encode(), headers, body


def echo_upstream() -> web.Application:
    """A server behind the front that answers with what it received, an odd status and
    reason, a header of its own and a cookie (the front must not keep it)."""

    async def echo(request: web.Request) -> web.Response:
        seen = {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            "body": (await request.read()).hex(),
        }
        answer = web.json_response(seen, status=207, reason="Echoed")
        answer.headers["X-Upstream"] = "echo"
        answer.set_cookie("session", "one-clients-secret")
        return answer

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def test_requests_and_answers_cross_the_front_as_sent(tmp_path: Path) -> None:
    async def scenario(base: str) -> None:
        body = bytes(range(256)) * 3
        status, headers, answer = await raw_exchange(base, (
            b"POST /predictions/m%2Fx/2?top=3&a=%20b HTTP/1.1\r\nHost: front.example\r\n"
            b"Content-Type: image/png\r\nX-Request-Id: r-1\r\nX-Top-K: 3\r\n"
            b"Inference-Header-Content-Length: 2\r\nConnection: keep-alive, X-Hop\r\n"
            b"X-Hop: not forwarded\r\nKeep-Alive: timeout=5\r\nX-Twice: 1\r\nX-Twice: 2\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        ))  # fmt: skip
        assert status == b"HTTP/1.1 207 Echoed"
        assert headers["x-upstream"] == "echo"
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert headers["set-cookie"].startswith("session=one-clients-secret")
        seen = json.loads(answer)
        assert (seen["method"], seen["path"]) == ("POST", "/predictions/m%2Fx/2?top=3&a=%20b")
        assert bytes.fromhex(seen["body"]) == body
        sent = [(k.lower(), v) for k, v in seen["headers"]]
        assert [h for h in sent if h[0] not in ("host", "content-length")] == [
            ("content-type", "image/png"), ("x-request-id", "r-1"), ("x-top-k", "3"),
            ("inference-header-content-length", "2"), ("x-twice", "1"), ("x-twice", "2"),
        ]  # fmt: skip
        assert ("content-length", str(len(body))) in sent
        # The cookie TorchServe (here: the echo) set is the client's business, not the next's.
        status, _, answer = await raw_exchange(base, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == b"HTTP/1.1 207 Echoed"
        assert not [h for h in json.loads(answer)["headers"] if h[0].lower() == "cookie"]

    # By name: aiohttp's default cookie jar keeps no cookie of an IP address anyway.
    run_front(tmp_path, scenario, echo_upstream(), upstream_host="localhost")


def test_torchserve_down_is_a_503_naming_it_and_the_front_keeps_answering(tmp_path: Path) -> None:
    async def scenario(base: str) -> None:
        async with aiohttp.ClientSession() as http:
            for path, v2 in (("/v2/models/m/infer", True), ("/predictions/m", False),
                             ("/v1/models/m:predict", False), ("/ping", False)):  # fmt: skip
                async with http.post(base + path, data=b"{}") as r:
                    assert r.status == 503, path
                    assert r.headers["X-Atelier-Error"] == "upstream_unavailable"
                    body = await r.json()
                    message = body["error"] if v2 else body["error"]["message"]
                    assert message.startswith("TorchServe at http://127.0.0.1:"), message
                    assert f"did not answer POST {path}" in message
            async with http.get(base + "/v2/health/live") as r:
                assert r.status == 200 and await r.json() == {"live": True}
            for path in ("/v2/health/ready", "/v2/models/m/ready", "/v1/models/m"):
                async with http.get(base + path) as r:
                    assert r.status == 503, path
                    assert r.headers["X-Atelier-Error"] == "model_not_ready"
            async with http.get(base + "/v2/models/m/versions/3") as r:
                assert r.status == 200 and (await r.json())["versions"] == ["3"]

    run_front(tmp_path, scenario)


def test_inference_routes_of_other_models_or_versions_are_404_without_torchserve(
    tmp_path: Path,
) -> None:
    async def scenario(base: str) -> None:
        async with aiohttp.ClientSession() as http:
            for path, needle in (("/v2/models/x/infer", "'x' is not served"),
                                 ("/v2/models/m/versions/4/infer", "no version '4'"),
                                 ("/v1/models/x:predict", "'x' is not served")):  # fmt: skip
                async with http.post(base + path, json={"inputs": []}) as r:
                    assert r.status == 404, path
                    assert r.headers["X-Atelier-Error"] == "model_not_found"
                    body = await r.json()
                    message = body["error"] if path.startswith("/v2") else body["error"]["message"]
                    assert needle in message

    run_front(tmp_path, scenario)


def test_expect_100_continue_over_torchserves_limit_is_its_bare_413(tmp_path: Path) -> None:
    async def scenario(base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /predictions/m HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n")  # fmt: skip
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.startswith(b"HTTP/1.1 413"), status
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"Content-Length: 0\r\n" in head and b"Connection: close\r\n" in head, head
        writer.close()
        await writer.wait_closed()

    run_front(tmp_path, scenario, max_request_size=4096)


def test_malformed_http_is_a_400_and_the_front_keeps_serving(tmp_path: Path) -> None:
    async def scenario(base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        for garbage in (
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(garbage)
            status = await asyncio.wait_for(reader.readline(), 10)
            assert status.startswith(b"HTTP/1.") and b" 400 " in status, (garbage, status)
            writer.close()
            await writer.wait_closed()
        async with aiohttp.ClientSession() as http, http.get(base + "/v2") as r:
            assert r.status == 200

    run_front(tmp_path, scenario)


# --- the supervisor -----------------------------------------------------------------------


def start_front(
    tmp_path: Path, port: int, child: str, leader: bool = True
) -> subprocess.Popen[str]:
    """The front launching ``python -c child``: as the serving image runs it (leading its
    process group), or, ``leader=False``, inside this test's process group."""
    store = store_with_mar(tmp_path)
    cmd = [sys.executable, "-m", "atelier.serving.oip_front", "--store", str(store), "--port",
           str(port), "--grace", "5", "--launch", "--", sys.executable, "-c", child]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=leader)  # fmt: skip


def kill(proc: subprocess.Popen[str], leader: bool = True) -> None:
    if proc.poll() is None:
        if leader:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


def wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail("the front did not listen")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Like TorchServe's launcher: a child of its own (its Java frontend), then wait.
LAUNCHER = """
import os, subprocess, sys, time
inner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open({pid_file!r}, "w").write(f"{{os.getpid()}} {{inner.pid}}")
time.sleep(120)
"""


@pytest.mark.parametrize("leader", [True, False], ids=["group-leader", "in-a-group"])
def test_sigterm_stops_the_launched_command_and_its_children_and_exits_0(
    tmp_path: Path, leader: bool
) -> None:
    pid_file = tmp_path / "child.pid"
    port = free_port()
    proc = start_front(tmp_path, port, LAUNCHER.format(pid_file=str(pid_file)), leader)
    try:
        wait_listening(port, proc)
        deadline = time.monotonic() + 30
        while not pid_file.exists() or len(pid_file.read_text().split()) != 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        pids = [int(p) for p in pid_file.read_text().split()]
        assert all(alive(pid) for pid in pids)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        kill(proc, leader)
    assert proc.returncode == 0, out
    assert "stopping: no new connections" in out and "stopped" in out
    deadline = time.monotonic() + 5  # the inner child may still be reaped by init
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids), out


def test_when_the_launched_command_exits_the_front_exits_non_zero(tmp_path: Path) -> None:
    port = free_port()
    proc = start_front(tmp_path, port, "raise SystemExit(3)")
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        kill(proc)
    assert proc.returncode == 6, out
    assert f"{sys.executable} exited with 3; the front stops" in out


def test_a_port_in_use_stops_the_launched_command_and_exits_non_zero(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_front(tmp_path, port, "import time; time.sleep(120)")
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            kill(proc)
    assert proc.returncode == 6, out
    assert f"cannot listen on 127.0.0.1:{port}" in out
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of its group is left


def test_settings_errors_exit_2_before_anything_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "atelier.serving.oip_front", "--store", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "0 archives in model-store/" in done.stderr
