"""The KServe runtime: the same .mar, parser and answers as TorchServe, on kserve's ModelServer.

``python -m atelier.serving.kserve_runtime --store S --model-name M --host H --port P`` unzips
``S/model-store/M.mar`` into a private folder, builds the ``InferenceService`` from it (as the
TorchServe handler does, but with the installed ``atelier`` package) and serves it with
kserve 0.21 on one HTTP port, in one process, without gRPC:

- ``POST /v1/models/M:predict`` (KServe v1), ``POST /v2/models/M[/versions/V]/infer`` (KServe
  v2) and ``POST /predictions/M[/V]`` (raw image, multipart upload, or v1/v2 JSON, like
  TorchServe); V must be the served version, else 404;
- the Open Inference Protocol's health and metadata GET routes (``/v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2/models/M[/versions/V][/ready]``) and KServe v1's (``/``,
  ``/v1/models``, ``/v1/models/M``), answered by atelier.runtime.oip as the OIP front answers
  them on TorchServe; V must be the served version, else 404;
- KServe's own ``/metrics``.

How a request reaches our parser. kserve 0.21 parses a body before a ``Model`` sees it: its v1
handler decodes JSON with orjson (no NaN; a bad body becomes KServe's ``{"error": "..."}``), its
v2 handler validates the body as a pydantic ``InferenceRequest`` (FastAPI's 422) and turns it
into numpy tensors (``InferRequest``), and a Model can only answer 200 or raise. So this module
registers its own routes for the POST paths (and the health and metadata GET paths) on
KServe's FastAPI app *before* KServe's ``RESTServer`` adds its routers: Starlette takes the
first route that matches, so ours replace KServe's predict/infer, health and metadata
handlers, and every other route stays KServe's. Our route reads the raw
body: at most ``ServingSettings.max_payload_bytes`` (ATELIER_MAX_PAYLOAD_BYTES) is kept; a
larger body is read and dropped (or not read at all when the client sent
``Expect: 100-continue``) and answered 413. It makes an
``Item`` and calls the ``kserve.Model`` (``Model.__call__``: preprocess -> predict ->
postprocess, timed in KServe's ``request_*_seconds`` histograms). ``predict`` runs
``InferenceService.handle([item])`` on one worker thread and records the ``atelier_*`` metrics.
The route answers the outcome's status with ``service.encode(outcome)``: byte for byte (and
header for header) what the TorchServe handler writes, including the v2 binary tensor data
extension (the ``Inference-Header-Content-Length`` header is passed on in the ``Item``, and
the body is split by the shared parser, as on TorchServe).

Binding. ``ModelServer.start()`` builds a ``RESTServer`` whose uvicorn config is hard-wired to
``host="0.0.0.0"`` and starts gRPC on 8081 by default. ``serve()`` therefore uses ModelServer
for what it sets up (logging, the model registry, the data plane) and runs the ``RESTServer``
itself after setting ``config.host``; no gRPC server is started.

kserve is imported only inside ``serve()``: ``kserve.model_server`` parses ``sys.argv`` when it
is imported (``parse_known_args``, with prefix matching: ``--model`` would set its
``--model_name``, ``--co`` its ``--configure_logging``), so the arguments are cleared first, and
processes that only launch the runtime (the CLI, the tests) never import it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import zipfile
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import atelier
from atelier.runtime import oip
from atelier.runtime.errors import (
    AtelierError,
    ConfigError,
    MalformedRequestError,
    ServerError,
    exit_on_error,
    http_answer,
)
from atelier.runtime.settings import ServingSettings
from atelier.runtime.spec import ModelSpec
from atelier.serving.metrics import ServingMetrics

if TYPE_CHECKING:
    from starlette.datastructures import Headers
    from starlette.requests import Request
    from starlette.responses import Response

    from atelier.runtime.service import InferenceService, Item, Outcome

# A body over the payload limit is read and dropped up to this size before the 413 goes out,
# so the client reads the answer instead of a connection reset; past it the connection closes.
DRAIN_LIMIT = 64 * 1024 * 1024


# --- Server side: runs inside ``python -m atelier.serving.kserve_runtime``


@dataclass(frozen=True)
class ServerSettings:
    """The server process's settings: the server's own from its flags, the ones it shares with
    a TorchServe worker (spool, request limits) from ATELIER_* env vars; all checked before
    anything is loaded."""

    store: Path
    model_name: str
    host: str = "127.0.0.1"
    port: int = 8080
    work_dir: Path | None = None  # the .mar is unzipped into a new folder in here (default: TMPDIR)
    serving: ServingSettings = field(default_factory=ServingSettings)

    @property
    def mar(self) -> Path:
        return self.store / "model-store" / f"{self.model_name}.mar"

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> ServerSettings:
        parser = argparse.ArgumentParser(
            prog="python -m atelier.serving.kserve_runtime",
            description="Serve an atelier .mar with KServe (v1, v2, raw images, /metrics).",
        )
        parser.add_argument(
            "--store", type=Path, default=Path("model-store"), help="model store root"
        )
        parser.add_argument("--model-name", help="model name (default: the store's current)")
        parser.add_argument("--host", default="127.0.0.1", help="address to bind")
        parser.add_argument("--port", type=_port, default=8080, help="HTTP port")
        parser.add_argument(
            "--work-dir", type=Path, help="where the .mar is unzipped (default: TMPDIR)"
        )
        ns = parser.parse_args(argv)
        serving = ServingSettings.from_env()
        store: Path = ns.store.resolve()
        name = ns.model_name
        if name is None:
            cur = store / "CURRENT.json"
            if not cur.is_file():
                raise ConfigError(
                    f"--store {store} has no CURRENT.json",
                    hint="run atelier archive first, or pass --model-name",
                )
            name = str(json.loads(cur.read_text())["name"])
        settings = cls(store, name, ns.host, ns.port, ns.work_dir, serving)
        if not settings.mar.is_file():
            raise ConfigError(
                f"--model-name {name}: {settings.mar} does not exist",
                hint="check --store and --model-name, or run atelier archive",
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


class ModelRuntime:
    """The .mar unzipped and loaded, answering one Item at a time on one worker thread."""

    def __init__(self, settings: ServerSettings, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_dir: Path | None = None
        self.service: InferenceService | None = None
        self.dims = (settings.model_name, "unknown")
        # One forward pass at a time, like one TorchServe worker; the event loop stays free.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atelier-infer")

    def load(self) -> None:
        from atelier.runtime.service import InferenceService

        s = self.settings
        if s.work_dir is not None:
            s.work_dir.mkdir(parents=True, exist_ok=True)
        self.model_dir = Path(tempfile.mkdtemp(prefix=f"{s.model_name}-mar-", dir=s.work_dir))
        try:
            with zipfile.ZipFile(s.mar) as mar:
                mar.extractall(self.model_dir)
            manifest = json.loads((self.model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        except (zipfile.BadZipFile, OSError, KeyError, json.JSONDecodeError) as exc:
            raise ServerError(f"{s.mar} is not a readable model archive: {exc}") from exc
        version = manifest.get("model", {}).get("modelVersion")
        self.service = InferenceService.from_dir(self.model_dir, version, s.serving)
        self.dims = (self.service.spec.name, self.service.spec.version)

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.serving.max_payload_bytes

    def run(self, item: Item) -> Outcome:
        assert self.service is not None
        outcomes, stats = self.service.handle([item])
        self.metrics.observe(self.dims, outcomes, stats)
        return outcomes[0]

    async def infer(self, item: Item) -> Outcome:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.run, item)

    def reject(self, err: MalformedRequestError, protocol: str | None) -> Outcome:
        """The answer to a body that never became an Item (a broken multipart upload)."""
        from atelier.runtime.errors import http_answer
        from atelier.runtime.service import Outcome

        status, body, headers = http_answer(err, protocol or "raw")
        outcome = Outcome(status, body, protocol or "unknown", err.kind, headers)
        self.metrics.count(self.dims, [outcome])
        return outcome

    def input_types(self) -> list[dict[str, Any]]:
        assert self.service is not None
        return oip.model_inputs(self.service.spec)

    def output_types(self) -> list[dict[str, Any]]:
        assert self.service is not None
        return oip.model_outputs(self.service.spec)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.service is not None and self.service.spool is not None:
            self.service.spool.close()
        if self.model_dir is not None:
            shutil.rmtree(self.model_dir, ignore_errors=True)


def make_kserve_model(runtime: ModelRuntime) -> Any:
    """A kserve.Model over the runtime: load, metadata, and predict = InferenceService.handle."""
    from kserve import Model

    class AtelierModel(Model):
        def load(self) -> bool:
            runtime.load()
            self.ready = True
            return True

        def get_input_types(self) -> list[dict[str, Any]]:
            return runtime.input_types()

        def get_output_types(self) -> list[dict[str, Any]]:
            return runtime.output_types()

        async def predict(
            self,
            payload: Item,
            headers: dict[str, str] | None = None,
            response_headers: dict[str, str] | None = None,
        ) -> Outcome:
            return await runtime.infer(payload)

    return AtelierModel(runtime.settings.model_name)


async def read_body(request: Request, limit: int) -> tuple[bytes, int]:
    """The body and its length. A body over ``limit`` is not kept: it comes back as b""."""
    declared = request.headers.get("content-length", "")
    length = int(declared) if declared.isdigit() else None
    if length is not None and length > limit:
        if request.headers.get("expect", "").lower() == "100-continue":
            return b"", length  # the client waits for "100 Continue" before it sends the body
        keep = False
    else:
        keep = True
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if keep and size <= limit:
            chunks.append(chunk)
        else:
            keep, chunks = False, []
        if size > DRAIN_LIMIT:
            break
    return (b"".join(chunks) if keep else b""), (length if length is not None else size)


async def multipart_fields(headers: Headers, body: bytes, limit: int) -> dict[str, Any]:
    """Form fields of a multipart body: files as bytes, other fields as text; first one wins."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartParser

    async def once() -> AsyncGenerator[bytes, None]:
        yield body

    form = await MultiPartParser(headers, once(), max_part_size=limit).parse()
    fields: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if key not in fields:
                fields[key] = await value.read() if isinstance(value, UploadFile) else value
    finally:
        await form.close()
    return fields


