"""The OIP front: TorchServe with the Open Inference Protocol's health and metadata routes.

TorchServe 0.12's frontend answers ``POST /predictions/M``, ``/v1/models/M:predict`` and
``/v2/models/M/infer`` through our handler, but none of the protocol's GET routes (404).
``python -m atelier.serving.oip_front`` listens on the public inference port and:

- answers the GET routes of atelier.runtime.oip itself, as the KServe runtime answers them:
  ``/v2``, ``/v2/health/live`` (this process answers), ``/v2/health/ready`` and
  ``/v2/models/M[/versions/V]/ready`` (TorchServe's management API lists a READY worker of
  the served version), ``/v2/models/M[/versions/V]`` (metadata), KServe v1's ``/``,
  ``/v1/models``, ``/v1/models/M``. The model's name, version, classes, image size and
  channels come from the .mar in the store (``ModelSpec.from_mar``), without torch;
- answers ``POST /v2/models/M/versions/V/infer`` for the served version by forwarding it to
  ``/v2/models/M/infer`` (TorchServe does not route the versioned path), and the v1/v2
  inference routes of another model or version with 404 ``model_not_found``;
- forwards every other request to TorchServe's inference address (127.0.0.1) as it came:
  method, path and query, headers (all but the hop-by-hop ones: Connection, Keep-Alive,
  Transfer-Encoding, Expect, Host, ...), the body's bytes; and TorchServe's status, reason,
  headers and body back. Bodies up to ``READ_WHOLE`` bytes are read, larger or chunked ones
  streamed. ``Expect: 100-continue`` behaves as on TorchServe: a declared body over its
  ``max_request_size`` gets TorchServe's bare 413 before the client sends it, any other
  gets ``100 Continue``;
- answers 503 ``upstream_unavailable`` (an OIP error body on v2 paths) when TorchServe cannot
  be reached. A bad request never stops it: aiohttp answers malformed HTTP with 400.

Upstream traffic goes through one aiohttp ClientSession whose connections are kept alive;
the event loop is uvloop's (the serve extra installs it), which spends about 40 % less CPU
per forwarded request here than asyncio's.

Process model (``--launch -- CMD...``, what the serving image runs under tini): the front
starts CMD (``torchserve --start --foreground ...``) in the front's process group and
supervises it. If CMD exits, the front stops and exits non-zero; if the front cannot
listen, it stops CMD and exits non-zero. On SIGTERM or SIGINT it stops listening, lets the
requests in flight finish (at most ``--grace`` seconds), then stops CMD as ``torchserve
--stop`` does (SIGTERM to TorchServe's launcher and its Java frontend, which stops its
workers), waits for the rest of the process group (``--grace`` seconds, then SIGKILL) and
exits 0. The group is the front's when it leads one (tini and atelier.tools.torchserve start
it so); otherwise only CMD and its children are signalled and waited for.

TorchServe's addresses default to its own ``TS_INFERENCE_ADDRESS`` and
``TS_MANAGEMENT_ADDRESS`` (the container's environment, shared with TorchServe), and the
413 limit to ``TS_MAX_REQUEST_SIZE`` or the store's ``config/config.properties``: each is
configured once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import (
    ClientError,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    HttpVersion11,
    TCPConnector,
    web,
)
from multidict import CIMultiDict
from yarl import URL

import atelier
from atelier.runtime import oip
from atelier.runtime.errors import (
    AtelierError,
    ConfigError,
    ServerError,
    UpstreamUnavailableError,
    exit_on_error,
    http_answer,
)
from atelier.runtime.spec import ModelSpec

log = logging.getLogger("atelier.oip_front")

# TorchServe's max_request_size when config.properties does not set it (its documented default).
TORCHSERVE_MAX_REQUEST_SIZE = 6553500
# Bodies up to this size are read whole and sent with their length; larger ones are streamed.
READ_WHOLE = 1024 * 1024
# RFC 9110 7.6.1: headers of one connection, never forwarded (and Host, Expect: the front's).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host", "expect",
})  # fmt: skip
# aiohttp writes the length of the body it sends back itself.
NOT_RETURNED = HOP_BY_HOP | {"content-length"}
# Headers aiohttp's client would add on its own; only the client's own are forwarded.
NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
V2_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
V1_PREDICT = re.compile(r"/v1/models/([^/]+):predict")
MANAGEMENT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class FrontSettings:
    """The front's settings, from its flags and TorchServe's own env vars; checked at start."""

    store: Path
    model_name: str
    host: str = "127.0.0.1"
    port: int = 8080
    upstream: str = "http://127.0.0.1:8085"  # TorchServe's inference address
    management: str = "http://127.0.0.1:8081"  # TorchServe's management address
    max_request_size: int = TORCHSERVE_MAX_REQUEST_SIZE
    launch: tuple[str, ...] = ()
    grace_s: float = 20.0

    @property
    def mar(self) -> Path:
        return self.store / "model-store" / f"{self.model_name}.mar"

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> FrontSettings:
        env = os.environ if env is None else env
        args = list(sys.argv[1:] if argv is None else argv)
        launch: list[str] = []
        if "--launch" in args:
            at = args.index("--launch")
            args, launch = args[:at], args[at + 1 :]
            if launch[:1] == ["--"]:
                launch = launch[1:]
            if not launch:
                raise ConfigError("--launch: name the command to start, after --")
        parser = argparse.ArgumentParser(
            prog="python -m atelier.serving.oip_front",
            description="The Open Inference Protocol's health and metadata routes in front "
            "of TorchServe; every other request is forwarded to it. Options, then "
            "optionally: --launch -- COMMAND... (start and supervise TorchServe).",
        )
        parser.add_argument("--store", type=Path, default=Path("/mnt/models"),
                            help="model store root (holds model-store/<name>.mar)")  # fmt: skip
        parser.add_argument("--model-name", help="default: the store's only .mar")
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
        parser.add_argument("--port", type=_port, default=8080, help="port to listen on")
        parser.add_argument("--upstream", default=env.get("TS_INFERENCE_ADDRESS") or None,
                            help="TorchServe's inference address (default: "
                            "$TS_INFERENCE_ADDRESS, else http://127.0.0.1:8085)")  # fmt: skip
        parser.add_argument("--management", default=env.get("TS_MANAGEMENT_ADDRESS") or None,
                            help="TorchServe's management address (default: "
                            "$TS_MANAGEMENT_ADDRESS, else http://127.0.0.1:8081)")  # fmt: skip
        parser.add_argument("--grace", type=float, default=20.0,
                            help="seconds for requests in flight, then for TorchServe, "
                            "to finish at shutdown")  # fmt: skip
        ns = parser.parse_args(args)
        store: Path = ns.store.resolve()
        name = ns.model_name or _only_mar(store)
        settings = cls(
            store=store,
            model_name=name,
            host=ns.host,
            port=ns.port,
            upstream=_base_url("--upstream", ns.upstream or cls.upstream),
            management=_base_url("--management", ns.management or cls.management),
            max_request_size=_max_request_size(store, env),
            launch=tuple(launch),
            grace_s=ns.grace,
        )
        if not settings.mar.is_file():
            raise ConfigError(
                f"--model-name {name}: {settings.mar} does not exist",
                hint="check --store and --model-name",
            )
        return settings


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from exc
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not between 1 and 65535")
    return port


def _only_mar(store: Path) -> str:
    mars = sorted((store / "model-store").glob("*.mar"))
    if len(mars) != 1:
        raise ConfigError(
            f"--store {store}: {len(mars)} archives in model-store/, expected one",
            hint="pass --model-name",
        )
    return mars[0].stem


def _base_url(flag: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"{flag} {value!r}: expected http://HOST:PORT")
    try:
        _ = parts.port  # a bad port raises here
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r}: {exc}") from exc
    return value.rstrip("/")


def _max_request_size(store: Path, env: Mapping[str, str]) -> int:
    """TorchServe's max_request_size: TS_MAX_REQUEST_SIZE (enable_envvars_config), else the
    store's config.properties, else TorchServe's default."""
    raw = env.get("TS_MAX_REQUEST_SIZE", "").strip()
    where = "TS_MAX_REQUEST_SIZE"
    if not raw:
        config = store / "config" / "config.properties"
        where = str(config)
        lines = config.read_text().splitlines() if config.is_file() else []
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key.strip() == "max_request_size":
                raw = value.strip()
    if not raw:
        return TORCHSERVE_MAX_REQUEST_SIZE
    if not raw.isdigit():
        raise ConfigError(f"{where}: max_request_size {raw!r} is not a whole number")
    return int(raw)


# --- the HTTP side


def _json(answer: oip.Answer) -> web.Response:
    status, body, headers = answer
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
    )


def _error(err: AtelierError, path: str) -> web.Response:
    return _json(http_answer(err, oip.route_protocol(path)))


class Front:
    """The aiohttp app: the GET routes of atelier.runtime.oip, and the forwarder."""

    def __init__(self, settings: FrontSettings, spec: ModelSpec) -> None:
        self.s = settings
        self.spec = spec
        self.version = atelier.__version__
        self._session: ClientSession | None = None
        self._ready_url = (
            f"{settings.management}/models/{quote(spec.name, safe='')}/"
            f"{quote(spec.version, safe='')}"
        )

    @property
    def session(self) -> ClientSession:
        assert self._session is not None, "the app has not started"
        return self._session

    def app(self) -> web.Application:
        app = web.Application(client_max_size=READ_WHOLE)
        for route in oip.ROUTES:
            app.router.add_get(route.path, self._health(route))
        app.router.add_route("*", "/{tail:.*}", self.forward, expect_handler=self.expect)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        connector = TCPConnector(limit=0, keepalive_timeout=60.0)
        self._session = ClientSession(
            connector=connector,
            # A proxy keeps no cookies: one client's must never reach another's request.
            cookie_jar=DummyCookieJar(),
            auto_decompress=False,
            timeout=ClientTimeout(total=None, sock_connect=5.0),
            skip_auto_headers=NO_AUTO_HEADERS,
        )

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def model_ready(self) -> bool:
        """TorchServe's management API lists a READY worker of the served version."""
        try:
            timeout = ClientTimeout(total=MANAGEMENT_TIMEOUT_S)
            async with self.session.get(self._ready_url, timeout=timeout) as r:
                if r.status != 200:
                    return False
                data = await r.json(content_type=None)
        except (ClientError, TimeoutError, ValueError):
            return False
        if not isinstance(data, list):
            return False
        return any(
            isinstance(w, dict) and w.get("status") == "READY"
            for m in data
            if isinstance(m, dict)
            for w in (m.get("workers") or [])
        )

    def _health(self, route: oip.Route) -> Any:
        async def handler(request: web.Request) -> web.Response:
            ready = await self.model_ready() if route.needs_ready else False
            info = request.match_info
            return _json(oip.answer(route, self.spec, ready, self.version,
                                    info.get("model_name"), info.get("model_version")))  # fmt: skip

        return handler

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue`` as TorchServe answers it: over its max_request_size, a
        bare 413 before the body is sent; else 100 Continue (aiohttp's default)."""
        if request.version != HttpVersion11:
            return None
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        length = request.content_length
        if length is not None and length > self.s.max_request_size:
            refused = web.Response(status=413)
            refused.force_close()  # the body never comes: no lingering read for it
            return refused
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    def _target(self, request: web.Request) -> str:
        """The path and query to forward to; raises ModelNotFoundError for a v1/v2 inference
        route of another model or version."""
        path = request.path
        if request.method == "POST":
            v2 = V2_INFER.fullmatch(path)
            if v2:
                oip.check_model(self.spec, v2.group(1), v2.group(2))
                if v2.group(2) is not None:  # TorchServe routes only the unversioned path
                    query = request.raw_path.partition("?")[2]
                    plain = f"/v2/models/{quote(v2.group(1), safe='')}/infer"
                    return f"{plain}?{query}" if query else plain
            v1 = V1_PREDICT.fullmatch(path)
            if v1:
                oip.check_model(self.spec, v1.group(1))
        return request.raw_path

    async def forward(self, request: web.Request) -> web.StreamResponse:
        try:
            target = self._target(request)
        except AtelierError as err:
            return _error(err, request.path)
        drop = HOP_BY_HOP | _connection_tokens(request.headers.getall("Connection", []))
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in drop]
        data: Any = None
        if request.body_exists:
            length = request.content_length
            whole = length is not None and length <= READ_WHOLE
            data = await request.read() if whole else request.content
        try:
            async with self.session.request(
                request.method,
                URL(self.s.upstream + target, encoded=True),  # the path as the client sent it
                headers=headers,
                data=data,
                allow_redirects=False,
            ) as upstream:
                body = await upstream.read()
                status, reason = upstream.status, upstream.reason
                back = CIMultiDict(
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in NOT_RETURNED
                )
        except (ClientError, TimeoutError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            down = UpstreamUnavailableError(
                f"TorchServe at {self.s.upstream} did not answer {request.method} "
                f"{request.path}: {detail}"
            )
            log.warning("%s", down.message)
            return _error(down, request.path)
        return web.Response(status=status, reason=reason, body=body, headers=back)


def _connection_tokens(values: list[str]) -> frozenset[str]:
    """Headers the Connection header names are hop-by-hop too (RFC 9110 7.6.1)."""
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


# --- the process: serve, and supervise the launched command


def _processes() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, state) of every process but this one, from /proc ([] without it)."""
    me = os.getpid()
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2:
                found.append((int(entry), int(fields[1]), int(fields[2]), fields[0]))
    return found


def _group_members(pgid: int) -> list[int]:
    """Pids of the other live processes of a process group (zombies excluded)."""
    return [pid for pid, _, group, state in _processes() if group == pgid and state != "Z"]


def _children(parent: int) -> list[int]:
    return [pid for pid, ppid, _, state in _processes() if ppid == parent and state != "Z"]


async def stop_launched(child: asyncio.subprocess.Process | None, grace_s: float) -> None:
    """SIGTERM to the launched command and its children; wait for them and (when the front
    leads its process group) the rest of the group; SIGKILL what is left after ``grace_s``."""
    if child is None:
        return
    pgid = os.getpgrp()
    leader = pgid == os.getpid()
    # The command and its own children, as `torchserve --stop` signals TorchServe's Java
    # frontend alone: it stops its Python workers itself (signalled too, a worker would just
    # be restarted by the frontend). The children are found before the command is signalled:
    # TorchServe's launcher dies at once, and its Java frontend is then no child of it.
    targets = [*_children(child.pid), child.pid] if child.returncode is None else []
    if leader and not targets:  # the command is gone: what it left in the group
        targets = _group_members(pgid)
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    def left() -> list[int]:
        if leader:
            return _group_members(pgid)
        live = {pid for pid, _, _, state in _processes() if state != "Z"}
        return [pid for pid in targets if pid in live and pid != child.pid]

    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if child.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), 0.1)
        elif not left():
            return
        else:
            await asyncio.sleep(0.1)
    for pid in left():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


async def serve(settings: FrontSettings) -> None:
    """Listen until SIGTERM/SIGINT, or until the launched command exits (ServerError)."""
    try:
        spec = ModelSpec.from_mar(settings.mar)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    child = None
    if settings.launch:
        try:
            child = await asyncio.create_subprocess_exec(*settings.launch)
        except OSError as exc:
            raise ConfigError(f"--launch {settings.launch[0]}: {exc}") from exc
    runner = web.AppRunner(
        Front(settings, spec).app(),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=settings.grace_s,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await stop_launched(child, settings.grace_s)
        raise ServerError(
            f"the OIP front cannot listen on {settings.host}:{settings.port}: {exc}"
        ) from exc
    log.info(
        "listening on http://%s:%d for %s version %s; TorchServe at %s (management %s)",
        settings.host, settings.port, spec.name, spec.version, settings.upstream,
        settings.management,
    )  # fmt: skip
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if child is not None:
        waits.append(asyncio.ensure_future(child.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    died = child is not None and child.returncode is not None and not stop.is_set()
    if died:  # a group-wide SIGTERM may reach the command first: give ours a moment
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        died = not stop.is_set()
    for w in waits:
        w.cancel()
    if died:
        assert child is not None
        log.error("%s exited with %s; stopping", settings.launch[0], child.returncode)
    else:
        log.info("stopping: no new connections; requests in flight finish, then TorchServe")
    await runner.cleanup()  # stop listening; requests in flight finish (at most grace_s)
    await stop_launched(child, settings.grace_s)
    log.info("stopped")
    if died:
        assert child is not None
        raise ServerError(f"{settings.launch[0]} exited with {child.returncode}; the front stops")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with exit_on_error():
        settings = FrontSettings.from_args(argv)
        try:
            import uvloop  # the event loop's C implementation, where installed
        except ImportError:
            asyncio.run(serve(settings))
        else:
            uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
