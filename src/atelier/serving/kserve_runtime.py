"""The KServe runtime: the same .mar, parser and answers as TorchServe, on kserve's ModelServer.

``python -m atelier.serving.kserve_runtime --store S --model-name M --host H --port P`` unzips
``S/model-store/M.mar`` into a private folder, builds the ``InferenceService`` from it (as the
TorchServe handler does, but with the installed ``atelier`` package) and serves it with
kserve 0.21 on one HTTP port, without gRPC, in one process or in ``--workers`` processes:

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
postprocess, timed in KServe's ``request_*_seconds`` histograms). ``predict`` hands the item
to the runtime's micro-batcher and awaits its Outcome (below). The route answers the
outcome's status with ``service.encode(outcome)``: byte for byte (and header for header)
what the TorchServe handler writes, including the v2 binary tensor data
extension (the ``Inference-Header-Content-Length`` header is passed on in the ``Item``, and
the body is split by the shared parser, as on TorchServe).

Batching (atelier.serving.batcher). Concurrent requests are answered together, as TorchServe
batches them: while one batch runs ``InferenceService.handle(items)`` on the process's one
inference thread, the event loop queues the requests that arrive, and the next batch takes
all of them, up to the batch size. A request that finds the runtime idle runs at once, alone;
a batch of queued requests may be held up to the max batch delay to fill up. The batch size
and delay are the model's ``batchSize`` and ``maxBatchDelay`` in the store's
``config/config.properties`` (what `atelier archive` wrote and TorchServe reads), or
`atelier archive`'s defaults for a store without one; ``--batch-size`` and
``--max-batch-delay-ms`` override them. Each request gets its own Outcome: a bad one its 4xx,
the others their answers. The ``atelier_*`` metrics are recorded per batch as TorchServe's
handler records them (step histograms once per batch, ``atelier_handler_seconds`` once per
request, ``atelier_batch_size`` in images per forward pass, ``atelier_batch_requests`` in
requests per batch).

Workers (atelier.serving.workers). ``--workers N`` (default ``$ATELIER_KSERVE_WORKERS``, else
1) runs N processes on the port under uvicorn's supervisor, each loading the model itself;
``/metrics`` then sums them all (prometheus_client's multiprocess mode, in a private folder
removed at exit). A worker that dies is restarted; one that cannot load the model stops the
server (non-zero exit). Each worker's torch uses ``--torch-threads`` intra-op threads
(default ``$OMP_NUM_THREADS``, else the cores / N, at least 1). KServe's TimingMiddleware,
which logs two ``kserve.trace`` lines per request, is left out of the app (the histograms hold
the same timings), and uvicorn's access log is off unless ``--access-log`` is given: at full
load those lines cost about a sixth of a worker's CPU (measured with py-spy), for counts that
``atelier_requests_total{protocol, code}`` holds.

Binding. ``ModelServer.start()`` builds a ``RESTServer`` whose uvicorn config is hard-wired to
``host="0.0.0.0"`` and starts gRPC on 8081 by default. ``serve()`` therefore uses ModelServer
for what it sets up (logging, the model registry, the data plane), lets ``RESTServer`` add
KServe's middleware, routes and error handlers to the app, and runs uvicorn itself on
``--host`` with RESTServer's settings; no gRPC server is started.

kserve is imported only inside ``build_app()``: ``kserve.model_server`` parses ``sys.argv`` when it
is imported (``parse_known_args``, with prefix matching: ``--model`` would set its
``--model_name``, ``--co`` its ``--configure_logging``), so the arguments are cleared first, and
processes that only launch the runtime (the CLI, the tests) never import it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import zipfile
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from uvicorn.config import STARTUP_FAILURE

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
from atelier.serving.batcher import BatchPolicy, MicroBatcher, torchserve_batching
from atelier.serving.workers import (
    MAX_WORKERS,
    WORKER_ARGV_ENV,
    WORKERS_ENV,
    ServerConfig,
    configure_parent_logging,
    default_torch_threads,
    install_metrics_route,
    multiprocess_mode,
    on_stop,
    private_dir,
    run_supervisor,
)
from atelier.training.config import ArchiveDefaults

if TYPE_CHECKING:
    from starlette.datastructures import Headers
    from starlette.requests import Request
    from starlette.responses import Response

    from atelier.runtime.service import InferenceService, Item, Outcome
    from atelier.serving.metrics import ServingMetrics

WORKER_APP = "atelier.serving.kserve_runtime:worker_app"  # what each worker's uvicorn loads
# Seconds a worker may leave the supervisor's ping unanswered before it is killed and
# restarted: a new worker imports this module (and torch) before it answers, which takes
# seconds on a busy machine (uvicorn's default, 5 s, kills such workers in a loop).
WORKER_HEALTHCHECK_S = 60
# Seconds a stopping server gives its requests in flight (uvicorn's graceful shutdown).
GRACE_PERIOD_S = 10
# A body over the payload limit is read and dropped up to this size before the 413 goes out,
# so the client reads the answer instead of a connection reset; past it the connection closes.
DRAIN_LIMIT = 64 * 1024 * 1024


# --- Server side: runs inside ``python -m atelier.serving.kserve_runtime``


@dataclass(frozen=True)
class ServerSettings:
    """The server process's settings: the server's own from its flags, the ones it shares with
    a TorchServe worker (spool, request limits) from ATELIER_* env vars, the batch size and
    delay from the store's TorchServe config for the model (flags override); all checked
    before anything is loaded."""

    store: Path
    model_name: str
    host: str = "127.0.0.1"
    port: int = 8080
    work_dir: Path | None = None  # the .mar is unzipped into a new folder in here (default: TMPDIR)
    serving: ServingSettings = field(default_factory=ServingSettings)
    workers: int = 1  # server processes, each with the model loaded
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    torch_threads: int = 1  # intra-op threads per worker
    access_log: bool = False  # uvicorn's line per request

    @property
    def mar(self) -> Path:
        return self.store / "model-store" / f"{self.model_name}.mar"

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> ServerSettings:
        parser = _Parser(
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
        parser.add_argument(
            "--workers",
            type=int,
            help=f"server processes on the port, each with the model loaded (default: "
            f"${WORKERS_ENV}, else 1)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            help="requests per batch at most (default: the model's batchSize in the store's "
            "config/config.properties, as TorchServe reads it)",
        )
        parser.add_argument(
            "--max-batch-delay-ms",
            type=int,
            help="how long a batch of queued requests may wait to fill up; a request to an "
            "idle server never waits (default: the model's maxBatchDelay there)",
        )
        parser.add_argument(
            "--torch-threads",
            type=int,
            help="intra-op threads per worker (default: $OMP_NUM_THREADS, else the cores / "
            "--workers, at least 1)",
        )
        parser.add_argument(
            "--access-log",
            action="store_true",
            help="log a line per request (off by default: it costs a sixth of a worker's "
            "time at full load, and atelier_requests_total counts the same)",
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
        if ns.workers is None:
            workers = _env_int(WORKERS_ENV, 1)
            _check_range(f"{WORKERS_ENV}={workers}", workers, 1, MAX_WORKERS)
        else:
            workers = ns.workers
            _check_range(f"--workers {workers}", workers, 1, MAX_WORKERS)
        batch = _batch_policy(store, name, ns.batch_size, ns.max_batch_delay_ms)
        threads = default_torch_threads(workers) if ns.torch_threads is None else ns.torch_threads
        _check_range(f"--torch-threads {threads}", threads, 1, 256)
        settings = cls(store, name, ns.host, ns.port, ns.work_dir, serving, workers, batch,
                       threads, ns.access_log)  # fmt: skip
        if not settings.mar.is_file():
            raise ConfigError(
                f"--model-name {name}: {settings.mar} does not exist",
                hint="check --store and --model-name, or run atelier archive",
            )
        return settings

    def to_argv(self) -> list[str]:
        """Flags that give these settings back (a worker process reads its settings so)."""
        argv = ["--store", str(self.store), "--model-name", self.model_name, "--host", self.host,
                "--port", str(self.port), "--workers", str(self.workers),
                "--batch-size", str(self.batch.max_batch_size),
                "--max-batch-delay-ms", str(self.batch.max_batch_delay_ms),
                "--torch-threads", str(self.torch_threads)]  # fmt: skip
        if self.work_dir is not None:
            argv += ["--work-dir", str(self.work_dir)]
        if self.access_log:
            argv.append("--access-log")
        return argv


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line on stderr (``error: ...``, exit 2), as every other error."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message, hint=f"see {self.prog} --help")


def _check_range(what: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{what}: must be between {lo} and {hi}")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


def _batch_policy(store: Path, name: str, size: int | None, delay_ms: int | None) -> BatchPolicy:
    """The flags, else the model's entry in the store's TorchServe config (what TorchServe
    batches this model with), else `atelier archive`'s defaults; bounds as `atelier archive`
    checks them (ArchiveDefaults)."""
    config = store / "config" / "config.properties"
    found = torchserve_batching(config, name)
    defaults = ArchiveDefaults()
    values = {
        "batch_size": ("--batch-size", size),
        "max_batch_delay_ms": ("--max-batch-delay-ms", delay_ms),
    }
    chosen: dict[str, int] = {}
    for key, (flag, given) in values.items():
        if given is not None:
            what, value = f"{flag} {given}", given
        elif key in found:
            what, value = f"{config}: model {name}: {key} {found[key]}", found[key]
        else:
            what, value = key, getattr(defaults, key)
        lo, hi = _bounds(key)
        _check_range(what, value, lo, hi)
        chosen[key] = value
    return BatchPolicy(chosen["batch_size"], chosen["max_batch_delay_ms"])


def _bounds(key: str) -> tuple[int, int]:
    """An ArchiveDefaults field's ge/le bounds."""
    meta = ArchiveDefaults.model_fields[key].metadata
    lo = next(m.ge for m in meta if hasattr(m, "ge"))
    hi = next(m.le for m in meta if hasattr(m, "le"))
    return int(lo), int(hi)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from exc
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not between 1 and 65535")
    return port


