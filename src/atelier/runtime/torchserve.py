"""The TorchServe side of the handler, without importing TorchServe.

handlers' entry module (training/templates/atelier_handler.py, which `atelier archive` puts
in every .mar) subclasses TorchServe's BaseHandler and calls these: rows and headers become
``Item``s, each answer gets its own status code, and the batch's timings and counts go to
TorchServe's metrics API under the names atelier.runtime.metrics declares.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from atelier.runtime import metrics as m
from atelier.runtime.errors import MODEL_LOAD_FAILED, AtelierError
from atelier.runtime.service import BatchStats, InferenceService, Item, Outcome, encode

log = logging.getLogger(__name__)


def load(context: Any) -> InferenceService:
    """The service for the worker's model folder, with the settings from the worker's env.

    A bad setting (ATELIER_SPOOL_MAX_BYTES=abc, ...) raises a ConfigError naming it; it is
    also logged as one line, since TorchServe only logs the traceback of a failed load and
    retries the worker.
    """
    model_dir = Path(context.system_properties["model_dir"])
    version = context.manifest.get("model", {}).get("modelVersion")
    try:
        return InferenceService.from_dir(model_dir, version=version)
    except AtelierError as err:
        log.error("%s %s", MODEL_LOAD_FAILED, err.one_line())
        raise


PHRASES = {200: "OK", 400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type"}


def items(data: list[dict[str, Any]], context: Any) -> list[Item]:
    """TorchServe's rows (and each row's headers) as the service's items."""
    out = []
    request_ids = getattr(context, "request_ids", None) or {}
    for i, row in enumerate(data):
        raw_headers = context.get_all_request_header(i) or {}
        headers = {str(k).lower(): v for k, v in raw_headers.items() if isinstance(v, str)}
        length = headers.get("content-length", "")
        common: dict[str, Any] = {
            "content_type": headers.get("content-type"),
            "content_length": int(length) if length.isdigit() else None,
            "top_k": headers.get("x-top-k"),
            "request_id": headers.get("x-request-id") or request_ids.get(i),
            "binary_header": headers.get("inference-header-content-length"),
        }
        if "body" in row:
            out.append(Item(row["body"], **common))
        else:  # multipart/form-data: one key per form field
            fields = {k: v for k, v in row.items()}
            out.append(Item(fields, multipart=True, **{**common, "content_type": None}))
    return out


def handle(
    service: InferenceService, data: list[dict[str, Any]], context: Any, types: Any
) -> list[bytes]:
    """Answer a TorchServe batch; ``types`` is TorchServe's MetricTypes enum."""
    outcomes, stats = service.handle(items(data, context))
    answers = []
    for i, outcome in enumerate(outcomes):
        context.set_response_status(
            code=outcome.status, phrase=PHRASES.get(outcome.status, "Error"), idx=i
        )
        body, headers = encode(outcome)
        for key, value in headers.items():
            if key == "Content-Type":  # TorchServe reads it under its own key
                context.set_response_content_type(i, value)
            else:
                context.set_response_header(i, key, value)
        answers.append(body)
    dims = [service.spec.name, service.spec.version]
    emit(context.metrics, types, dims, outcomes, stats)
    return answers


def emit(
    metrics: Any, types: Any, dims: list[str], outcomes: list[Outcome], stats: BatchStats
) -> None:
    """The batch's series, through TorchServe's metrics API (``context.metrics``)."""

    def get(metric: m.Metric) -> Any:
        kind = types.HISTOGRAM if metric.kind == "histogram" else types.COUNTER
        return metrics.get_metric(metric.name, kind)

    for step, seconds in stats.seconds.items():
        get(m.STEP_METRICS[step]).add_or_update(seconds, dimension_values=dims)
    # Whole-handler seconds, once per request in the batch: the request-weighted
    # distribution the latency SLO's p99 is computed from.
    handler = get(m.HANDLER)
    for _ in outcomes:
        handler.add_or_update(stats.total_seconds, dimension_values=dims)
    if stats.images:
        get(m.BATCH_SIZE).add_or_update(stats.images, dimension_values=dims)
    get(m.BATCH_REQUESTS).add_or_update(stats.requests, dimension_values=dims)
    requests, errors = get(m.REQUESTS), get(m.ERRORS)
    for outcome in outcomes:
        requests.add_or_update(1, dimension_values=[*dims, outcome.protocol, str(outcome.status)])
        if outcome.error:
            errors.add_or_update(1, dimension_values=[*dims, outcome.error])
    if stats.spool_errors:
        spool = get(m.SPOOL_ERRORS)
        for reason, n in stats.spool_errors.items():
            spool.add_or_update(n, dimension_values=[*dims, reason])
