"""The drift sidecar's HTTP surface (FastAPI on uvicorn, bound to 127.0.0.1 by default).

/healthz, /readyz, /metrics, /feedback, /ingest, /reports, /reports/latest.(html|json),
/reports/<id>.(html|json). Errors are ``{"error": {"type", "message"}}`` with the status
of their AtelierError class.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from atelier.drift.feedback import parse_label
from atelier.drift.service import DriftService
from atelier.runtime.errors import (
    AtelierError,
    InvalidFeedbackError,
    MalformedRequestError,
    SpoolUnavailableError,
    http_answer,
)
from atelier.runtime.records import SCHEMA, FeatureSpool

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