class ModelRuntime:
    """The .mar unzipped and loaded; concurrent Items are answered in micro-batches
    (atelier.serving.batcher) on one inference thread."""

    def __init__(self, settings: ServerSettings, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_dir: Path | None = None
        self.service: InferenceService | None = None
        self.dims = (settings.model_name, "unknown")
        # One forward pass at a time, like one TorchServe worker; the event loop stays free
        # and queues the requests that arrive meanwhile for the next batch.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atelier-infer",
                                        initializer=self._set_threads)  # fmt: skip
        self.batcher: MicroBatcher[Item, Outcome] = MicroBatcher(
            self.run, settings.batch, self._pool
        )

    def _set_threads(self) -> None:
        import torch

        torch.set_num_threads(self.settings.torch_threads)

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
        self._set_threads()
        self.service = InferenceService.from_dir(self.model_dir, version, s.serving)
        self.dims = (self.service.spec.name, self.service.spec.version)

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.serving.max_payload_bytes

    def run(self, items: list[Item]) -> list[Outcome]:
        """One batch, on the inference thread: one Outcome per Item (a bad one is its own
        4xx), and the batch's metrics as TorchServe's handler records them."""
        assert self.service is not None
        outcomes, stats = self.service.handle(items)
        self.metrics.observe(self.dims, outcomes, stats)
        return outcomes

    async def infer(self, item: Item) -> Outcome:
        return await self.batcher.submit(item)

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


