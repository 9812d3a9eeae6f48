"""The local stack's settings and its copies of monitoring/: only what a local run must change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml

from atelier.runtime.errors import ConfigError
from atelier.tools.paths import project_file
from atelier.tools.process import free_port
from atelier.tools.stack import StackSettings as Settings
from atelier.tools.stack import (
    WebhookReceiver,
    duration_seconds,
    render_alertmanager_config,
    render_prometheus_config,
    write_targets,
)

pytestmark = pytest.mark.unit


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(run_dir=tmp_path, torchserve=["127.0.0.1:8082"], drift=["127.0.0.1:8095"],
                    **kw)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("scrape_interval", "fast", "scrape_interval"),
        ("evaluation_interval", "0s", "evaluation_interval"),
        ("group_wait", "10", "group_wait"),
        ("torchserve", ["localhost"], "torchserve"),
        ("prometheus_port", 70000, "prometheus_port"),
        ("model", "", "model"),
    ],
)
def test_bad_settings_name_the_setting(
    tmp_path: Path, field: str, value: object, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings(run_dir=tmp_path, **{field: value})  # type: ignore[arg-type]


def test_durations() -> None:
    assert duration_seconds("1m30s") == 90
    assert duration_seconds("500ms") == 0.5


def test_prometheus_copy_changes_only_intervals_and_paths(tmp_path: Path) -> None:
    source = yaml.safe_load(project_file("monitoring/prometheus/prometheus.yml").read_text())
    cfg = render_prometheus_config(
        settings(tmp_path, scrape_interval="1s", evaluation_interval="2s")
    )
    assert cfg["global"]["scrape_interval"] == "1s"
    assert cfg["global"]["evaluation_interval"] == "2s"
    assert cfg["global"]["scrape_timeout"] == "1s"  # never above the interval
    rules = Path(cfg["rule_files"][0])
    assert rules.is_absolute() and rules.parent == project_file("monitoring/prometheus/rules")
    assert [j["job_name"] for j in cfg["scrape_configs"]] == [
        j["job_name"] for j in source["scrape_configs"]
    ]
    for job, src in zip(cfg["scrape_configs"], source["scrape_configs"], strict=True):
        files = job["file_sd_configs"][0]["files"]
        assert files == [str(tmp_path / f) for f in src["file_sd_configs"][0]["files"]]
        assert {k for k in job if k != "file_sd_configs"} == {
            k for k in src if k != "file_sd_configs"
        }


def test_alertmanager_copy_changes_only_receiver_address_and_timings(tmp_path: Path) -> None:
    source = yaml.safe_load(project_file("monitoring/alertmanager/alertmanager.yml").read_text())
    s = settings(tmp_path, webhook_port=9999, group_wait="1s", group_interval="1s")
    cfg = render_alertmanager_config(s)
    assert cfg["inhibit_rules"] == source["inhibit_rules"]
    assert cfg["route"]["group_by"] == source["route"]["group_by"]
    assert cfg["route"]["group_wait"] == "1s" and cfg["route"]["group_interval"] == "1s"
    assert cfg["route"]["repeat_interval"] == source["route"]["repeat_interval"]
    for got, src in zip(cfg["route"]["routes"], source["route"]["routes"], strict=True):
        assert got["matchers"] == src["matchers"] and got["receiver"] == src["receiver"]
    urls = [h["url"] for r in cfg["receivers"] for h in r.get("webhook_configs", [])]
    assert urls == [
        f"http://127.0.0.1:9999/alerts/{r}" for r in ("default", "page", "ticket", "info")
    ]


def test_targets_carry_the_model_label(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write_targets(s)
    torchserve = json.loads((tmp_path / "targets" / "torchserve.json").read_text())
    assert torchserve == [{"targets": ["127.0.0.1:8082"], "labels": {"model": "fashion-mnist"}}]
    assert json.loads((tmp_path / "targets" / "kserve.json").read_text()) == []
    prometheus = json.loads((tmp_path / "targets" / "prometheus.json").read_text())
    assert prometheus[0]["targets"] == [f"127.0.0.1:{s.prometheus_port}"]


def test_webhook_receiver_records_by_receiver_and_refuses_bad_bodies(tmp_path: Path) -> None:
    port = free_port()
    hook = WebhookReceiver("127.0.0.1", port, tmp_path / "hook.jsonl").start()
    try:
        url = f"http://127.0.0.1:{port}/alerts/page"
        bad = requests.post(url, data=b"{not json", timeout=5)
        assert bad.status_code == 400 and "webhook payload" in bad.json()["error"]
        payload = {
            "status": "firing",
            "alerts": [{"status": "firing", "labels": {"alertname": "X"}}],
        }
        assert requests.post(url, json=payload, timeout=5).status_code == 200
        [alert] = hook.alerts()
        assert alert["receiver"] == "page" and alert["labels"]["alertname"] == "X"
        lines = (tmp_path / "hook.jsonl").read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["receiver"] == "page"
    finally:
        hook.stop()


def test_alert_for_retimes_the_named_rules_only(tmp_path: Path) -> None:
    retimed = {"ModelServerDown": "10s", "ErrorBudgetBurn:page": "5s"}
    cfg = render_prometheus_config(settings(tmp_path, alert_for=retimed))
    files = [Path(f) for f in cfg["rule_files"]]
    assert {f.name for f in files} == {"alerts.yml", "recording.yml", "slo.yml"}
    assert all(f.parent == tmp_path / "rules" for f in files)
    source = yaml.safe_load(project_file("monitoring/prometheus/rules/alerts.yml").read_text())
    written = yaml.safe_load((tmp_path / "rules" / "alerts.yml").read_text())
    pairs = [
        (a, b)
        for ga, gb in zip(source["groups"], written["groups"], strict=True)
        for a, b in zip(ga["rules"], gb["rules"], strict=True)
    ]
    changed = {
        (b["alert"], b["labels"]["severity"], b["for"])
        for a, b in pairs
        if a.get("for") != b.get("for")
    }
    assert changed == {("ModelServerDown", "page", "10s"), ("ErrorBudgetBurn", "page", "5s")}
    for a, b in pairs:
        assert {k: v for k, v in a.items() if k != "for"} == {
            k: v for k, v in b.items() if k != "for"
        }


@pytest.mark.parametrize(
    ("alert_for", "named"),
    [
        ({"ModelServerDown": "ten seconds"}, "ModelServerDown"),
        ({"NoSuchAlert": "10s"}, "NoSuchAlert"),
    ],
)
def test_alert_for_names_a_bad_entry(tmp_path: Path, alert_for: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        render_prometheus_config(settings(tmp_path, alert_for=alert_for))
