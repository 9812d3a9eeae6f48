"""`atelier dashboards snapshot` against a real Prometheus 2.42 on 127.0.0.1.

This Prometheus scrapes only itself (with a `model` label on the target), so it holds no
atelier series: every dashboard panel must say "No data" rather than fail. A small extra
dashboard reads `up{model=~"$model"}` (data) and a broken expression (a query error).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from atelier.monitoring import dashboards
from atelier.runtime.errors import DashboardQueryError, PrometheusUnreachableError
from atelier.tools.process import free_port
from atelier.tools.snapshot import snapshot

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus scraping itself every second; stopped by its PID."""
    exe = shutil.which("prometheus")
    assert exe, "prometheus is not installed: run make setup"
    base = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = base / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: prometheus\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}'], labels: {{model: {MODEL}}}}}]\n"
    )
    log = (base / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (base / "prometheus.log").read_text()[-2000:]
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "Prometheus not ready in 60 s"
            time.sleep(0.2)
        # Wait for the first scrape, so `up` has samples.
        while not requests.get(f"{url}/api/v1/query", params={"query": "up"}, timeout=5).json()[
            "data"
        ]["result"]:
            assert time.monotonic() < deadline, "no scrape in 60 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _assert_png(path: Path, min_height: int = 500) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert 15_000 < len(data) < 5_000_000, (path, len(data))
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = img.size
    assert width == 1800 and min_height < height < 2500


def test_snapshot_renders_every_dashboard_with_no_data(prometheus: str, tmp_path: Path) -> None:
    result = snapshot(prometheus, tmp_path / "snap", range_="2m", step="5s", model=MODEL)
    built = dashboards.build_all()
    assert [p.name for p in result.pngs] == [f"{uid}.png" for uid in built]
    for png in result.pngs:
        _assert_png(png)
    panel_count = sum(len(list(dashboards.panels(b))) for b in built.values())
    assert result.counts() == {"data": 0, "no data": panel_count, "error": 0}
    assert result.failures == []
    result.raise_for_failures()  # nothing to raise
    for d in result.dashboards:
        assert all(p.status == "no data" for p in d.panels), d.uid
        # Every target ran, with its template variables expanded.
        assert all("$" not in t.expr for p in d.panels for t in p.targets)
    index = result.index.read_text()
    for uid in built:
        assert f"]({uid}.png)" in index
    assert "| no data |" in index and "| error" not in index


def test_snapshot_draws_data_and_names_a_failing_query(prometheus: str, tmp_path: Path) -> None:
    board = {
        "uid": "check",
        "title": "check",
        "panels": [
            {"type": "timeseries", "title": "Up", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8},
             "fieldConfig": {"defaults": {"unit": "short"}},
             "targets": [{"refId": "A", "expr": 'up{model=~"$model"}', "legendFormat": "{{job}}"}]},
            {"type": "stat", "title": "Broken", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 8},
             "targets": [{"refId": "A", "expr": 'sum(up{model=~"$model"}'}]},
        ],
    }  # fmt: skip
    result = snapshot(prometheus, tmp_path, range_="1m", step="2s", dashboards={"check": board})
    _assert_png(result.pngs[0], min_height=250)  # one row of two panels
    up, broken = result.dashboards[0].panels
    assert up.status == "data" and up.targets[0].series[0].labels["model"] == MODEL
    assert broken.status == "error" and "parse error" in (broken.targets[0].error or "")
    assert [f[:3] for f in result.failures] == [("check", "Broken", "A")]
    with pytest.raises(DashboardQueryError, match=r"check / Broken \(A\)"):
        result.raise_for_failures()


def test_an_unreachable_prometheus_is_a_typed_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusUnreachableError, match=url):
        snapshot(url, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_cli_snapshot(prometheus: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "atelier", "dashboards", "snapshot", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    ok = run("--prometheus", prometheus, "--out", str(tmp_path), "--range", "1m", "--step", "5s")
    assert ok.returncode == 0, ok.stderr
    printed = ok.stdout.splitlines()
    for name in ("atelier-serving.png", "atelier-drift.png", "atelier-slo.png", "index.md"):
        assert str(tmp_path / name) in printed
    assert "0 with data" in ok.stdout and "0 query errors" in ok.stdout

    down = f"http://127.0.0.1:{free_port()}"
    bad = run("--prometheus", down, "--out", str(tmp_path / "down"))
    assert bad.returncode == PrometheusUnreachableError.exit_code
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert down in bad.stderr

    bad_range = run("--prometheus", prometheus, "--out", str(tmp_path / "x"), "--range", "soon")
    assert bad_range.returncode == 2 and "--range" in bad_range.stderr
