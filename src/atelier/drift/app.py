"""The drift sidecar's HTTP surface (FastAPI on uvicorn, bound to 127.0.0.1 by default).

/healthz, /readyz, /metrics, /feedback, /ingest, /reports, /reports/latest.(html|json),
/reports/<id>.(html|json). Errors are ``{"error": {"type", "message"}}`` with the status
of their AtelierError class; a body that fails its declared type is a 400
``malformed_request`` in the same shape.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel

from atelier.drift.feedback import parse_label
from atelier.drift.reference import VersionCatalog
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
from atelier.drift.service import DriftService
from atelier.runtime.errors import (
    AtelierError,
    EmptyBodyError,
    InvalidFeedbackError,
    InvalidRecordsError,
    MalformedRequestError,
    PayloadTooLargeError,
    ReferenceUnavailableError,
    SpoolUnavailableError,
    UnsupportedMediaTypeError,
    http_answer,
)
from atelier.runtime.records import FeatureSpool

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
        status, body = http_answer(exc)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = MalformedRequestError(f"expected {BODY_SHAPE}{_shape_problem(exc)}")
        status, body = http_answer(err)
        return JSONResponse(body, status_code=status)

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
    async def feedback(request: Request) -> dict[str, Any]:
        body = await _json(request, InvalidFeedbackError)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("request_id"), str)
            or "label" not in body
        ):
            service.metrics.feedback.labels("invalid").inc()
            raise InvalidFeedbackError(
                'expected {"request_id": "...", "label": <class id or name>}'
            )
        index = body.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InvalidFeedbackError("index must be a non-negative integer")
        ref = service.reference
        if ref is None:
            raise InvalidFeedbackError(f"not ready: {service.not_ready_reason}")
        try:
            label = parse_label(body["label"], ref.class_names)
            correct = service.feedback.record(body["request_id"], label, index)
        except AtelierError as exc:
            service.metrics.feedback.labels(exc.kind).inc()
            raise
        service.metrics.feedback.labels("joined").inc()
        service.refresh_accuracy()
        return {"request_id": body["request_id"], "index": index, "label": ref.class_names[label],
                "correct": bool(correct)}  # fmt: skip

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
        return {
            "reports": service.store.list(),
            "status": {k: v.__dict__ for k, v in service.status.items()},
        }

    @app.get("/reports/{name}")
    def report(name: str) -> FileResponse:
        stem, _, ext = name.rpartition(".")
        if ext not in ("html", "json") or not stem:
            raise MalformedRequestError("ask for <id>.html or <id>.json")
        path = service.store.path(stem, ext)
        media = "text/html" if ext == "html" else "application/json"
        return FileResponse(os.fspath(path), media_type=media)

    return app