def build_app(
    settings: ServerSettings, grace_period_s: int = GRACE_PERIOD_S
) -> tuple[Any, ModelRuntime]:
    """In this process: load the model and make KServe's app with our routes before KServe's
    (and, with several workers, the /metrics that sums them before KServe's /metrics)."""
    del sys.argv[1:]  # kserve.model_server parses sys.argv on import (see the module doc)
    import prometheus_client
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    from atelier.serving.metrics import ServingMetrics

    prometheus_client.disable_created_metrics()  # no *_created series, as on TorchServe
    runtime = ModelRuntime(settings, ServingMetrics())
    try:
        model = make_kserve_model(runtime)
        model.load()
        server = ModelServer(http_port=settings.port, workers=1, enable_grpc=False)
        server.register_model(model)
        if multiprocess_mode():
            install_metrics_route(app)  # before KServe's /metrics, which knows one process
        install_routes(app, model, runtime)  # before RESTServer adds KServe's routes
        rest = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            server.dataplane,
            server.model_repository_extension,
            settings.port,
            workers=1,
            grace_period=grace_period_s,
        )
        rest.create_application()  # KServe's middleware, routes and error handlers
        _drop_timing_trace(app)
    except BaseException:
        runtime.close()
        raise
    # What is loaded stays for the life of the process: out of the garbage collector's
    # sight, so a full collection while serving (or at exit) does not walk it again.
    gc.freeze()
    return app, runtime


