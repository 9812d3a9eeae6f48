"""One batch of requests in, one answer per request out: the code every runtime shares.

A batch may mix protocols and may hold bad requests: each bad request gets its own 4xx
answer and the good ones are classified together in one forward pass. Step timings come
back with the answers so each runtime can put them in its own metrics.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atelier.runtime import metrics
from atelier.runtime.errors import MalformedRequestError, RequestError, http_answer
from atelier.runtime.features import all_features
from atelier.runtime.inference import Classifier
from atelier.runtime.protocol import (
    BINARY_HEADER,
    Limits,
    Request,
    format_answer,
    parse_request,
    pick_upload,
)
from atelier.runtime.records import FeatureSpool, make_records
from atelier.runtime.settings import ServingSettings

STEPS = metrics.STEPS
log = logging.getLogger(__name__)


@dataclass
class Item:
    """One request as a runtime received it."""

    payload: Any  # bytes, decoded JSON, or a dict of multipart fields
    content_type: str | None = None
    content_length: int | None = None
    top_k: Any = None
    request_id: str | None = None  # X-Request-Id, or the runtime's own id
    multipart: bool = False
    expect: str | None = None  # the protocol of the route, when the runtime knows it
    binary_header: str | None = None  # Inference-Header-Content-Length (v2 binary data)


@dataclass
class Outcome:
    status: int
    body: dict[str, Any]
    protocol: str = "unknown"
    error: str | None = None  # the error type, for the error counter
    headers: dict[str, str] = field(default_factory=dict)  # X-Atelier-Error on errors
    binary: bytes | None = None  # v2 binary outputs: the bytes after the JSON body


def encode(outcome: Outcome) -> tuple[bytes, dict[str, str]]:
    """An answer's bytes and headers, for every runtime: JSON (``json.dumps``, the same bytes
    on TorchServe and KServe), or with binary outputs the JSON header, then the binary data,
    with Inference-Header-Content-Length."""
    head = json.dumps(outcome.body).encode()
    headers = {**outcome.headers, "Content-Type": "application/json"}
    if outcome.binary is None:
        return head, headers
    headers["Content-Type"] = "application/octet-stream"
    headers[BINARY_HEADER] = str(len(head))
    return head + outcome.binary, headers


@dataclass
class BatchStats:
    seconds: dict[str, float] = field(default_factory=dict)
    images: int = 0
    requests: int = 0
    spool_errors: dict[str, int] = field(default_factory=dict)  # failed spool writes by reason

    @property
    def total_seconds(self) -> float:
        """Preprocess + inference + postprocess: the handler's time for this batch."""
        return sum(self.seconds.values())


def _guess_protocol(item: Item) -> str:
    """Label a refused request for the metrics: the route's protocol, else the body's look."""
    if item.expect:
        return item.expect
    if item.binary_header is not None:
        return "v2"  # the binary data extension is v2's
    payload = item.payload
    if item.multipart:
        return "raw"
    if isinstance(payload, dict):
        return "v1" if "instances" in payload else "v2" if "inputs" in payload else "unknown"
    media = (item.content_type or "").split(";")[0].strip().lower()
    if isinstance(payload, bytes | bytearray) and media != "application/json":
        return "raw" if bytes(payload[:1]) not in (b"{", b"[") else "unknown"
    return "unknown"


def _refused(err: RequestError, item: Item) -> Outcome:
    protocol = item.expect or err.protocol or _guess_protocol(item)
    status, body, headers = http_answer(err, protocol)
    return Outcome(status, body, protocol, err.kind, headers)


