"""The monitoring the chart renders is monitoring/'s: rules, routes and dashboards, unedited.

- operator mode: the PrometheusRule's groups equal monitoring/prometheus/rules/*.yml (the SLO
  group rendered from values, equal to slo.yml with the defaults); the AlertmanagerConfig is
  alertmanager.yml's route tree and inhibition in the CRD's shape; the dashboard ConfigMaps hold
  the JSON files byte for byte; the monitors give targets the label contract (job, model).
- bundled mode: the rule files are the same files (recording.yml and alerts.yml byte for byte),
  promtool accepts the Prometheus config and the rules, amtool accepts the Alertmanager config
  and routes each severity to its receiver.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from atelier.tools.chart import rendered
from atelier.tools.paths import project_file

pytestmark = pytest.mark.chart

MONITORING = project_file("monitoring")
RULES = MONITORING / "prometheus" / "rules"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
ALERTMANAGER = MONITORING / "alertmanager" / "alertmanager.yml"
CONTRACT_JOBS = {"atelier-torchserve", "atelier-drift"}


def of_kind(objects: tuple[Any, ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def groups_of(name: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((RULES / name).read_text())["groups"]
    return groups


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run make setup")
    return found


# --------------------------------------------------------------------------- operator mode


def test_prometheus_rule_is_monitoring_rules() -> None:
    (rule,) = of_kind(rendered(), "PrometheusRule")
    expected = groups_of("slo.yml") + groups_of("recording.yml") + groups_of("alerts.yml")
    assert rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    names = sorted(p.name for p in RULES.glob("*.yml"))
    assert names == ["alerts.yml", "recording.yml", "slo.yml"], "a rule file the chart misses"


def test_slo_group_follows_values() -> None:
    (rule,) = of_kind(
        rendered("monitoring.slo.availability:=0.995", "monitoring.slo.latencyP99Seconds:=0.25"),
        "PrometheusRule",
    )
    slo = {r["record"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    assert slo == {
        "atelier:slo_availability:objective": "vector(0.995)",
        "atelier:slo_latency_p99:objective_seconds": "vector(0.25)",
    }
    assert rule["spec"]["groups"][1:] == groups_of("recording.yml") + groups_of("alerts.yml")


def test_release_label_is_configurable() -> None:
    objects = rendered("monitoring.operator.releaseLabel=prom")
    kinds = ("PrometheusRule", "PodMonitor", "ServiceMonitor", "AlertmanagerConfig")
    for obj in objects:
        if obj["kind"] in kinds:
            assert obj["metadata"]["labels"]["release"] == "prom", obj["metadata"]["name"]


def test_dashboard_configmaps_hold_the_json_unchanged() -> None:
    maps = [
        o
        for o in rendered()
        if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]
    ]
    by_file = {key: value for m in maps for key, value in m["data"].items()}
    expected = {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    assert by_file == expected
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert len(m["data"]) == 1


def test_dashboards_namespace_is_configurable() -> None:
    objects = rendered("monitoring.operator.dashboards.namespace=monitoring")
    maps = [o for o in objects if "grafana_dashboard" in o["metadata"].get("labels", {})]
    assert maps and {m["metadata"]["namespace"] for m in maps} == {"monitoring"}


def untranslate_matcher(m: dict[str, str]) -> str:
    return f'{m["name"]}{m["matchType"]}"{m["value"]}"'


def untranslate_route(route: dict[str, Any]) -> dict[str, Any]:
    keys = {"groupBy": "group_by", "groupWait": "group_wait", "groupInterval": "group_interval",
            "repeatInterval": "repeat_interval", "receiver": "receiver"}  # fmt: skip
    out: dict[str, Any] = {keys[k]: v for k, v in route.items() if k in keys}
    if "matchers" in route:
        out["matchers"] = [untranslate_matcher(m) for m in route["matchers"]]
    if "routes" in route:
        out["routes"] = [untranslate_route(r) for r in route["routes"]]
    unknown = set(route) - set(keys) - {"matchers", "routes"}
    assert not unknown, f"untranslated route keys {unknown}"
    return out


def test_alertmanager_config_is_alertmanager_yml() -> None:
    source = yaml.safe_load(ALERTMANAGER.read_text())
    (amc,) = of_kind(rendered(), "AlertmanagerConfig")
    spec = amc["spec"]
    assert untranslate_route(spec["route"]) == source["route"]
    inhibit = [
        {
            "source_matchers": [untranslate_matcher(m) for m in rule["sourceMatch"]],
            "target_matchers": [untranslate_matcher(m) for m in rule["targetMatch"]],
            "equal": rule["equal"],
        }
        for rule in spec["inhibitRules"]
    ]
    assert inhibit == source["inhibit_rules"]
    assert [r["name"] for r in spec["receivers"]] == [r["name"] for r in source["receivers"]]
    # No URL in values: the receivers exist and have no webhook (nothing is sent anywhere).
    assert all("webhookConfigs" not in r for r in spec["receivers"])


def test_alertmanager_config_receivers_come_from_values() -> None:
    (amc,) = of_kind(rendered(values_file="everything"), "AlertmanagerConfig")
    receivers = {r["name"]: r.get("webhookConfigs") for r in amc["spec"]["receivers"]}
    assert receivers["default"] == [
        {"url": "http://alert-relay.monitoring.svc:9099/alerts/default", "sendResolved": True}
    ]
    assert receivers["page"] == [
        {"urlSecret": {"name": "pagerduty-webhook", "key": "url"}, "sendResolved": True}
    ]


def test_monitors_set_the_label_contract() -> None:
    """job and model by relabelling (monitoring/README.md, "Label contract")."""
    for args in [(), ("serving.mode=raw",)]:
        objects = rendered(*args)
        monitors = of_kind(objects, "PodMonitor") + of_kind(objects, "ServiceMonitor")
        jobs = set()
        for mon in monitors:
            endpoints = mon["spec"].get("podMetricsEndpoints") or mon["spec"]["endpoints"]
            for ep in endpoints:
                labels = {r["targetLabel"]: r["replacement"] for r in ep["relabelings"]}
                assert labels["model"] == "fashion-mnist"
                jobs.add(labels["job"])
        assert jobs == CONTRACT_JOBS, args
    kserve = rendered()
    (pod_monitor,) = of_kind(kserve, "PodMonitor")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    (runtime,) = of_kind(kserve, "ServingRuntime")
    ports = {p["name"]: p["containerPort"] for p in runtime["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == 8082


def test_no_monitoring_objects_in_none_mode() -> None:
    objects = rendered("monitoring.mode=none")
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"PrometheusRule", "PodMonitor", "ServiceMonitor", "AlertmanagerConfig"}
    assert not [o for o in objects if "grafana_dashboard" in o["metadata"].get("labels", {})]


# --------------------------------------------------------------------------- bundled mode


def bundled() -> tuple[Any, ...]:
    return rendered(values_file="raw-bundled")


def configmap(objects: tuple[Any, ...], name: str) -> dict[str, str]:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    data: dict[str, str] = cm["data"]
    return data


def test_bundled_rule_files_are_monitorings() -> None:
    rules = configmap(bundled(), "atelier-rules")
    assert rules["recording.yml"] == (RULES / "recording.yml").read_text()
    assert rules["alerts.yml"] == (RULES / "alerts.yml").read_text()
    assert yaml.safe_load(rules["slo.yml"]) == yaml.safe_load((RULES / "slo.yml").read_text())


def test_bundled_dashboards_are_mounted() -> None:
    objects = bundled()
    maps = [o for o in objects if "grafana_dashboard" in o["metadata"].get("labels", {})]
    assert {k: v for m in maps for k, v in m["data"].items()} == {
        p.name: p.read_text() for p in DASHBOARDS.glob("*.json")
    }
    (grafana,) = [
        o for o in of_kind(objects, "Deployment") if o["metadata"]["name"] == "atelier-grafana"
    ]
    volumes = {v["name"]: v for v in grafana["spec"]["template"]["spec"]["volumes"]}
    projected = {s["configMap"]["name"] for s in volumes["dashboards"]["projected"]["sources"]}
    assert projected == {m["metadata"]["name"] for m in maps}
    provisioning = configmap(objects, "atelier-grafana")
    datasource = yaml.safe_load(provisioning["datasources.yaml"])["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert datasource["url"] == "http://atelier-prometheus:9090"
    # Every dashboard picks its data source through a `datasource` variable of type prometheus,
    # which resolves to the provisioned default.
    for path in DASHBOARDS.glob("*.json"):
        variables = json.loads(path.read_text())["templating"]["list"]
        assert {"name": "datasource", "type": "datasource", "query": "prometheus"}.items() <= (
            next(v for v in variables if v["name"] == "datasource").items()
        )


def test_bundled_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    objects = bundled()
    config = yaml.safe_load(configmap(objects, "atelier-prometheus")["prometheus.yml"])
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    assert jobs >= CONTRACT_JOBS
    (tmp_path / "rules").mkdir()
    for name, text in configmap(objects, "atelier-rules").items():
        (tmp_path / "rules" / name).write_text(text)
    config["rule_files"] = [str(tmp_path / "rules" / "*.yml")]
    # Debian's promtool is built without Kubernetes discovery: check everything else, with a
    # file discovery in its place (the relabelling that sets the label contract stays).
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 3 rule files found" in proc.stdout, proc.stdout
    assert len(re.findall(r"SUCCESS: \d+ rules found", proc.stdout)) == 3, proc.stdout


def test_bundled_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    objects = rendered(
        "monitoring.alertmanager.receivers.page.url=http://relay.example:9099/page",
        values_file="raw-bundled",
    )
    text = configmap(objects, "atelier-alertmanager")["alertmanager.yml"]
    config = yaml.safe_load(text)
    source = yaml.safe_load(ALERTMANAGER.read_text())
    assert {k: v for k, v in config.items() if k != "receivers"} == {
        k: v for k, v in source.items() if k != "receivers"
    }
    receivers = {r["name"]: r.get("webhook_configs") for r in config["receivers"]}
    assert receivers["page"] == [{"url": "http://relay.example:9099/page", "send_resolved": True}]
    assert receivers["ticket"] is None
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    amtool = tool("amtool")
    proc = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for severity in ("page", "ticket", "info"):
        proc = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={path}",
             f"--verify.receivers={severity}", f"severity={severity}", "alertname=X"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
