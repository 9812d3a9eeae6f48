"""The drift sidecar's HTTP surface (FastAPI on uvicorn, bound to 127.0.0.1 by default).

/healthz, /readyz, /metrics, /feedback, /ingest, /reports, /reports/latest.(html|json),
/reports/<id>.(html|json). Errors are ``{"error": {"type", "message"}}`` with the status
of their AtelierError class; a body that fails its declared type is a 400
``malformed_request`` in the same shape.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel

from atelier.drift.record_model import (
    MAX_INGEST_RECORDS,
    FeatureRecord,
    IngestAnswer,
    IngestBody,
    Invalid,
    RecordGate,
    RefusedRecord,
    count_records,
)
from atelier.drift.reference import VersionCatalog
from atelier.drift.service import DriftService
from atelier.runtime.errors import (
    AtelierError,
    DatabaseUnavailableError,
    EmptyBodyError,
    InvalidFeedbackError,
    InvalidRecordsError,
    MalformedRequestError,
    PayloadTooLargeError,
    ReferenceUnavailableError,
    ReportNotFoundError,
    SpoolUnavailableError,
    UnsupportedMediaTypeError,
    http_answer,
)
from atelier.runtime.records import MAX_REQUEST_ID_LENGTH, FeatureSpool

REPORT_ID = re.compile(r"^\d{8}T\d{12}-[A-Za-z0-9._-]{1,64}-[A-Za-z0-9_]{1,64}$")
BODY_SHAPE = (
    f'a feature record, a list of 1 to {MAX_INGEST_RECORDS:,} records or {{"records": [...]}}'
)
# Refused records named in a 422's message (all of them are in a 200's "refused").
NAMED_REFUSALS = 10


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorAnswer(BaseModel):
    """Every error the sidecar answers: ``{"error": {"type", "message"}}``."""

    error: ErrorDetail


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorAnswer} for status in statuses}


class _JsonBodyRequest(Request):
    """A request whose JSON body was read within a byte limit and parsed once, before the
    route's declared body is validated (FastAPI reads it back through body() and json())."""

    _limited_body: bytes = b""
    _parsed: Any = None

    async def read_limited(self, max_bytes: int) -> None:
        media = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaTypeError(f"Content-Type {media!r}: send application/json")
        declared = self.headers.get("content-length", "")
        too_large = f"at most {max_bytes:,} bytes (ATELIER_DRIFT_INGEST_MAX_BYTES)"
        if declared.isdigit() and int(declared) > max_bytes:
            raise PayloadTooLargeError(f"the body has {int(declared):,} bytes, {too_large}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLargeError(
                    f"the body has more than {max_bytes:,} bytes, {too_large}"
                )
            chunks.append(chunk)
        self._limited_body = b"".join(chunks)
        if not self._limited_body.strip():
            raise EmptyBodyError(f"the body is empty: send {BODY_SHAPE}")
        try:
            self._parsed = json.loads(self._limited_body)
        except (ValueError, RecursionError) as exc:
            raise MalformedRequestError(f"body is not valid JSON: {exc}") from exc
        n = count_records(self._parsed)
        if n is not None and n > MAX_INGEST_RECORDS:
            raise PayloadTooLargeError(
                f"the body has {n:,} records, at most {MAX_INGEST_RECORDS:,}"
            )

    async def body(self) -> bytes:
        return self._limited_body

    async def json(self) -> Any:
        return self._parsed


def _limited_json_route(max_bytes: int) -> type[APIRoute]:
    """Routes whose JSON body is bounded: 413 before anything is parsed."""

    class LimitedJsonRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def limited(request: Request) -> Response:
                bounded = _JsonBodyRequest(request.scope, request.receive)
                await bounded.read_limited(max_bytes)
                return await handler(bounded)

            return limited

    return LimitedJsonRoute


def _shape_problem(exc: RequestValidationError) -> str:
    """The validation error of the body shape the client meant (envelope, list), if any."""
    body = exc.body
    meant = None
    if isinstance(body, dict) and "records" in body:
        meant = "IngestEnvelope"
    elif isinstance(body, list):
        meant = "list["
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if meant and len(loc) > 1 and loc[1].startswith(meant):
            where = ".".join(loc[2:])
            return f": {where + ': ' if where else ''}{err.get('msg', '')}"
    return ""


