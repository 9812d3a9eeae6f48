"""The serving metrics, declared once.

Both runtimes record these series: the TorchServe handler through TorchServe's metrics API
(atelier.runtime.torchserve), the KServe runtime with prometheus_client
(atelier.serving.metrics). TorchServe drops a metric its metrics.yaml does not declare, so
the ``model_metrics`` part of training/templates/metrics.yaml is generated from this table
(`render_model_metrics`); a unit test fails when the file is stale.
"""

from __future__ import annotations

from dataclasses import dataclass

STEPS = ("preprocess", "inference", "postprocess")
DIMS = ("model_name", "model_version")
# Step timings of a small CNN on a CPU: sub-millisecond to seconds (KServe; TorchServe does
# not let buckets be set and uses the Prometheus client's defaults).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = tuple(float(2**i) for i in range(9))  # 1, 2, 4, ..., 256


@dataclass(frozen=True)
class Metric:
    name: str  # the exposed name; a counter's ends in _total
    kind: str  # "histogram" or "counter"
    unit: str
    help: str
    labels: tuple[str, ...] = DIMS
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    comment: str = ""  # written above the metric in metrics.yaml

    @property
    def base_name(self) -> str:
        """The name without _total: what prometheus_client's Counter takes."""
        return self.name.removesuffix("_total")


STEP_METRICS = {
    step: Metric(f"atelier_{step}_seconds", "histogram", "seconds", f"Seconds in {step}")
    for step in STEPS
}
HANDLER = Metric(
    "atelier_handler_seconds", "histogram", "seconds", "Seconds in the handler, per request",
    comment="Preprocess + inference + postprocess of the batch, observed once per request in it.",
)  # fmt: skip
BATCH_SIZE = Metric(
    "atelier_batch_size", "histogram", "images", "Images per forward", buckets=BATCH_BUCKETS,
    comment="Images per forward pass, and requests per TorchServe batch (at most batchSize).",
)  # fmt: skip
BATCH_REQUESTS = Metric(
    "atelier_batch_requests", "histogram", "requests",
    "Requests per batch (TorchServe's batches, the KServe runtime's micro-batches)",
    buckets=BATCH_BUCKETS,
)  # fmt: skip
REQUESTS = Metric(
    "atelier_requests_total", "counter", "requests", "Answered requests",
    labels=(*DIMS, "protocol", "code"),
)  # fmt: skip
ERRORS = Metric("atelier_errors_total", "counter", "errors", "Bad requests", labels=(*DIMS, "type"))
SPOOL_ERRORS = Metric(
    "atelier_spool_errors_total", "counter", "errors",
    "Feature-spool writes that failed (the requests were answered; the drift sidecar misses "
    "their records)",
    labels=(*DIMS, "reason"),
    comment="Failed feature-spool writes: no_space, read_only, permission, missing, other.",
)  # fmt: skip
METRICS: tuple[Metric, ...] = (
    *STEP_METRICS.values(), HANDLER, BATCH_SIZE, BATCH_REQUESTS, REQUESTS, ERRORS, SPOOL_ERRORS,
)  # fmt: skip


def render_model_metrics() -> str:
    """The ``model_metrics:`` section of TorchServe's metrics.yaml, from ``METRICS``."""
    lines = ["model_metrics:"]
    for kind in ("histogram", "counter"):
        lines.append(f"  {kind}:")
        for m in (m for m in METRICS if m.kind == kind):
            if m.comment:
                lines.append(f"    # {m.comment}")
            lines.append(f"    - name: {m.name}")
            lines.append(f"      unit: {m.unit}")
            lines.append(
                f"      dimensions: [{', '.join(repr(x) for x in m.labels)}]".replace("'", '"')
            )
    return "\n".join(lines) + "\n"
