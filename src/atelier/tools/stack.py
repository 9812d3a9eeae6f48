"""The local monitoring stack: real Prometheus and Alertmanager processes on 127.0.0.1.

Both load the files in monitoring/ (the one source of truth the Helm chart ships too). A
local run changes only what it must, in a copy written to the run folder:

* prometheus.yml: the scrape and evaluation intervals (settings), relative paths made
  absolute; the targets are file_sd lists written here from the given addresses, each
  labelled with `model`. The rule files are loaded from monitoring/prometheus/rules/.
* alertmanager.yml: the local webhook receiver's address, and optionally shorter grouping
  timings (tests use 1s so resolved notifications arrive in seconds).

A webhook receiver (a small HTTP server in this process) records every notification
Alertmanager sends, by receiver path (/alerts/page, /alerts/ticket, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import requests
import yaml

from atelier.runtime.errors import ConfigError, MonitoringError
from atelier.tools.paths import project_file
from atelier.tools.process import ServerProcess, free_port

PROMETHEUS_CONFIG = "monitoring/prometheus/prometheus.yml"
ALERTMANAGER_CONFIG = "monitoring/alertmanager/alertmanager.yml"
# Scrape jobs of the serving and drift targets (the label contract in monitoring/README.md).
JOBS = {"torchserve": "atelier-torchserve", "kserve": "atelier-kserve", "drift": "atelier-drift"}
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration such as 1m30s."""
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


