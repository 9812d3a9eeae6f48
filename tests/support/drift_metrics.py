"""What the drift sidecar exports on /metrics: every series name and its label names, read
from `atelier.drift.service.DriftMetrics` (and the one gauge the app adds), so tests can
check rules, dashboards and docs against the code instead of a copied list."""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

# Labels Prometheus and service discovery add to every scraped series (monitoring/README.md,
# "Label contract"; `pod` from the chart's bundled scrape config and the Prometheus operator).
TARGET_LABELS = frozenset({"job", "instance", "model", "namespace", "pod"})


@cache
def drift_series() -> dict[str, frozenset[str]]:
    """Series name -> label names, for every series a drift sidecar can export.

    Counters appear as `<name>_total` (and `_created`), histograms as `_bucket` (with `le`),
    `_sum`, `_count`. A labelled metric gets one child with placeholder values, so its series
    are listed before anything was observed.
    """
    from atelier.drift.app import create_app
    from atelier.drift.service import DriftMetrics
    from atelier.drift.settings import DriftSettings

    metrics = DriftMetrics()
    create_app(SimpleNamespace(metrics=metrics, s=DriftSettings()))  # type: ignore[arg-type]
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            value.labels(*("x" for _ in value._labelnames))
    return _series(metrics.registry)


def _series(registry: CollectorRegistry) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            out[sample.name] = frozenset(sample.labels)
    return out


def drift_metric_labels() -> dict[str, frozenset[str]]:
    """Metric name as documented (`<name>_total` for counters, the base name for
    histograms) -> label names (without `le`)."""
    series = drift_series()
    out: dict[str, frozenset[str]] = {}
    for name, labels in series.items():
        if name.endswith("_created"):
            continue
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and f"{name.removesuffix(suffix)}_bucket" in series:
                name = name.removesuffix(suffix)
        out[name] = labels - {"le"}
    return out
