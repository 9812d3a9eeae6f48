"""The serving metrics in prometheus_client, for the KServe runtime.

The names, labels, help texts and buckets come from atelier.runtime.metrics, the one
declaration the TorchServe handler emits too.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from atelier.runtime import metrics as m
from atelier.runtime.service import BatchStats, Outcome


class ServingMetrics:
    """The atelier_* series: the names and labels the TorchServe handler emits."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry or REGISTRY

        def histogram(metric: m.Metric) -> Histogram:
            return Histogram(
                metric.name, metric.help, metric.labels, buckets=metric.buckets, registry=reg
            )

        def counter(metric: m.Metric) -> Counter:
            return Counter(metric.base_name, metric.help, metric.labels, registry=reg)

        self.steps = {step: histogram(metric) for step, metric in m.STEP_METRICS.items()}
        self.handler = histogram(m.HANDLER)
        self.batch_size = histogram(m.BATCH_SIZE)
        self.batch_requests = histogram(m.BATCH_REQUESTS)
        self.requests = counter(m.REQUESTS)
        self.errors = counter(m.ERRORS)
        self.spool_errors = counter(m.SPOOL_ERRORS)

    def observe(
        self, dims: tuple[str, str], outcomes: Sequence[Outcome], stats: BatchStats
    ) -> None:
        for step, seconds in stats.seconds.items():
            self.steps[step].labels(*dims).observe(seconds)
        for _ in outcomes:
            self.handler.labels(*dims).observe(stats.total_seconds)
        if stats.images:
            self.batch_size.labels(*dims).observe(stats.images)
        self.batch_requests.labels(*dims).observe(stats.requests)
        for reason, n in stats.spool_errors.items():
            self.spool_errors.labels(*dims, reason).inc(n)
        self.count(dims, outcomes)

    def count(self, dims: tuple[str, str], outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            self.requests.labels(*dims, outcome.protocol, str(outcome.status)).inc()
            if outcome.error:
                self.errors.labels(*dims, outcome.error).inc()
