"""The serving metrics are declared once (atelier.runtime.metrics); TorchServe's metrics.yaml
is generated from that table and must not be stale."""

from __future__ import annotations

import pytest
import yaml

from atelier.runtime import metrics
from atelier.training.archive import METRICS_CONFIG

pytestmark = pytest.mark.unit


def test_metrics_yaml_model_metrics_are_generated_from_the_declaration() -> None:
    text = METRICS_CONFIG.read_text()
    assert "do not edit" in text.split("model_metrics:", 1)[0].splitlines()[-1]
    assert (
        text.split("\nmodel_metrics:", 1)[1]
        == metrics.render_model_metrics().split("model_metrics:", 1)[1]
    ), "stale: run python -m atelier.tools.generated"


def test_declaration_and_yaml_agree() -> None:
    doc = yaml.safe_load(METRICS_CONFIG.read_text())["model_metrics"]
    declared = {(m.kind, m.name, tuple(m.labels)) for m in metrics.METRICS}
    written = {
        (kind, entry["name"], tuple(entry["dimensions"]))
        for kind, entries in doc.items()
        for entry in entries
    }
    assert declared == written
