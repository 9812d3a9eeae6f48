"""monitoring/prometheus/: promtool checks, the rule tests, and what every alert must carry."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from atelier.tools.paths import project_file

pytestmark = pytest.mark.unit

PROM = project_file("monitoring/prometheus")
RUNBOOKS = project_file("monitoring/RUNBOOKS.md")
SEVERITIES = {"page", "ticket", "info"}
ANNOTATIONS = {"summary", "description", "runbook_url"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run make setup (apt-get install prometheus)"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=PROM, timeout=120)


def rule_files() -> list[Path]:
    return sorted((PROM / "rules").glob("*.yml"))


def alerts() -> list[dict]:
    return [
        rule
        for path in rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def rule_tests() -> list[dict]:
    return [
        case
        for path in sorted((PROM / "tests").glob("*.yml"))
        for case in yaml.safe_load(path.read_text())["tests"]
    ]


def test_promtool_checks_the_config_and_every_rule_file() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "rules", *[str(p) for p in rule_files()])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_tests_pass() -> None:
    tests = sorted(str(p) for p in (PROM / "tests").glob("*.yml"))
    assert tests
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_tests_load_every_rule_file() -> None:
    for path in sorted((PROM / "tests").glob("*.yml")):
        loaded = {
            (path.parent / f).resolve() for f in yaml.safe_load(path.read_text())["rule_files"]
        }
        assert loaded == {p.resolve() for p in rule_files()}, path


def test_the_issue_lists_alerts_all_exist() -> None:
    names = {a["alert"] for a in alerts()}
    assert {
        "ModelServerDown", "ErrorBudgetBurn", "HighLatencyP99", "WorkerRestarts",
        "DriftDetected", "DriftCritical", "LiveAccuracyDrop", "DriftSidecarDown",
        "DriftSidecarLagging", "NoTraffic",
    } <= names  # fmt: skip


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: f"{a['alert']}-{a['labels']['severity']}")
def test_every_alert_has_severity_annotations_for_and_a_runbook(alert: dict) -> None:
    assert alert["labels"]["severity"] in SEVERITIES
    missing = ANNOTATIONS - set(alert.get("annotations", {}))
    assert not missing, f"{alert['alert']} lacks annotations {sorted(missing)}"
    assert "for" in alert, f"{alert['alert']} has no `for`"
    url = alert["annotations"]["runbook_url"]
    path, _, anchor = url.partition("#")
    assert path == "monitoring/RUNBOOKS.md" and anchor
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.M)
    }
    assert anchor in headings, f"RUNBOOKS.md has no section for #{anchor}"


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: f"{a['alert']}-{a['labels']['severity']}")
def test_every_alert_has_a_firing_and_a_quiet_rule_test(alert: dict) -> None:
    name, severity = alert["alert"], alert["labels"]["severity"]
    checks = [c for case in rule_tests() for c in case.get("alert_rule_test", [])]
    fires = [
        c
        for c in checks
        if c["alertname"] == name
        and any(e["exp_labels"].get("severity") == severity for e in c.get("exp_alerts", []))
    ]
    quiet = [c for c in checks if c["alertname"] == name and not c.get("exp_alerts")]
    assert fires, f"no rule test where {name} ({severity}) fires"
    assert quiet, f"no rule test where {name} stays quiet"


def test_slo_objectives_are_series_the_alerts_read() -> None:
    slo = yaml.safe_load((PROM / "rules" / "slo.yml").read_text())
    records = {r["record"]: r["expr"] for g in slo["groups"] for r in g["rules"]}
    assert (
        float(re.search(r"vector\(([0-9.]+)\)", records["atelier:slo_availability:objective"])[1])
        < 1
    )
    text = (PROM / "rules" / "alerts.yml").read_text()
    assert "atelier:slo_availability:objective" in text
    assert "atelier:slo_latency_p99:objective_seconds" in text


def test_scrape_config_has_the_label_contract_jobs() -> None:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in cfg["scrape_configs"]}
    assert {"atelier-torchserve", "atelier-kserve", "atelier-drift", "prometheus"} <= jobs
    assert cfg["rule_files"] == ["rules/*.yml"]