@dataclass
class StackSettings:
    """Where the stack runs, what it scrapes, and its timings; checked at construction."""

    run_dir: Path
    model: str = "fashion-mnist"
    torchserve: list[str] = field(default_factory=list)  # metrics host:port
    kserve: list[str] = field(default_factory=list)  # inference host:port (serves /metrics)
    drift: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    prometheus_port: int = field(default_factory=free_port)
    alertmanager_port: int = field(default_factory=free_port)
    webhook_port: int = field(default_factory=free_port)
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    # Prometheus waits this long before it sends a firing alert again; 1s lets the first
    # notification go out at once (its default, 1m, holds it back).
    resend_delay: str = "1s"
    group_wait: str | None = None
    group_interval: str | None = None
    repeat_interval: str | None = None
    # Shorter pending periods for some alerts (a test's time-lapse): alert name, or
    # "name:severity" for one of several rules of that name -> its `for`. The rules'
    # expressions, labels and routing stay as written; the other rules keep their `for`.
    alert_for: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self.run_dir = self.run_dir.resolve()
        for name in (
            "scrape_interval",
            "evaluation_interval",
            "resend_delay",
            "group_wait",
            "group_interval",
            "repeat_interval",
        ):
            value = getattr(self, name)
            if value is not None and (not _DURATION.match(value) or duration_seconds(value) <= 0):
                raise ConfigError(
                    f"{name}={value!r} is not a Prometheus duration", hint="use e.g. 1s, 15s, 1m"
                )
        for key, value in self.alert_for.items():
            if not _DURATION.match(value):
                raise ConfigError(
                    f"alert_for[{key!r}]={value!r} is not a Prometheus duration",
                    hint="use e.g. 10s, 1m",
                )
        for name in ("torchserve", "kserve", "drift"):
            for address in getattr(self, name):
                if not _ADDRESS.match(address):
                    raise ConfigError(f"{name} target {address!r} is not host:port")
        for name in ("prometheus_port", "alertmanager_port", "webhook_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ConfigError(f"{name}={port} is not between 1 and 65535")
        if not self.model:
            raise ConfigError("model must not be empty")

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{self.host}:{self.alertmanager_port}"

    @property
    def webhook_url(self) -> str:
        return f"http://{self.host}:{self.webhook_port}"


# --- configuration: the monitoring/ files, with a local run's few changes


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MonitoringError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise MonitoringError(f"{path} is not a YAML mapping")
    return data


def render_prometheus_config(settings: StackSettings, source: Path | None = None) -> dict[str, Any]:
    source = source or project_file(PROMETHEUS_CONFIG)
    cfg = _load_yaml(source)
    base = source.parent.resolve()
    glob = cfg.setdefault("global", {})
    glob["scrape_interval"] = settings.scrape_interval
    glob["evaluation_interval"] = settings.evaluation_interval
    timeout = glob.get("scrape_timeout")
    if timeout and duration_seconds(timeout) > duration_seconds(settings.scrape_interval):
        glob["scrape_timeout"] = settings.scrape_interval  # Prometheus: timeout <= interval
    cfg["rule_files"] = [str(base / rule) for rule in cfg.get("rule_files", [])]
    if settings.alert_for:
        cfg["rule_files"] = [str(p) for p in retimed_rule_files(settings, cfg["rule_files"])]

    def absolute_sd(block: dict[str, Any]) -> None:
        for sd in block.get("file_sd_configs", []):
            sd["files"] = [str(settings.run_dir / f) for f in sd.get("files", [])]

    for am in cfg.get("alerting", {}).get("alertmanagers", []):
        absolute_sd(am)
    for job in cfg.get("scrape_configs", []):
        absolute_sd(job)
    return cfg


def retimed_rule_files(settings: StackSettings, patterns: list[str]) -> list[Path]:
    """Copies of the rule files under run_dir/rules/ with settings.alert_for's pending periods;
    everything else as written. A key that matches no alerting rule is a ConfigError."""
    out_dir = settings.run_dir / "rules"
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    written = []
    for pattern in patterns:
        base = Path(pattern)
        for source in sorted(base.parent.glob(base.name)):
            rules = _load_yaml(source)
            for group in rules.get("groups", []):
                for rule in group.get("rules", []):
                    name = rule.get("alert")
                    severity = rule.get("labels", {}).get("severity")
                    for key in (f"{name}:{severity}", name):
                        if key in settings.alert_for:
                            rule["for"] = settings.alert_for[key]
                            used.add(key)
                            break
            target = out_dir / source.name
            target.write_text(yaml.safe_dump(rules, sort_keys=False))
            written.append(target)
    unknown = sorted(set(settings.alert_for) - used)
    if unknown:
        raise ConfigError(f"alert_for names no alerting rule: {', '.join(unknown)}")
    return written


def render_alertmanager_config(
    settings: StackSettings, source: Path | None = None
) -> dict[str, Any]:
    source = source or project_file(ALERTMANAGER_CONFIG)
    cfg = _load_yaml(source)
    for receiver in cfg.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            path = urlsplit(hook["url"]).path
            hook["url"] = settings.webhook_url + path
    timings = {
        "group_wait": settings.group_wait,
        "group_interval": settings.group_interval,
        "repeat_interval": settings.repeat_interval,
    }

    def shorten(route: dict[str, Any], top: bool) -> None:
        for key, value in timings.items():
            if value is not None and (top or key in route):
                route[key] = value
        for child in route.get("routes", []):
            shorten(child, top=False)

    shorten(cfg["route"], top=True)
    return cfg


def target_groups(addresses: list[str], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [{"targets": addresses, "labels": labels}] if addresses else []


def write_targets(settings: StackSettings) -> None:
    """The file_sd lists prometheus.yml reads; Prometheus re-reads them when they change."""
    targets = settings.run_dir / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    model = {"model": settings.model}
    lists = {
        "prometheus": target_groups([f"{settings.host}:{settings.prometheus_port}"], {}),
        "alertmanager": target_groups([f"{settings.host}:{settings.alertmanager_port}"], {}),
        "torchserve": target_groups(settings.torchserve, model),
        "kserve": target_groups(settings.kserve, model),
        "drift": target_groups(settings.drift, model),
    }
    for name, groups in lists.items():
        tmp = targets / f".{name}.json.tmp"
        tmp.write_text(json.dumps(groups, indent=2) + "\n")
        tmp.replace(targets / f"{name}.json")  # atomic: Prometheus never reads half a file


# --- processes


class _ConfiguredProcess(ServerProcess):
    """A Debian-packaged server that reads one rendered config file and has /-/ready."""

    binary = ""
    apt_package = ""
    config_name = ""

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(settings.run_dir, settings.model, settings.ready_timeout_s)
        self.s = settings
        self.subject = "the web API"
        self.config_path = settings.run_dir / self.config_name

    @property
    def url(self) -> str:
        raise NotImplementedError

    def render(self) -> dict[str, Any]:
        raise NotImplementedError

    def check_can_start(self) -> None:
        if shutil.which(self.binary) is None:
            raise MonitoringError(
                f"{self.binary} is not installed",
                hint=f"run make setup (apt-get install {self.apt_package})",
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.render()))

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def is_ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False


class Prometheus(_ConfiguredProcess):
    label = "Prometheus"
    log_file = "prometheus.out"
    binary = apt_package = "prometheus"
    config_name = "prometheus.yml"

    @property
    def url(self) -> str:
        return self.s.prometheus_url

    def render(self) -> dict[str, Any]:
        write_targets(self.s)
        return render_prometheus_config(self.s)

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.run_dir / 'prometheus-data'}",
            f"--web.listen-address={self.s.host}:{self.s.prometheus_port}",
            f"--rules.alert.resend-delay={self.s.resend_delay}",
            "--log.level=warn",
        ]


