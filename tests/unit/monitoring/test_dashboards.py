"""The Grafana dashboards: committed JSON is a fresh build, and every query reads real series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from atelier.monitoring import dashboards
from atelier.monitoring.dashboards import (
    OBJECTIVE_SERIES,
    build_all,
    expand,
    panel_queries,
    panels,
)
from atelier.runtime.errors import StaleDashboardsError
from atelier.tools.paths import project_file
from support.drift_metrics import drift_series
from support.promql import metric_names, selectors

pytestmark = pytest.mark.unit

BUILT = build_all()
QUERIES = [q for board in BUILT.values() for q in panel_queries(board)]
RULES_DIR = project_file("monitoring/prometheus/rules")
METRIC_DOCS = [project_file("handlers/README.md"), project_file("services/drift/README.md")]

# The panels the issue asks for, by dashboard (titles as built).
REQUIRED_PANELS = {
    "atelier-serving": [
        "Requests/s by status code",
        "Error ratio vs SLO",
        "Handler latency p50/p95/p99 vs SLO",
        "Latency per step p50/p95/p99",
        "Queue latency",
        "Batch size",
        "Workers",
        "CPU",
        "Memory",
    ],
    "atelier-drift": [
        "Drift share per window",
        "Per-feature drift scores ($window)",
        "Predicted-class mix vs reference ($window)",
        "Confidence shift (z-score)",
        "Live accuracy vs reference",
        "Time since the last report",
        "Records shipped/s per pod",
        "Spool lag per pod",
        "Ship errors/s per pod",
        "Database latency p99 per pod",
        "Feedback results/s",
        "Reporter",
    ],
    "atelier-slo": [
        "Error budget remaining",
        "Remaining error budget (30d)",
        "Burn rates",
    ],
}


def _targets(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels(board) for t in p.get("targets", [])]


def test_three_dashboards_with_stable_uids() -> None:
    assert set(BUILT) == {"atelier-serving", "atelier-drift", "atelier-slo"}
    for uid, board in BUILT.items():
        assert board["uid"] == uid


@pytest.mark.parametrize("uid", sorted(BUILT))
def test_committed_json_is_a_fresh_build(uid: str) -> None:
    path = project_file(f"{dashboards.DASHBOARD_DIR}/{uid}.json")
    assert path.is_file(), f"{path} is missing: run `atelier dashboards build`"
    assert path.read_text(encoding="utf-8") == dashboards.render(BUILT[uid]), (
        f"{path} is stale: run `atelier dashboards build` and commit the result"
    )


def test_build_is_deterministic() -> None:
    again = build_all()
    assert [dashboards.render(b) for b in again.values()] == [
        dashboards.render(b) for b in BUILT.values()
    ]


@pytest.mark.parametrize("uid", sorted(BUILT))
def test_generated_marker(uid: str) -> None:
    board = BUILT[uid]
    assert "do not edit" in board["description"]
    assert "atelier dashboards build" in board["description"]
    assert dashboards.GENERATED_TAG in board["tags"]
    text = dashboards.render(board)
    assert text.endswith("}\n") and '\n  "' in text  # 2-space indent, trailing newline


@pytest.mark.parametrize("uid", sorted(BUILT))
def test_importable_shape_for_grafana_11(uid: str) -> None:
    board = BUILT[uid]
    assert board["schemaVersion"] >= 39  # Grafana 11.0 writes 39, 11.6 writes 41
    assert board["title"].startswith("atelier / ")
    assert board["templating"]["list"]
    assert board["annotations"]["list"][0]["builtIn"] == 1
    ids = [p["id"] for p in board["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert {"x", "y", "w", "h"} <= set(g) and g["w"] > 0 and g["h"] > 0
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            assert p["panels"] == [] and not p["collapsed"]  # open rows: panels follow them
        # No two panels overlap on the grid.
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


@pytest.mark.parametrize("uid", sorted(BUILT))
def test_datasource_and_model_variables(uid: str) -> None:
    variables = {v["name"]: v for v in BUILT[uid]["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query"
    assert model["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "label_values(" in model["query"] and model["query"].endswith(", model)")
    assert model["multi"] and model["includeAll"]


def test_drift_dashboard_has_a_window_variable() -> None:
    variables = {v["name"]: v for v in BUILT["atelier-drift"]["templating"]["list"]}
    assert variables["window"]["current"]["value"] == "last_1000"
    assert variables["window"]["datasource"]["uid"] == "${datasource}"
    assert 'model_version=~"$model_version"' in variables["window"]["query"]


def test_drift_dashboard_has_a_model_version_variable() -> None:
    names = [v["name"] for v in BUILT["atelier-drift"]["templating"]["list"]]
    assert names.index("model") < names.index("model_version") < names.index("window")
    version = BUILT["atelier-drift"]["templating"]["list"][names.index("model_version")]
    assert version["type"] == "query"
    assert version["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert version["query"].startswith("label_values(atelier_drift_")
    assert 'model=~"$model"' in version["query"] and version["query"].endswith(", model_version)")
    assert version["multi"] and version["includeAll"] and version["allValue"] == ".+"
    for uid in ("atelier-serving", "atelier-slo"):
        assert "model_version" not in {v["name"] for v in BUILT[uid]["templating"]["list"]}


DRIFT_QUERIES = [q for q in QUERIES if q.dashboard_uid == "atelier-drift"]


@pytest.mark.parametrize("query", DRIFT_QUERIES, ids=lambda q: f"{q.panel_title}/{q.ref_id}")
def test_per_version_series_filter_on_the_version_and_not_on_the_pod(
    query: dashboards.PanelQuery,
) -> None:
    """The reporter's gauges carry model_version and come from whichever pod holds the lease:
    filter on $model_version and aggregate the pod away. Per-pod series have no version."""
    versioned = {name for name, labels in drift_series().items() if "model_version" in labels}
    assert "atelier_drift_severity" in versioned
    for name, matchers in selectors(query.expr):
        if name in versioned:
            assert 'model_version=~"$model_version"' in matchers, f"{name} in {query.expr!r}"
            assert re.search(rf"max by \(model_version\b[^)]*\) \({name}\{{", query.expr), (
                f"{name} in {query.expr!r} is not aggregated by version with max"
            )
        else:
            assert "$model_version" not in matchers, f"{name} has no model_version label"


@pytest.mark.parametrize("uid", sorted(BUILT))
def test_every_panel_and_target_uses_the_datasource_variable(uid: str) -> None:
    board = BUILT[uid]
    for p in panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("targets"), f"{p['title']} has no target"
    for title, t in _targets(board):
        assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title


@pytest.mark.parametrize(
    "query", QUERIES, ids=lambda q: f"{q.dashboard_uid}/{q.panel_title}/{q.ref_id}"
)
def test_every_target_filters_on_the_model(query: dashboards.PanelQuery) -> None:
    found = selectors(query.expr)
    assert found, query.expr
    for name, matchers in found:
        if name in OBJECTIVE_SERIES:
            assert matchers == "", f"{name} carries no labels; do not filter it"
        else:
            assert 'model=~"$model"' in matchers, f"{name} in {query.expr!r} lacks the model filter"


def test_panel_queries_lists_every_target() -> None:
    for uid, board in BUILT.items():
        listed = panel_queries(board)
        assert len(listed) == len(_targets(board))
        assert all(q.dashboard_uid == uid and q.ref_id and q.expr for q in listed)
        # The integration test unpacks four fields.
        uid_, title, ref, expr = listed[0]
        assert (uid_, title, ref, expr) == tuple(listed[0])


def _recorded_names() -> set[str]:
    names = set()
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    return names


def test_every_recording_rule_a_dashboard_reads_exists() -> None:
    recorded = _recorded_names()
    used = {n for q in QUERIES for n in metric_names(q.expr) if ":" in n}
    assert used, "the dashboards read no recording rule"
    assert not used - recorded, f"not recorded in {RULES_DIR}: {sorted(used - recorded)}"


def test_every_raw_atelier_metric_is_documented() -> None:
    docs = "\n".join(p.read_text() for p in METRIC_DOCS)
    raw = {n for q in QUERIES for n in metric_names(q.expr) if n.startswith("atelier_")}
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in raw}
    missing = sorted(n for n in base if f"`{n}`" not in docs)
    assert not missing, f"not in handlers/README.md or services/drift/README.md: {missing}"


@pytest.mark.parametrize("uid", sorted(REQUIRED_PANELS))
def test_each_dashboard_has_the_panels_the_issue_names(uid: str) -> None:
    titles = {p["title"] for p in panels(BUILT[uid])}
    missing = [t for t in REQUIRED_PANELS[uid] if t not in titles]
    assert not missing


def test_slo_lines_are_drawn_against_the_objective() -> None:
    serving = {p["title"]: p for p in panels(BUILT["atelier-serving"])}
    exprs = [t["expr"] for t in serving["Error ratio vs SLO"]["targets"]]
    assert "1 - atelier:slo_availability:objective" in exprs
    exprs = [t["expr"] for t in serving["Handler latency p50/p95/p99 vs SLO"]["targets"]]
    assert "atelier:slo_latency_p99:objective_seconds" in exprs
    slo = {p["title"]: p for p in panels(BUILT["atelier-slo"])}
    burn = [t["expr"] for t in slo["Burn rates"]["targets"]]
    assert [e.split("{")[0] for e in burn] == [
        f"atelier:error_budget:burn_rate{w}" for w in ("5m", "30m", "1h", "6h", "3d")
    ]


@pytest.mark.parametrize(
    "query", QUERIES, ids=lambda q: f"{q.dashboard_uid}/{q.panel_title}/{q.ref_id}"
)
def test_expand_leaves_no_template_variable(query: dashboards.PanelQuery) -> None:
    out = expand(query.expr, "fashion-mnist", window="last_1000")
    assert "$" not in out
    if "$model" in query.expr:
        assert 'model=~"fashion-mnist"' in out
    if "$model_version" in query.expr:
        assert 'model_version=~".+"' in out


def test_expand_variables_and_escaping() -> None:
    expr = 'rate(x{model=~"$model", window="${window}"}[$__rate_interval]) + $__range'
    assert expand(expr, "m", window="w", rate_interval="2m", range_="1h") == (
        'rate(x{model=~"m", window="w"}[2m]) + 1h'
    )
    assert expand('{model=~"$model"}', ["a", "b"]) == '{model=~"(a|b)"}'
    # model_version: All (.+) unless named, like any multi-value variable.
    both = '{model=~"$model", model_version=~"$model_version"}'
    assert expand(both, "m") == '{model=~"m", model_version=~".+"}'
    assert expand(both, None, model_version="2") == '{model=~".+", model_version=~"2"}'
    assert expand(both, "m", model_version=["1", "2"]) == '{model=~"m", model_version=~"(1|2)"}'
    # Regex characters in a name are escaped, as Grafana does (twice: regex, then string).
    assert expand('{model=~"$model"}', "v1.2") == '{model=~"v1\\\\.2"}'
    with pytest.raises(ValueError, match=r"\$nope"):
        expand('x{a="$nope"}')
    with pytest.raises(ValueError):
        expand("x", [])


def test_selectors_parse_promql() -> None:
    expr = (
        'sum by (job, model) (rate(a_total{model=~"$model", code="5xx"}[5m])) '
        "/ on (job) group_left(model) b:rule:x * 0 or vector(1) > bool 0"
    )
    assert selectors(expr) == [("a_total", '{model=~"$model", code="5xx"}'), ("b:rule:x", "")]
    assert metric_names('label_replace(up{x="y"}, "a", "$1", "b", "(.*)")') == {"up"}
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(h_bucket[1m]))) / 1e6") == {
        "h_bucket"
    }


def test_every_expanded_query_is_valid_promql(tmp_path: Path) -> None:
    assert shutil.which("promtool"), "promtool is not installed: run make setup"
    rules = [
        {"record": f"dashboard:query:{i}", "expr": expand(q.expr, "fashion-mnist")}
        for i, q in enumerate(QUERIES)
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- atelier dashboards build [--check]


def _atelier(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atelier", *args], capture_output=True, text=True, timeout=120
    )


def test_build_writes_and_check_passes(tmp_path: Path) -> None:
    written = dashboards.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{uid}.json" for uid in BUILT)
    for p in written:
        assert json.loads(p.read_text())["uid"] == p.stem
    dashboards.check(tmp_path)  # no error
    assert dashboards.stale(tmp_path) == []


def test_check_names_a_modified_and_a_missing_file(tmp_path: Path) -> None:
    dashboards.write(tmp_path)
    modified = tmp_path / "atelier-slo.json"
    modified.write_text(modified.read_text().replace("Burn rates", "Burn rate"))
    (tmp_path / "atelier-drift.json").unlink()
    with pytest.raises(StaleDashboardsError) as err:
        dashboards.check(tmp_path)
    assert "atelier-slo.json" in err.value.message and "atelier-drift.json" in err.value.message
    assert "atelier-serving.json" not in err.value.message
    assert "atelier dashboards build" in err.value.one_line()


def test_cli_build_check_exits_non_zero_on_a_modified_copy(tmp_path: Path) -> None:
    copy = tmp_path / "dashboards"
    shutil.copytree(project_file(dashboards.DASHBOARD_DIR), copy)
    ok = _atelier("dashboards", "build", "--out", str(copy), "--check")
    assert ok.returncode == 0, ok.stderr
    assert "up to date" in ok.stdout
    target = copy / "atelier-serving.json"
    data = json.loads(target.read_text())
    data["panels"][1]["title"] = "edited by hand"
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    before = target.read_text()
    stale = _atelier("dashboards", "build", "--out", str(copy), "--check")
    assert stale.returncode == StaleDashboardsError.exit_code
    assert stale.stderr.count("\n") == 1 and stale.stderr.startswith("error: ")
    assert "atelier-serving.json" in stale.stderr and "atelier dashboards build" in stale.stderr
    assert target.read_text() == before  # --check writes nothing
    rebuilt = _atelier("dashboards", "build", "--out", str(copy))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert _atelier("dashboards", "build", "--out", str(copy), "--check").returncode == 0
