"""Rules, rule tests, dashboards and docs name only drift metrics the sidecar exports, with
the labels it exports (atelier.drift.service.DriftMetrics is the one list): a metric that
is renamed or removed, or a label that is added, cannot leave a rule or panel reading
nothing."""

from __future__ import annotations

import re

import pytest
import yaml

from atelier.monitoring.dashboards import build_all, panel_queries
from atelier.tools.paths import project_file
from support.drift_metrics import TARGET_LABELS, drift_metric_labels, drift_series
from support.promql import selectors

pytestmark = pytest.mark.unit

PROM = project_file("monitoring/prometheus")
DRIFT_NAME = re.compile(r"\batelier_drift_[a-z_]*[a-z]\b")
DOCS = [
    "monitoring/README.md",
    "monitoring/RUNBOOKS.md",
    "monitoring/grafana/README.md",
    "services/drift/README.md",
    "handlers/README.md",
]


def _rules() -> list[dict]:
    return [
        rule
        for path in sorted((PROM / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def _rule_tests() -> list[dict]:
    return [
        case
        for path in sorted((PROM / "tests").glob("*.yml"))
        for case in yaml.safe_load(path.read_text())["tests"]
    ]


def _exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert and recording rule, dashboard target and variable."""
    out = [(r.get("alert") or r["record"], r["expr"]) for r in _rules()]
    for uid, board in build_all().items():
        out += [(f"{uid}/{q.panel_title}", q.expr) for q in panel_queries(board)]
        out += [
            (f"{uid}/${v['name']}", re.sub(r"^label_values\((.*), \w+\)$", r"\1", v["query"]))
            for v in board["templating"]["list"]
            if v["type"] == "query"
        ]
    out += [
        (case["name"], t["expr"])
        for case in _rule_tests()
        for t in case.get("promql_expr_test", [])
    ]
    return out


def _labels(matchers: str) -> set[str]:
    return set(re.findall(r"(\w+)\s*[=!]~?", matchers))


def test_the_list_is_the_sidecars() -> None:
    names = drift_metric_labels()
    assert names["atelier_drift_severity"] == {"model_version", "window"}
    assert names["atelier_drift_reference_accuracy"] == {"model_version"}
    assert names["atelier_drift_ship_errors_total"] == {"reason"}
    assert "atelier_drift_database_seconds_bucket" in drift_series()
    assert "atelier_drift_seconds_since_last_report" in names  # added by the app
    assert "atelier_drift_reference_info" not in names


EXPRS = _exprs()


@pytest.mark.parametrize(("where", "expr"), EXPRS, ids=[w for w, _ in EXPRS])
def test_every_drift_series_read_exists_with_those_labels(where: str, expr: str) -> None:
    series = drift_series()
    for name, matchers in selectors(expr):
        if not name.startswith("atelier_drift_"):
            continue
        assert name in series, f"{where}: the drift sidecar exports no {name}"
        unknown = _labels(matchers) - series[name] - TARGET_LABELS
        assert not unknown, f"{where}: {name} has no label {sorted(unknown)}"


def test_rule_test_series_carry_the_sidecars_labels() -> None:
    """Input series of the promtool tests look like a scrape of the sidecar: its own labels,
    all of them, plus target labels only."""
    series = drift_series()
    checked = 0
    for case in _rule_tests():
        for s in case.get("input_series", []):
            (name, matchers), *_ = selectors(s["series"])
            if not name.startswith("atelier_drift_"):
                continue
            checked += 1
            assert name in series, f"{case['name']}: the drift sidecar exports no {name}"
            own = _labels(matchers) - TARGET_LABELS
            assert own == series[name] - {"le"}, (
                f"{case['name']}: {name} with labels {sorted(own)}, the sidecar exports "
                f"{sorted(series[name])}"
            )
    assert checked


@pytest.mark.parametrize("doc", DOCS)
def test_docs_name_only_exported_drift_metrics(doc: str) -> None:
    names = drift_metric_labels().keys() | drift_series().keys()
    # A removed metric may be named where a doc says it is gone ("The former ...").
    text = re.sub(r"[Tt]he former `atelier_drift_\w+", "", project_file(doc).read_text())
    unknown = sorted(set(DRIFT_NAME.findall(text)) - names)
    assert not unknown, f"{doc} names drift metrics the sidecar does not export: {unknown}"


def test_the_drift_readme_table_lists_every_metric_with_its_labels() -> None:
    text = project_file("services/drift/README.md").read_text()
    section = text.split("## Metrics (`/metrics`)", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for row in re.findall(r"^\| (`atelier_drift_.*)$", section, flags=re.M):
        cells = [c.strip() for c in row.split("|")]
        labels = {x.strip() for x in cells[1].split(",") if x.strip()}
        for name in re.findall(r"`(atelier_drift_\w+)`", cells[0]):
            table[name] = labels
    exported = {n: set(labels) for n, labels in drift_metric_labels().items()}
    assert table == exported


def test_alerts_on_reporter_gauges_aggregate_the_pod_away() -> None:
    """Only the reporter exports the per-version gauges, and it moves between pods: an alert
    that kept `instance` or `pod` would resolve and fire again on every move."""
    versioned = {n for n, labels in drift_series().items() if "model_version" in labels}
    for rule in _rules():
        if "alert" not in rule:
            continue
        read = {name for name, _ in selectors(rule["expr"])} & versioned
        for name in read:
            assert re.search(
                rf"max by \((namespace, job, model, model_version\b[^)]*)\) \(\s*{name}\b",
                rule["expr"],
            ), f"{rule['alert']}: {name} is not aggregated with max by (..., model_version, ...)"


def test_the_label_contract_names_the_target_labels() -> None:
    readme = project_file("monitoring/README.md").read_text()
    for label in ("model", "namespace", "pod", "model_version"):
        assert f"`{label}`" in readme
