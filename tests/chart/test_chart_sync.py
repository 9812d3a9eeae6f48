"""The chart's copies of monitoring/ (charts/atelier/files/) are byte-identical to their sources.

Helm cannot read outside the chart, so `atelier chart sync` copies the rules, alertmanager.yml
and the dashboards into it; this test fails when a copy is missing, differs or has no source.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atelier.cli import app
from atelier.tools import chart
from atelier.tools.paths import project_file

pytestmark = pytest.mark.chart


def test_copies_are_current() -> None:
    problems = chart.stale()
    assert not problems, "run `atelier chart sync`:\n" + "\n".join(problems)


def test_every_monitoring_file_is_copied() -> None:
    sources = {src.relative_to(project_file("")).as_posix() for src, _ in chart.pairs()}
    assert {
        "monitoring/prometheus/rules/slo.yml",
        "monitoring/prometheus/rules/recording.yml",
        "monitoring/prometheus/rules/alerts.yml",
        "monitoring/prometheus/queries/autoscaling.yml",
        "monitoring/alertmanager/alertmanager.yml",
        "monitoring/grafana/dashboards/atelier-serving.json",
        "monitoring/grafana/dashboards/atelier-drift.json",
        "monitoring/grafana/dashboards/atelier-slo.json",
    } <= sources


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A scratch copy of monitoring/ and the chart's files/."""
    root = project_file("")
    shutil.copytree(root / "monitoring", tmp_path / "monitoring")
    shutil.copytree(root / chart.CHART_DIR / "files", tmp_path / chart.CHART_DIR / "files")
    return tmp_path


def test_stale_names_each_problem_and_sync_fixes_it(tree: Path) -> None:
    files = tree / chart.CHART_DIR / "files"
    (tree / "monitoring/prometheus/rules/alerts.yml").write_text("groups: []\n")
    (files / "grafana/dashboards/atelier-slo.json").unlink()
    (files / "prometheus/rules/old.yml").write_text("groups: []\n")
    problems = chart.stale(tree)
    assert any("alerts.yml: differs" in p for p in problems)
    assert any("atelier-slo.json: missing" in p for p in problems)
    assert any("old.yml: no source" in p for p in problems)
    assert len(problems) == 3
    written = chart.sync(tree)
    assert len(written) == 3
    assert chart.stale(tree) == []
    assert (files / "prometheus/rules/alerts.yml").read_text() == "groups: []\n"


def test_cli_check() -> None:
    result = CliRunner().invoke(app, ["chart", "sync", "--check"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
