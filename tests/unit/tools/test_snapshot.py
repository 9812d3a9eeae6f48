"""Snapshot helpers and drawing, without a server (the real Prometheus run is in integration)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from atelier.monitoring import dashboards
from atelier.runtime.errors import ConfigError, DashboardQueryError
from atelier.tools.snapshot import (
    DashboardSnapshot,
    PanelResult,
    Series,
    SnapshotResult,
    TargetResult,
    format_value,
    legend_name,
    parse_duration,
    render_png,
)

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15), ("15m", 900), ("1h30m", 5400), ("500ms", 0.5), ("2d", 172800)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "15x", "1h 5m", "0s", "-5m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="--range"):
        parse_duration(text, "--range")


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.0123, "percentunit", "1.2%"),
        (0.999, "percentunit", "99.9%"),
        (42.0, "percent", "42.0%"),
        (0.0042, "s", "4.2 ms"),
        (0.1, "s", "100.0 ms"),
        (3.5, "s", "3.50 s"),
        (2 * 1024**3, "bytes", "2.0 GiB"),
        (12.5, "reqps", "12.5 req/s"),
        (14.4, "x", "14.4x"),
        (1400, "short", "1.4 k"),
        (float("nan"), "s", "NaN"),
        (None, "s", "-"),
    ],
)
def test_format_value(value: float | None, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def test_legend_name() -> None:
    labels = {"__name__": "x", "job": "atelier-torchserve", "quantile": "0.99"}
    assert legend_name("{{job}} q{{ quantile }}", labels) == "atelier-torchserve q0.99"
    assert legend_name("{{missing}} p99", labels) == "p99"
    assert legend_name("", labels) == 'x{job="atelier-torchserve", quantile="0.99"}'
    assert legend_name("", {}) == "{}"


def _series(labels: dict[str, str], values: list[float]) -> Series:
    return Series(labels, [1_700_000_000 + 15 * i for i in range(len(values))], values)


def _results(board: dict) -> list[PanelResult]:
    """Every panel of a real dashboard, with a made-up series per target; one error."""
    out = []
    for n, panel in enumerate(dashboards.panels(board)):
        targets = []
        for t in panel["targets"]:
            result = TargetResult(t["refId"], t["expr"], t.get("legendFormat", ""))
            if n == 1:
                result.error = "bad_data: parse error at char 5: unexpected <EOF>"
            elif n != 2:  # panel 2 has no data
                labels = {"job": "atelier-torchserve", "model": "fashion-mnist", "window": "w",
                          "class_name": "Bag", "source": "current", "feature": "brightness",
                          "method": "ks", "quantile": "0.99", "step": "inference",
                          "code": "2xx"}  # fmt: skip
                result.series = [_series(labels, [0.1, 0.2, math.nan, 0.3])]
            targets.append(result)
        out.append(PanelResult(panel["title"], panel, targets))
    return out


@pytest.mark.parametrize("uid", ["atelier-serving", "atelier-drift", "atelier-slo"])
def test_render_png_draws_every_panel_type(uid: str, tmp_path: Path) -> None:
    board = dashboards.build_all()[uid]
    results = _results(board)
    assert [r.status for r in results[:3]] == ["data", "error", "no data"]
    rows = [p for p in board["panels"] if p["type"] == "row"]
    path = render_png(board["title"], results, rows, tmp_path / f"{uid}.png",
                      subtitle="unit test", window="last_1000")  # fmt: skip
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    with Image.open(path) as img:
        width, height = img.size
    assert width == 1800 and 600 < height < 2000


def test_failures_are_named_and_raise(tmp_path: Path) -> None:
    bad = TargetResult("B", "sum(", "", error="bad_data: unexpected end of input")
    good = TargetResult("A", "up", "", series=[_series({}, [1.0])])
    panel = PanelResult("Error ratio vs SLO", {"type": "timeseries"}, [good, bad])
    result = SnapshotResult(
        tmp_path,
        tmp_path / "index.md",
        [DashboardSnapshot("atelier-serving", "t", tmp_path, [panel])],
    )
    assert result.failures == [("atelier-serving", "Error ratio vs SLO", "B", bad.error)]
    assert result.counts() == {"data": 0, "no data": 0, "error": 1}
    with pytest.raises(DashboardQueryError, match=r"atelier-serving / Error ratio vs SLO \(B\)"):
        result.raise_for_failures()