def install_routes(app: Any, model: Any, runtime: ModelRuntime) -> None:
    """Our routes, registered on KServe's app before KServe's own (see the module doc): the
    POST routes, and the health and metadata GET routes of atelier.runtime.oip."""
    from starlette.formparsers import MultiPartException
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response

    from atelier.runtime.service import Item

    # The served model, from the .mar as the front on TorchServe reads it: known before the
    # model is loaded, so a not-ready model still has its name and version.
    try:
        spec = ModelSpec.from_mar(runtime.settings.mar)
    except ValueError as exc:
        raise ServerError(str(exc)) from exc

    async def answer(request: Request, expect: str | None) -> Response:
        name = request.path_params["model_name"]
        version = request.path_params.get("model_version")
        protocol = expect or "raw"
        try:
            oip.check_model(spec, name, version)  # 404 model_not_found
            if not model.ready:
                raise oip.not_ready(spec)  # 503 model_not_ready
        except AtelierError as err:
            return _json_response(*http_answer(err, protocol))
        limit = runtime.max_payload_bytes
        try:
            body, length = await read_body(request, limit)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        headers = request.headers
        common: dict[str, Any] = {
            "content_length": length,
            "top_k": headers.get("x-top-k"),
            "request_id": headers.get("x-request-id") or None,
            "expect": expect,
            "binary_header": headers.get("inference-header-content-length"),
        }
        content_type = headers.get("content-type")
        media = (content_type or "").split(";")[0].strip().lower()
        if media == "multipart/form-data" and length <= limit:
            try:
                fields = await multipart_fields(headers, body, limit)
            except MultiPartException as exc:
                outcome = runtime.reject(
                    MalformedRequestError(f"multipart body: {exc.message}"), expect
                )
                return _response(outcome)
            # As TorchServe: a multipart row has form fields, and no content type of its own.
            item = Item(fields, multipart=True, **common)
        else:
            item = Item(body, content_type=content_type, **common)
        outcome, _ = await model(item, headers=dict(headers))
        return _response(outcome)

    async def raw(request: Request) -> Response:
        return await answer(request, None)  # like TorchServe: any of the three protocols

    async def v1(request: Request) -> Response:
        return await answer(request, "v1")

    async def v2(request: Request) -> Response:
        return await answer(request, "v2")

    for path, endpoint in (
        ("/predictions/{model_name}", raw),
        ("/predictions/{model_name}/{model_version}", raw),
        ("/v1/models/{model_name}:predict", v1),
        ("/v2/models/{model_name}/infer", v2),
        ("/v2/models/{model_name}/versions/{model_version}/infer", v2),
    ):
        app.add_route(path, endpoint, methods=["POST"])

    server_version = atelier.__version__

    def health(route: oip.Route) -> Any:
        async def endpoint(request: Request) -> Response:
            params = request.path_params
            return _json_response(*oip.answer(route, spec, bool(model.ready), server_version,
                                              params.get("model_name"),
                                              params.get("model_version")))  # fmt: skip

        return endpoint

    for route in oip.ROUTES:
        app.add_route(route.path, health(route), methods=["GET"])


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    from starlette.responses import Response

    content = json.dumps(body).encode()
    return Response(content, status, headers={**headers, "Content-Type": "application/json"})