def create_app(service: DriftService) -> FastAPI:
    app = FastAPI(title="atelier drift sidecar", docs_url=None, redoc_url=None)
    since = Gauge("atelier_drift_seconds_since_last_report", "Seconds since the last report",
                  registry=service.metrics.registry)  # fmt: skip
    ingest_spool: dict[str, FeatureSpool] = {}
    spool_lock = threading.Lock()
    gate = RecordGate(VersionCatalog(service.s.store))

    @app.exception_handler(AtelierError)
    async def _typed(_: Request, exc: AtelierError) -> JSONResponse:
        status, body, headers = http_answer(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = MalformedRequestError(f"expected {BODY_SHAPE}{_shape_problem(exc)}")
        status, body, headers = http_answer(err)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready, reason = service.readiness()
        return JSONResponse({"ready": ready, "reason": reason}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        last = service.last_report
        since.set(time.time() - last if last else -1)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _json(request: Request, error: type[AtelierError]) -> Any:
        body = await request.body()
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise error(f"body is not valid JSON: {exc}") from exc

    @app.post("/feedback")
    async def feedback(request: Request) -> JSONResponse:
        """A ground-truth label for one image of a request: ``{"request_id", "label",
        "index"?}``. 200 when joined to the logged prediction (any replica's), 202 when kept
        until its prediction is shipped, 404 when no replica ever logged it."""
        body = await _json(request, InvalidFeedbackError)
        if not isinstance(body, dict):
            service.metrics.feedback.labels("invalid").inc()
            raise InvalidFeedbackError('expected a JSON object {"request_id", "label", "index"}')
        request_id, index = body.get("request_id"), body.get("index", 0)
        if not isinstance(request_id, str) or not request_id or "label" not in body:
            service.metrics.feedback.labels("invalid").inc()
            raise InvalidFeedbackError(
                'expected {"request_id": "...", "label": <class id or name>, "index": 0}'
            )
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            service.metrics.feedback.labels("invalid").inc()
            raise InvalidFeedbackError(
                f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters"
            )
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 32768:
            service.metrics.feedback.labels("invalid").inc()
            raise InvalidFeedbackError("index must be an integer from 0 to 32767")
        if not service.migrated:
            raise DatabaseUnavailableError(f"not ready: {service.not_ready_reason}")
        try:
            result = await run_in_threadpool(service.label, request_id, index, body["label"])
        except AtelierError as exc:
            service.metrics.feedback.labels(exc.kind).inc()
            raise
        service.metrics.feedback.labels(result.status).inc()
        out: dict[str, Any] = {
            "status": result.status, "request_id": request_id, "index": index,
            "label": result.label,
        }  # fmt: skip
        if result.status == "joined":
            out.update(correct=result.correct, model_version=result.model_version)
            return JSONResponse(out, status_code=200)
        out["expires_in_s"] = service.s.label_wait_s
        return JSONResponse(out, status_code=202)

    ingest_router = APIRouter(route_class=_limited_json_route(service.s.ingest_max_bytes))

    @ingest_router.post(
        "/ingest",
        response_model=IngestAnswer,
        responses=_errors(400, 413, 415, 422, 503),
    )
    def ingest(body: IngestBody) -> IngestAnswer:
        """Feature records over HTTP, for clusters without a shared volume: they are appended
        to a spool file of their own and go through the same path as the handler's.

        Each record is checked on its own: its type (`FeatureRecord`), then its model and
        version (published in the model store) and its predicted class (one of that
        version's). The good ones are stored and the bad ones listed in ``refused``, with
        200; when none is good, 422 ``invalid_records`` names them. The body is limited to
        ``ingest_max_bytes`` (413 before it is parsed) and to 10,000 records.
        """
        keep: list[FeatureRecord] = []
        refused: list[RefusedRecord] = []
        try:
            for i, rec in enumerate(body.records()):
                problem = rec.problem if isinstance(rec, Invalid) else gate.problem(rec)
                if problem is not None:
                    refused.append(RefusedRecord(index=i, **asdict(problem)))
                elif not isinstance(rec, Invalid):
                    keep.append(rec)
        except ReferenceUnavailableError as exc:
            raise ReferenceUnavailableError(
                f"the records' model versions cannot be checked: {exc.message}; nothing was "
                "accepted"
            ) from exc
        for r in refused:
            service.metrics.refused.labels(r.reason).inc()
        if not keep:
            named = "; ".join(f"records[{r.index}]: {r.message}" for r in refused[:NAMED_REFUSALS])
            more = len(refused) - NAMED_REFUSALS
            raise InvalidRecordsError(
                f"no record can be stored: {named}" + (f"; and {more} more" if more > 0 else "")
            )
        with spool_lock:
            spool = ingest_spool.get("spool")
            if spool is None:
                spool = ingest_spool["spool"] = FeatureSpool(service.s.spool_dir)
        if not spool.write(keep):
            raise SpoolUnavailableError(
                f"{len(keep)} records could not be stored in {spool.path}: "
                f"{', '.join(sorted(spool.take_errors())) or 'unavailable'}; nothing was accepted"
            )
        return IngestAnswer(accepted=len(keep), refused=refused)

    app.include_router(ingest_router)

    @app.get("/reports")
    def reports() -> dict[str, Any]:
        """The stored reports, newest first, and the newest status per window of the current
        model version: read from the shared log, so every pod answers the same."""
        spec = service.current_spec()
        leader = service.log.leader()
        return {
            "reports": service.log.list_reports(),
            "model_name": spec.model_name,
            "model_version": spec.version,
            "reporter": None if leader is None else leader[0],
            "status": service.log.latest_status(spec.model_name, spec.version),
        }

    @app.get("/reports/{name}")
    def report(name: str) -> Response:
        stem, _, ext = name.rpartition(".")
        if ext not in ("html", "json") or not stem:
            raise MalformedRequestError("ask for <id>.html or <id>.json")
        if stem != "latest" and not REPORT_ID.match(stem):
            raise ReportNotFoundError(f"{stem!r} is not a drift report id")
        found = service.log.report(None if stem == "latest" else stem)
        if found is None:
            raise ReportNotFoundError(f"no drift report {name}")
        summary, html_gz = found
        if ext == "json":
            return Response(summary, media_type="application/json")
        if html_gz is None:
            raise ReportNotFoundError(f"drift report {stem} has no HTML (report_html was off)")
        return Response(gzip.decompress(html_gz), media_type="text/html")

    return app