class InferenceService:
    def __init__(self, classifier: Classifier, limits: Limits | None = None,
                 spool: FeatureSpool | None = None, input_sample: float = 0.0) -> None:  # fmt: skip
        self.classifier = classifier
        self.spec = classifier.spec
        self.limits = limits or Limits()
        self.spool = spool
        self.input_sample = input_sample  # share of requests whose inputs are spooled
        self._sampler = random.Random()

    @classmethod
    def from_dir(
        cls, model_dir: Path, version: str | None = None, settings: ServingSettings | None = None
    ) -> InferenceService:
        """The service for a model folder. Without ``settings``, they are read from the env
        first, so a bad ATELIER_* value stops the load before the model is read."""
        settings = ServingSettings.from_env() if settings is None else settings
        classifier = Classifier.from_dir(model_dir, version=version)
        return cls(classifier, settings.limits, settings.open_spool(),
                   input_sample=settings.spool_input_sample_percent / 100)  # fmt: skip

    def _parse(self, item: Item) -> Request:
        payload, content_type = item.payload, item.content_type
        if item.multipart:
            payload, content_type = pick_upload(payload)
        req = parse_request(
            payload,
            self.spec,
            self.limits,
            content_type=content_type,
            content_length=item.content_length,
            top_k=item.top_k,
            request_id=item.request_id,
            binary_header=item.binary_header,
        )
        if item.expect and req.protocol != item.expect:
            names = {"raw": "an image", "v1": "KServe v1 JSON", "v2": "KServe v2 JSON"}
            err = MalformedRequestError(
                f"this endpoint takes {names[item.expect]}, the body is {names[req.protocol]}"
            )
            err.protocol = item.expect
            raise err
        return req

    def _spool(
        self, batch: np.ndarray, probs: np.ndarray, parsed: list[tuple[int, Request]]
    ) -> None:
        """Best effort: the spool never fails a request (it counts its own failures)."""
        assert self.spool is not None
        try:
            features = all_features(batch, probs)
            records = []
            offset = 0
            for _, req in parsed:
                n = len(req.images)
                sampled = self.input_sample and self._sampler.random() < self.input_sample
                records += make_records(req.request_id, req.protocol, self.spec.name,
                                        self.spec.version, features, offset, n,
                                        inputs=batch if sampled else None)  # fmt: skip
                offset += n
        except Exception:  # a feature bug must not fail the answers already made
            log.exception("feature records for the batch could not be made")
            return
        self.spool.write(records)

    def handle(self, items: list[Item]) -> tuple[list[Outcome], BatchStats]:
        t0 = time.perf_counter()
        outcomes: list[Outcome | None] = [None] * len(items)
        parsed: list[tuple[int, Request]] = []
        for i, item in enumerate(items):
            try:
                parsed.append((i, self._parse(item)))
            except RequestError as err:
                outcomes[i] = _refused(err, item)
            except Exception as exc:  # a parser gap must not fail the other requests of the batch
                log.exception("request %d of the batch could not be parsed", i)
                gap = MalformedRequestError(f"request could not be parsed ({type(exc).__name__})")
                outcomes[i] = _refused(gap, item)
        stats = BatchStats(requests=len(items))
        t1 = time.perf_counter()
        if parsed:
            batch = np.concatenate([req.images for _, req in parsed])
            probs = self.classifier.predict_proba(batch, batch_size=max(1, len(batch)))
            t2 = time.perf_counter()
            offset = 0
            for i, req in parsed:
                n = len(req.images)
                body, binary = format_answer(req, probs[offset : offset + n], self.spec)
                outcomes[i] = Outcome(200, body, req.protocol,
                                      binary=binary if req.binary_outputs else None)  # fmt: skip
                offset += n
            stats.images = len(batch)
            # Records only once every answer of the batch is made, so a record never exists
            # for a request that was not answered 200; one write for the whole batch.
            if self.spool is not None:
                self._spool(batch, probs, parsed)
        else:
            t2 = t1
        if self.spool is not None:  # also the failures of a folder that could not be opened
            stats.spool_errors = self.spool.take_errors()
        t3 = time.perf_counter()
        stats.seconds = {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2}
        return [o for o in outcomes if o is not None], stats