class Alertmanager(_ConfiguredProcess):
    label = "Alertmanager"
    log_file = "alertmanager.out"
    binary = apt_package = "prometheus-alertmanager"
    config_name = "alertmanager.yml"

    @property
    def url(self) -> str:
        return self.s.alertmanager_url

    def render(self) -> dict[str, Any]:
        return render_alertmanager_config(self.s)

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.run_dir / 'alertmanager-data'}",
            f"--web.listen-address={self.s.host}:{self.s.alertmanager_port}",
            "--cluster.listen-address=",  # one instance: no gossip port on 0.0.0.0
            "--log.level=warn",
        ]


class WebhookReceiver:
    """Records Alertmanager's webhook notifications, in memory and in a JSON-lines file."""

    def __init__(self, host: str, port: int, log_path: Path) -> None:
        self.host, self.port, self.log_path = host, port, log_path
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Self:
        receiver = self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    payload = json.loads(self.rfile.read(length))
                    if not isinstance(payload, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    self._answer(400, {"error": f"body is not a webhook payload: {exc}"})
                    return
                receiver.record(self.path, payload)
                self._answer(200, {"status": "ok"})

            def _answer(self, status: int, body: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per notification goes to the log file instead

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def record(self, path: str, payload: dict[str, Any]) -> None:
        entry = {"received": time.time(), "receiver": path.rstrip("/").rsplit("/", 1)[-1],
                 "path": path, "payload": payload}  # fmt: skip
        with self._lock:
            self.notifications.append(entry)
            with self.log_path.open("a") as log:
                log.write(json.dumps(entry) + "\n")

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification, with the receiver that got it."""
        with self._lock:
            return [
                {**alert, "receiver": n["receiver"]}
                for n in self.notifications
                for alert in n["payload"].get("alerts", [])
            ]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# --- HTTP APIs


class PrometheusAPI:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, **params: Any) -> Any:
        try:
            r = requests.get(f"{self.url}{path}", params=params, timeout=10)
        except requests.RequestException as exc:
            raise MonitoringError(f"Prometheus at {self.url} does not answer: {exc}") from exc
        try:
            body = r.json()
        except ValueError as exc:
            raise MonitoringError(f"Prometheus at {self.url}{path}: HTTP {r.status_code}") from exc
        if body.get("status") != "success":
            raise MonitoringError(
                f"Prometheus refused {params or path}: {body.get('error', r.status_code)}"
            )
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query returning one series, or None when it returns none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return alerts

    def firing(self, name: str | None = None) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts()
            if a["state"] == "firing" and (name is None or a["labels"]["alertname"] == name)
        ]

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return targets


class AlertmanagerAPI:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def alerts(self) -> list[dict[str, Any]]:
        try:
            r = requests.get(f"{self.url}/api/v2/alerts", timeout=10)
            r.raise_for_status()
        except requests.RequestException as exc:
            raise MonitoringError(f"Alertmanager at {self.url} does not answer: {exc}") from exc
        alerts: list[dict[str, Any]] = r.json()
        return alerts

    def post(self, alerts: list[dict[str, Any]]) -> None:
        try:
            requests.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()
        except requests.RequestException as exc:
            raise MonitoringError(f"Alertmanager at {self.url} refused alerts: {exc}") from exc


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    """Poll until check() returns something truthy; MonitoringError naming `what` if not."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise MonitoringError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class MonitoringStack:
    """Webhook receiver, Alertmanager and Prometheus, started in that order; a context manager."""

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.webhook = WebhookReceiver(
            settings.host, settings.webhook_port, settings.run_dir / "webhook.jsonl"
        )
        self.alertmanager = Alertmanager(settings)
        self.prometheus = Prometheus(settings)
        self.prom = PrometheusAPI(settings.prometheus_url)
        self.am = AlertmanagerAPI(settings.alertmanager_url)

    def start(self) -> Self:
        self.s.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.webhook.start()
            self.alertmanager.start().wait_ready()
            self.prometheus.start().wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.prometheus.stop()
        with contextlib.suppress(Exception):
            self.alertmanager.stop()
        self.webhook.stop()

    def set_targets(self, **addresses: list[str]) -> None:
        """Replace the serving or drift targets (torchserve=[...], drift=[...]) while running."""
        for name, value in addresses.items():
            if name not in JOBS:
                raise ConfigError(f"unknown target kind {name!r}; one of {sorted(JOBS)}")
            setattr(self.s, name, value)
        write_targets(self.s)

    def describe(self) -> dict[str, str]:
        return {
            "prometheus": self.s.prometheus_url,
            "alertmanager": self.s.alertmanager_url,
            "webhook": self.s.webhook_url,
            "notifications": str(self.webhook.log_path),
        }

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
