"""The drift sidecar's HTTP surface (FastAPI on uvicorn, bound to 127.0.0.1 by default).

/healthz, /readyz, /metrics, /feedback, /ingest, /reports, /reports/latest.(html|json),
/reports/<id>.(html|json). Errors are ``{"error": {"type", "message"}}`` with the status
of their AtelierError class.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from atelier.drift.service import DriftService
from atelier.runtime.errors import (
    AtelierError,
    DatabaseUnavailableError,
    InvalidFeedbackError,
    MalformedRequestError,
    ReportNotFoundError,
    SpoolUnavailableError,
    http_answer,
)
from atelier.runtime.records import SCHEMA, FeatureSpool

MAX_REQUEST_ID = 128
REPORT_ID = re.compile(r"^\d{8}T\d{12}-[A-Za-z0-9._-]{1,64}-[A-Za-z0-9_]{1,64}$")
REQUIRED = ("request_id", "model_version", "predicted_class", "confidence")


def create_app(service: DriftService) -> FastAPI:
    app = FastAPI(title="atelier drift sidecar", docs_url=None, redoc_url=None)
    since = Gauge("atelier_drift_seconds_since_last_report", "Seconds since the last report",
                  registry=service.metrics.registry)  # fmt: skip
    ingest_spool: dict[str, FeatureSpool] = {}

    @app.exception_handler(AtelierError)
    async def _typed(_: Request, exc: AtelierError) -> JSONResponse:
        status, body = http_answer(exc)
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
        if len(request_id) > MAX_REQUEST_ID:
            service.metrics.feedback.labels("invalid").inc()
            raise InvalidFeedbackError(f"request_id is longer than {MAX_REQUEST_ID} characters")
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

    @app.post("/ingest")
    async def ingest(request: Request) -> dict[str, int]:
        """Feature records over HTTP, for clusters without a shared volume: they are appended
        to a spool file of their own and go through the same path as the handler's."""
        body = await _json(request, MalformedRequestError)
        records = body.get("records") if isinstance(body, dict) and "records" in body else body
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list) or not records:
            raise MalformedRequestError(
                'expected a record, a list of records or {"records": [...]}'
            )
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
                raise MalformedRequestError(f"records[{i}]: schema must be {SCHEMA!r}")
            missing = [k for k in REQUIRED if k not in rec]
            if missing:
                raise MalformedRequestError(f"records[{i}] lacks {', '.join(missing)}")
        spool = ingest_spool.get("spool")
        if spool is None:
            spool = ingest_spool["spool"] = FeatureSpool(service.s.spool_dir)
        if not spool.write(records):
            raise SpoolUnavailableError(
                f"{len(records)} records could not be stored in {spool.path}: "
                f"{', '.join(sorted(spool.take_errors())) or 'unavailable'}; nothing was accepted"
            )
        return {"accepted": len(records)}

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