def _drop_timing_trace(app: Any) -> None:
    """KServe's TimingMiddleware writes two kserve.trace lines per request (wall and CPU
    seconds of the route): a third of the event loop's time per request (py-spy), for the
    timings the request_*_seconds and atelier_*_seconds histograms already hold."""
    from timing_asgi import TimingMiddleware

    app.user_middleware = [m for m in app.user_middleware if m.cls is not TimingMiddleware]


def worker_app() -> Any:
    """The app factory each worker process's uvicorn calls (several workers; see workers)."""
    settings = ServerSettings.from_args(json.loads(os.environ[WORKER_ARGV_ENV]))
    try:
        app, runtime = build_app(settings)
    except AtelierError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)  # the supervisor stops the server, not restart this worker
    on_stop(runtime.close)
    return app


def uvicorn_config(settings: ServerSettings, app: Any, grace_period_s: int) -> ServerConfig:
    """What KServe's RESTServer sets (no log config of uvicorn's own, the grace period, a
    65 s keep-alive), on our host; and how long a worker may leave the supervisor's ping
    unanswered (a spawned worker imports torch before it can answer)."""
    return ServerConfig(
        app,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        factory=isinstance(app, str),
        log_config=None,
        timeout_graceful_shutdown=grace_period_s,
        timeout_keep_alive=65,
        loop="auto",
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        access_log=settings.access_log,
    )


def serve(settings: ServerSettings, grace_period_s: int = GRACE_PERIOD_S) -> None:
    """Load the model and serve it until SIGTERM or SIGINT: in this process with one worker,
    else in ``settings.workers`` worker processes under a supervisor (atelier.serving.workers)."""
    import uvicorn

    if settings.workers > 1:
        own = private_dir(settings.work_dir, settings.model_name)
        worker = replace(settings, work_dir=own)
        os.environ[WORKER_ARGV_ENV] = json.dumps(worker.to_argv())
        configure_parent_logging()
        run_supervisor(uvicorn_config(settings, WORKER_APP, grace_period_s), own)
        return
    app, runtime = build_app(settings, grace_period_s)
    on_stop(runtime.close)
    try:
        uvicorn.Server(uvicorn_config(settings, app, grace_period_s)).run()
    finally:
        runtime.close()


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    # While loading, SIGTERM/SIGINT end the process through serve()'s cleanup. While serving,
    # uvicorn handles them (graceful shutdown), then restores the handler ServerConfig set and
    # raises the signal again: the runtime's cleanup, and exit status 0. With several workers
    # the supervisor takes them and stops the workers (atelier.serving.workers).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit)
    with exit_on_error():
        serve(ServerSettings.from_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
