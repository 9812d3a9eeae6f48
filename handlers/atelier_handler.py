"""TorchServe entry module for atelier models: a thin subclass of BaseHandler.

Everything that matters (protocol parsing, decoding, the network, the response bodies,
the feature spool) lives in the ``atelier`` package, which `atelier archive` ships inside
the .mar. The copy in the archive is put first on sys.path, so the server runs exactly the
code the model was archived with. What is left here is TorchServe's side: reading rows and
headers, per-request status codes, and TorchServe's metrics API.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

PHRASES = {200: "OK", 400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type"}


class AtelierHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        if model_dir not in sys.path:
            sys.path.insert(0, model_dir)
        from atelier.serving.service import InferenceService, Item

        self._item = Item
        version = context.manifest.get("model", {}).get("modelVersion")
        self.service = InferenceService.from_dir(Path(model_dir), version=version)
        self.dims = [self.service.spec.name, self.service.spec.version]
        self.context = context
        self.initialized = True

    def _items(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        items = []
        request_ids = getattr(context, "request_ids", None) or {}
        for i, row in enumerate(data):
            raw_headers = context.get_all_request_header(i) or {}
            headers = {str(k).lower(): v for k, v in raw_headers.items() if isinstance(v, str)}
            length = headers.get("content-length", "")
            common = {
                "content_type": headers.get("content-type"),
                "content_length": int(length) if length.isdigit() else None,
                "top_k": headers.get("x-top-k"),
                "request_id": headers.get("x-request-id") or request_ids.get(i),
            }
            if "body" in row:
                items.append(self._item(row["body"], **common))
            else:  # multipart/form-data: one key per form field
                fields = {k: v for k, v in row.items()}
                items.append(self._item(fields, multipart=True, **{**common, "content_type": None}))
        return items

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        outcomes, stats = self.service.handle(self._items(data, context))
        answers = []
        for i, outcome in enumerate(outcomes):
            context.set_response_status(
                code=outcome.status, phrase=PHRASES.get(outcome.status, "Error"), idx=i
            )
            context.set_response_content_type(i, "application/json")
            answers.append(json.dumps(outcome.body))
        self._emit(context, outcomes, stats)
        return answers

    def _emit(self, context: Any, outcomes: list[Any], stats: Any) -> None:
        metrics = context.metrics
        for step, seconds in stats.seconds.items():
            metrics.get_metric(f"atelier_{step}_seconds", MetricTypes.HISTOGRAM).add_or_update(
                seconds, dimension_values=self.dims
            )
        # Whole-handler seconds, once per request in the batch: the request-weighted
        # distribution the latency SLO's p99 is computed from.
        handler = metrics.get_metric("atelier_handler_seconds", MetricTypes.HISTOGRAM)
        for _ in outcomes:
            handler.add_or_update(stats.total_seconds, dimension_values=self.dims)
        if stats.images:
            metrics.get_metric("atelier_batch_size", MetricTypes.HISTOGRAM).add_or_update(
                stats.images, dimension_values=self.dims
            )
        metrics.get_metric("atelier_batch_requests", MetricTypes.HISTOGRAM).add_or_update(
            stats.requests, dimension_values=self.dims
        )
        requests = metrics.get_metric("atelier_requests_total", MetricTypes.COUNTER)
        errors = metrics.get_metric("atelier_errors_total", MetricTypes.COUNTER)
        for outcome in outcomes:
            labels = [*self.dims, outcome.protocol, str(outcome.status)]
            requests.add_or_update(1, dimension_values=labels)
            if outcome.error:
                errors.add_or_update(1, dimension_values=[*self.dims, outcome.error])