def _response(outcome: Outcome) -> Response:
    from starlette.responses import Response

    from atelier.runtime.service import encode

    # encode() as in the TorchServe handler, so both runtimes write the same bytes and headers.
    body, headers = encode(outcome)
    return Response(body, outcome.status, headers=headers)


def serve(settings: ServerSettings, grace_period_s: int = 10) -> None:
    """Load the model and serve it until SIGTERM or SIGINT."""
    del sys.argv[1:]  # kserve.model_server parses sys.argv on import (see the module doc)
    import prometheus_client
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    prometheus_client.disable_created_metrics()  # no *_created series, as on TorchServe
    runtime = ModelRuntime(settings, ServingMetrics())
    try:
        model = make_kserve_model(runtime)
        model.load()
        server = ModelServer(http_port=settings.port, workers=1, enable_grpc=False)
        server.register_model(model)
        install_routes(app, model, runtime)  # before RESTServer adds KServe's routes
        rest = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            server.dataplane,
            server.model_repository_extension,
            settings.port,
            workers=1,
            grace_period=grace_period_s,
        )
        rest.config.host = settings.host  # RESTServer hard-codes 0.0.0.0
        rest.run()
    finally:
        runtime.close()


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    # While loading, SIGTERM/SIGINT end the process through serve()'s cleanup. While serving,
    # uvicorn handles them (graceful shutdown), then restores this handler and raises the
    # signal again: the same clean exit, with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit)
    with exit_on_error():
        serve(ServerSettings.from_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
