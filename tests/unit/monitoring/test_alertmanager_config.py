"""monitoring/alertmanager/: amtool checks the config and proves every route."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from atelier.tools.paths import project_file

pytestmark = pytest.mark.unit

AM = project_file("monitoring/alertmanager")
ALERTS = project_file("monitoring/prometheus/rules/alerts.yml")


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("amtool")
    assert exe, "amtool is missing: run make setup (apt-get install prometheus-alertmanager)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def cases() -> list[dict]:
    return yaml.safe_load((AM / "route_tests.yml").read_text())


@pytest.mark.parametrize(
    "path",
    [AM / "alertmanager.yml", *sorted((AM / "examples").glob("*.yml"))],
    ids=lambda p: p.name,
)
def test_amtool_check_config(path: Path) -> None:
    result = amtool("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", cases(), ids=lambda c: f"{c['labels']}->{c['receiver']}")
def test_route_reaches_its_receiver(case: dict) -> None:
    labels = [f"{k}={v}" for k, v in case["labels"].items()]
    result = amtool(
        "config", "routes", "test", f"--config.file={AM / 'alertmanager.yml'}",
        f"--verify.receivers={case['receiver']}", *labels,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_receiver_fails_the_route_test() -> None:
    """The route test can fail: a page alert does not reach the ticket receiver."""
    result = amtool(
        "config", "routes", "test", f"--config.file={AM / 'alertmanager.yml'}",
        "--verify.receivers=ticket", "alertname=ModelServerDown", "severity=page",
    )  # fmt: skip
    assert result.returncode != 0


def test_every_severity_the_alerts_use_has_a_route_case() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    severities = {r["labels"]["severity"] for g in rules["groups"] for r in g["rules"]}
    tested = {c["labels"].get("severity") for c in cases()}
    assert severities <= tested


def test_grouping_and_inhibition() -> None:
    cfg = yaml.safe_load((AM / "alertmanager.yml").read_text())
    assert cfg["route"]["group_by"] == ["alertname", "model", "namespace"]
    down = [
        r for r in cfg["inhibit_rules"] if r["source_matchers"] == ['alertname="ModelServerDown"']
    ]
    assert down and "ErrorBudgetBurn" in down[0]["target_matchers"][0]
    assert "HighLatencyP99" in down[0]["target_matchers"][0]
    assert {"namespace", "job", "model"} <= set(down[0]["equal"])


def test_no_secret_lives_in_the_repo() -> None:
    for path in [AM / "alertmanager.yml", *(AM / "examples").glob("*.yml")]:
        text = path.read_text()
        for key in ("api_url:", "routing_key:", "service_key:", "auth_password:", "slack_api_url:"):
            assert key not in text, f"{path.name} holds a secret in {key} (use the *_file form)"
