"""`atelier dashboards snapshot`: a PNG preview of each dashboard, from a live Prometheus.

No Grafana server runs here, so this is how people and reviewers look at the dashboards:
every target of every panel is run through Prometheus' /api/v1/query_range with the
template variables expanded as Grafana would (`dashboards.expand`), and each dashboard is
drawn with matplotlib in its Grafana grid layout: time series as lines (reference lines
dashed, thresholds drawn when the panel draws them), stat and gauge panels as their last
value with value mappings and threshold colours, the class-mix table as grouped bars.
An empty panel says "No data"; a query Prometheus rejects shows its error on the panel
and is listed in the result, so the command can fail naming it.
"""

from __future__ import annotations

import math
import re
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from atelier.monitoring import dashboards as dash
from atelier.runtime.errors import ConfigError, DashboardQueryError, PrometheusUnreachableError

# Grafana's dark theme, near enough for a preview.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e8e"
NAMED_COLORS = {
    "green": "#73BF69",
    "red": "#F2495C",
    "orange": "#FF9830",
    "yellow": "#FADE2A",
    "blue": "#5794F2",
    "purple": "#B877D9",
    "text": TEXT,
    "transparent": PANEL,
}
PALETTE = (
    "#7EB26D",
    "#EAB839",
    "#6ED0E0",
    "#EF843C",
    "#E24D42",
    "#1F78C1",
    "#BA43A9",
    "#705DA0",
    "#508642",
    "#CCA300",
    "#447EBC",
    "#C15C17",
)

GRID_COLUMNS = 24
FIG_WIDTH_IN = 20.0
GRID_UNIT_IN = 0.34  # Grafana: 30 px per grid row at 24 columns over ~1700 px
HEADER_IN = 0.7
MAX_LEGEND_ENTRIES = 12
DPI = 90

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, what: str = "duration") -> float:
    """'15m', '30s', '1h30m' -> seconds; ConfigError naming `what` otherwise."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{what} {text!r} is not a duration", hint="use e.g. 30s, 15m, 1h")
    seconds = sum(float(n) * _DURATION_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"{what} {text!r} must be positive")
    return seconds


def _promql_duration(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


# --- Prometheus -------------------------------------------------------------------------


@dataclass
class Series:
    labels: dict[str, str]
    times: list[float]
    values: list[float]

    def last(self) -> float | None:
        for v in reversed(self.values):
            if not math.isnan(v):
                return v
        return None


class QueryFailed(Exception):
    """Prometheus answered and rejected a query (bad PromQL, execution error, timeout)."""


class PrometheusClient:
    """The two calls a snapshot needs, with typed errors."""

    def __init__(self, url: str, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _unreachable(self, detail: str) -> PrometheusUnreachableError:
        return PrometheusUnreachableError(
            f"Prometheus at {self.url} is not answering: {detail}",
            hint="start it (`atelier monitoring up`, or make demo) or pass --prometheus URL",
        )

    def check(self) -> None:
        """Raise PrometheusUnreachableError unless the URL answers like a Prometheus."""
        try:
            r = self.session.get(f"{self.url}/api/v1/status/buildinfo", timeout=self.timeout)
        except requests.RequestException as exc:
            raise self._unreachable(type(exc).__name__) from exc
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            raise self._unreachable(f"HTTP {r.status_code} from /api/v1/status/buildinfo")

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        try:
            r = self.session.post(f"{self.url}/api/v1/query_range", data=data, timeout=self.timeout)
        except requests.Timeout as exc:
            raise QueryFailed(f"timed out after {self.timeout:g} s") from exc
        except requests.RequestException as exc:
            raise self._unreachable(type(exc).__name__) from exc
        try:
            body = r.json()
        except ValueError as exc:
            raise QueryFailed(f"HTTP {r.status_code}, not JSON") from exc
        if r.status_code != 200 or body.get("status") != "success":
            raise QueryFailed(
                f"{body.get('errorType', 'error')}: {body.get('error', f'HTTP {r.status_code}')}"
            )
        result = body.get("data", {})
        if result.get("resultType") != "matrix":
            raise QueryFailed(f"unexpected result type {result.get('resultType')!r}")
        return [
            Series(
                labels=dict(item.get("metric", {})),
                times=[float(t) for t, _ in item.get("values", [])],
                values=[float(v) for _, v in item.get("values", [])],
            )
            for item in result.get("result", [])
        ]


# --- results ----------------------------------------------------------------------------


@dataclass
class TargetResult:
    ref_id: str
    expr: str
    legend: str
    series: list[Series] = field(default_factory=list)
    error: str | None = None


@dataclass
class PanelResult:
    title: str
    panel: dict[str, Any]
    targets: list[TargetResult]

    @property
    def errors(self) -> list[TargetResult]:
        return [t for t in self.targets if t.error]

    @property
    def series_count(self) -> int:
        return sum(len(t.series) for t in self.targets)

    @property
    def status(self) -> str:
        if self.errors:
            return "error"
        return "data" if self.series_count else "no data"


@dataclass
class DashboardSnapshot:
    uid: str
    title: str
    png: Path
    panels: list[PanelResult]


@dataclass
class SnapshotResult:
    out_dir: Path
    index: Path
    dashboards: list[DashboardSnapshot]

    @property
    def pngs(self) -> list[Path]:
        return [d.png for d in self.dashboards]

    @property
    def failures(self) -> list[tuple[str, str, str, str]]:
        """(dashboard uid, panel title, refId, error) of every rejected query."""
        return [
            (d.uid, p.title, t.ref_id, t.error or "")
            for d in self.dashboards
            for p in d.panels
            for t in p.errors
        ]

    def raise_for_failures(self) -> None:
        """DashboardQueryError naming every panel whose query Prometheus rejected."""
        failures = self.failures
        if failures:
            named = "; ".join(
                f"{uid} / {title} ({ref}): {err}" for uid, title, ref, err in failures
            )
            raise DashboardQueryError(
                f"{len(failures)} dashboard queries failed: {named}",
                hint=f"the PNGs and {self.index} show them; fix the query in "
                f"{dash.SOURCE} and rebuild",
            )

    def counts(self) -> dict[str, int]:
        out = {"data": 0, "no data": 0, "error": 0}
        for d in self.dashboards:
            for p in d.panels:
                out[p.status] += 1
        return out


# --- formatting -------------------------------------------------------------------------


def legend_name(legend: str, labels: Mapping[str, str]) -> str:
    """Grafana's legend format: {{label}} replaced by the series' label value."""
    if legend and legend != "__auto":
        text = re.sub(r"\{\{\s*([\w.]+)\s*\}\}", lambda m: labels.get(m.group(1), ""), legend)
        return " ".join(text.split()) or legend
    name = labels.get("__name__", "")
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{inner}}}" if inner or not name else name


def format_value(value: float | None, unit: str = "short", decimals: int | None = None) -> str:
    """A number the way the panel's unit shows it (a subset of Grafana's units)."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"

    def num(v: float, default: int = 2) -> str:
        d = default if decimals is None else decimals
        return f"{v:.{d}f}" if abs(v) >= 1 or v == 0 else f"{v:.{max(d, 3)}g}"

    if unit == "percentunit":
        return f"{num(value * 100, 1)}%"
    if unit == "percent":
        return f"{num(value, 1)}%"
    if unit == "s":
        a = abs(value)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{num(value * 1e6, 0)} µs"
        if a < 1:
            return f"{num(value * 1e3, 1)} ms"
        if a < 120:
            return f"{num(value, 2)} s"
        if a < 7200:
            return f"{num(value / 60, 1)} min"
        return f"{num(value / 3600, 1)} h"
    if unit == "bytes":
        v = value
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(v) < 1024 or suffix == "TiB":
                return f"{num(v, 1 if suffix != 'B' else 0)} {suffix}"
            v /= 1024
    if unit == "reqps":
        return f"{_short(value, decimals)} req/s"
    if unit == "x":
        return f"{_short(value, decimals)}x"
    return _short(value, decimals)


def _short(value: float, decimals: int | None = None) -> str:
    a = abs(value)
    for limit, suffix in ((1e9, " B"), (1e6, " M"), (1e3, " k")):
        if a >= limit:
            return f"{value / limit:.{1 if decimals is None else decimals}f}{suffix}"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if a == 0 or a >= 100:
        return f"{value:.0f}"
    if a >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def _color(name: str | None, fallback: str = TEXT) -> str:
    if not name:
        return fallback
    return NAMED_COLORS.get(name, name)


def _threshold_color(value: float | None, defaults: Mapping[str, Any]) -> str:
    steps = (defaults.get("thresholds") or {}).get("steps") or []
    color = TEXT
    if value is None or math.isnan(value):
        return color
    for step in steps:
        if step.get("value") is None or value >= float(step["value"]):
            color = _color(step.get("color"))
    return color


def _mapped(value: float | None, defaults: Mapping[str, Any]) -> tuple[str, str] | None:
    """(text, colour) from a value mapping of the panel, if one matches."""
    if value is None or math.isnan(value):
        return None
    for mapping in defaults.get("mappings") or []:
        if mapping.get("type") != "value":
            continue
        for key, result in (mapping.get("options") or {}).items():
            try:
                matches = float(key) == value
            except ValueError:
                matches = False
            if matches:
                return str(result.get("text", key)), _color(result.get("color"))
    return None


def _overrides(panel: Mapping[str, Any], name: str, ref_id: str) -> dict[str, Any]:
    """Field-config overrides that apply to a series (byName, byRegexp, byFrameRefID)."""
    props: dict[str, Any] = {}
    for o in (panel.get("fieldConfig") or {}).get("overrides") or []:
        matcher = o.get("matcher") or {}
        mid, opt = matcher.get("id"), str(matcher.get("options", ""))
        hit = (
            (mid == "byName" and opt == name)
            or (mid == "byRegexp" and re.fullmatch(opt, name) is not None)
            or (mid == "byFrameRefID" and opt == ref_id)
        )
        if hit:
            for p in o.get("properties") or []:
                props[str(p.get("id"))] = p.get("value")
    return props


# --- querying ---------------------------------------------------------------------------


def query_dashboard(
    client: PrometheusClient,
    dashboard: Mapping[str, Any],
    *,
    start: float,
    end: float,
    step: float,
    variables: Mapping[str, str],
) -> list[PanelResult]:
    out = []
    for panel in dash.panels(dashboard):
        targets = []
        for t in panel.get("targets", []):
            if not t.get("expr") or t.get("hide"):
                continue
            expr = dash.expand(str(t["expr"]), **variables)
            result = TargetResult(str(t.get("refId", "")), expr, str(t.get("legendFormat", "")))
            try:
                result.series = client.query_range(expr, start, end, step)
            except QueryFailed as exc:
                result.error = str(exc)
            targets.append(result)
        out.append(PanelResult(str(panel.get("title", "")), dict(panel), targets))
    return out


# --- drawing ----------------------------------------------------------------------------


def _panel_title(panel: PanelResult, window: str) -> str:
    return panel.title.replace("$window", window).replace("${window}", window)


def _draw_message(ax: Any, text: str, color: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        color=color,
        fontsize=10,
        transform=ax.transAxes,
        wrap=True,
    )


def _draw_timeseries(
    fig: Any,
    ax: Any,
    panel: PanelResult,
    legend_box: tuple[float, ...],
    time_range: tuple[float, float] | None = None,
) -> None:
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter

    defaults = (panel.panel.get("fieldConfig") or {}).get("defaults") or {}
    unit = str(defaults.get("unit", "short"))
    handles, names = [], []
    i = 0
    for target in panel.targets:
        for s in target.series:
            name = legend_name(target.legend, s.labels)
            props = _overrides(panel.panel, name, target.ref_id)
            color = _color((props.get("color") or {}).get("fixedColor"), PALETTE[i % len(PALETTE)])
            dashed = (props.get("custom.lineStyle") or {}).get("fill") == "dash"
            times = [datetime.fromtimestamp(t, tz=UTC) for t in s.times]
            (line,) = ax.plot(
                times,
                s.values,
                color=color,
                linewidth=1.6 if dashed else 1.2,
                linestyle=(0, (6, 4)) if dashed else "-",
            )
            # A value between gaps draws no line segment: mark it, as Grafana does.
            v = s.values
            alone = [
                k
                for k in range(len(v))
                if not math.isnan(v[k])
                and (k == 0 or math.isnan(v[k - 1]))
                and (k == len(v) - 1 or math.isnan(v[k + 1]))
            ]
            if alone:
                ax.plot([times[k] for k in alone], [v[k] for k in alone], color=color,
                        marker="o", markersize=2.5, linestyle="none")  # fmt: skip
            handles.append(line)
            names.append(name)
            i += 1
    custom = defaults.get("custom") or {}
    if (custom.get("thresholdsStyle") or {}).get("mode", "off") != "off":
        for step in (defaults.get("thresholds") or {}).get("steps") or []:
            if step.get("value") is not None:
                ax.axhline(
                    float(step["value"]),
                    color=_color(step.get("color")),
                    linestyle=(0, (3, 3)),
                    linewidth=0.9,
                    alpha=0.8,
                )
    if defaults.get("min") is not None:
        ax.set_ylim(bottom=float(defaults["min"]))
    if defaults.get("max") is not None:
        ax.set_ylim(top=float(defaults["max"]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
    if time_range is not None:
        ax.set_xlim(*(datetime.fromtimestamp(t, tz=UTC) for t in time_range))
    locator = mdates.AutoDateLocator(tz=UTC, minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC, show_offset=False))
    ax.grid(True, color=BORDER, linewidth=0.6)
    if handles:
        shown = handles[:MAX_LEGEND_ENTRIES]
        labels = names[:MAX_LEGEND_ENTRIES]
        if len(handles) > MAX_LEGEND_ENTRIES:
            labels[-1] = f"... +{len(handles) - MAX_LEGEND_ENTRIES + 1} more"
        x0, y0, w = legend_box
        ncol = max(1, min(len(shown), int(w * FIG_WIDTH_IN / 2.6)))
        fig.legend(
            shown,
            labels,
            loc="upper left",
            bbox_to_anchor=(x0, y0),
            ncol=ncol,
            fontsize=6.5,
            frameon=False,
            labelcolor=TEXT,
            handlelength=1.6,
            columnspacing=1.0,
            borderaxespad=0.0,
        )


def _draw_values(ax: Any, panel: PanelResult) -> None:
    """Stat and gauge panels: the last value of each series, mapped and coloured."""
    defaults = (panel.panel.get("fieldConfig") or {}).get("defaults") or {}
    unit = str(defaults.get("unit", "short"))
    dec = defaults.get("decimals")
    decimals = int(dec) if dec is not None else None
    cells = []
    for target in panel.targets:
        for s in target.series:
            v = s.last()
            mapped = _mapped(v, defaults)
            text, color = mapped or (format_value(v, unit, decimals), _threshold_color(v, defaults))
            cells.append((legend_name(target.legend, s.labels), text, color, v))
    ax.set_axis_off()
    n = len(cells)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    big = 26 if n == 1 else max(9, 18 - 2 * rows)
    for k, (name, text, color, v) in enumerate(cells):
        cx = (k % cols + 0.5) / cols
        cy = 1 - (k // cols + 0.5) / rows
        ax.text(
            cx,
            cy - 0.02,
            text,
            ha="center",
            va="center",
            color=color,
            fontsize=big,
            fontweight="bold",
            transform=ax.transAxes,
        )
        if n > 1:
            ax.text(
                cx,
                cy + 0.5 / rows * 0.75,
                name,
                ha="center",
                va="center",
                color=MUTED,
                fontsize=7,
                transform=ax.transAxes,
            )
        if panel.panel.get("type") == "gauge" and v is not None and not math.isnan(v):
            lo, hi = float(defaults.get("min", 0)), float(defaults.get("max", 1))
            frac = min(1.0, max(0.0, (v - lo) / (hi - lo))) if hi > lo else 0.0
            w = 0.8 / cols
            x0 = cx - w / 2
            yb = cy - 0.38 / rows
            ax.add_patch(_rect(ax, x0, yb, w, 0.06 / rows, BORDER))
            ax.add_patch(_rect(ax, x0, yb, w * frac, 0.06 / rows, color))


def _rect(ax: Any, x: float, y: float, w: float, h: float, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, transform=ax.transAxes, facecolor=color, edgecolor="none")


def _draw_matrix(ax: Any, panel: PanelResult) -> None:
    """A table with Grafana's groupingToMatrix transform, drawn as grouped bars."""
    from matplotlib.ticker import FuncFormatter

    defaults = (panel.panel.get("fieldConfig") or {}).get("defaults") or {}
    unit = str(defaults.get("unit", "short"))
    opts: dict[str, Any] = {}
    for t in panel.panel.get("transformations") or []:
        if t.get("id") == "groupingToMatrix":
            opts = t.get("options") or {}
    row_field, col_field = str(opts.get("rowField", "")), str(opts.get("columnField", ""))
    cells: dict[tuple[str, str], float] = {}
    for target in panel.targets:
        for s in target.series:
            v = s.last()
            if v is not None:
                cells[(s.labels.get(row_field, "?"), s.labels.get(col_field, "?"))] = v
    rows = sorted({r for r, _ in cells})
    cols = sorted({c for _, c in cells})
    height = 0.8 / max(1, len(cols))
    for j, col in enumerate(cols):
        ys = [i + (j - (len(cols) - 1) / 2) * height for i in range(len(rows))]
        ax.barh(
            ys,
            [cells.get((r, col), 0.0) for r in rows],
            height=height,
            color=PALETTE[j % len(PALETTE)],
            label=col,
        )
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
    ax.grid(True, axis="x", color=BORDER, linewidth=0.6)
    ax.legend(fontsize=7, frameon=False, labelcolor=TEXT, loc="lower right")


def _draw_table(ax: Any, panel: PanelResult) -> None:
    defaults = (panel.panel.get("fieldConfig") or {}).get("defaults") or {}
    unit = str(defaults.get("unit", "short"))
    lines = [
        f"{legend_name(t.legend, s.labels)}: {format_value(s.last(), unit)}"
        for t in panel.targets
        for s in t.series
    ]
    ax.set_axis_off()
    ax.text(
        0.02,
        0.98,
        "\n".join(lines[:20]),
        ha="left",
        va="top",
        color=TEXT,
        fontsize=7,
        family="monospace",
        transform=ax.transAxes,
    )


def render_png(
    title: str,
    panels: Sequence[PanelResult],
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    subtitle: str,
    window: str,
    time_range: tuple[float, float] | None = None,
) -> Path:
    """Draw one dashboard in its grid layout and write it as a PNG.

    `time_range` (start, end, Unix seconds) is the x axis of every time series panel, as in
    Grafana; by default the axis spans the data.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grids = [p.panel.get("gridPos") or {} for p in panels] + [r.get("gridPos") or {} for r in rows]
    units = max((int(g.get("y", 0)) + int(g.get("h", 8)) for g in grids), default=8)
    height_in = HEADER_IN + units * GRID_UNIT_IN + 0.2
    fig = Figure(figsize=(FIG_WIDTH_IN, height_in), dpi=DPI, facecolor=BACKGROUND)
    FigureCanvasAgg(fig)
    fig.text(
        0.008, 1 - 0.28 / height_in, title, color=TEXT, fontsize=15, fontweight="bold", va="center"
    )
    fig.text(0.008, 1 - 0.56 / height_in, subtitle, color=MUTED, fontsize=8, va="center")

    def rect(g: Mapping[str, Any], pad_in: float = 0.05) -> tuple[float, float, float, float]:
        x, y = int(g.get("x", 0)), int(g.get("y", 0))
        w, h = int(g.get("w", 12)), int(g.get("h", 8))
        left = x / GRID_COLUMNS + pad_in / FIG_WIDTH_IN
        width = w / GRID_COLUMNS - 2 * pad_in / FIG_WIDTH_IN
        top_in = HEADER_IN + y * GRID_UNIT_IN + pad_in
        h_in = h * GRID_UNIT_IN - 2 * pad_in
        return left, 1 - (top_in + h_in) / height_in, width, h_in / height_in

    for row in rows:
        left, bottom, width, h = rect(row.get("gridPos") or {}, 0.02)
        fig.text(
            left,
            bottom + h / 2,
            str(row.get("title", "")),
            color=TEXT,
            fontsize=10,
            fontweight="bold",
            va="center",
        )

    from matplotlib.patches import FancyBboxPatch

    for panel in panels:
        g = panel.panel.get("gridPos") or {}
        left, bottom, width, h = rect(g)
        fig.patches.append(
            FancyBboxPatch(
                (left, bottom),
                width,
                h,
                boxstyle="round,pad=0,rounding_size=0.002",
                transform=fig.transFigure,
                facecolor=PANEL,
                edgecolor=BORDER,
                linewidth=0.8,
                zorder=-1,  # under the axes: the figure draws its patches after them
            )
        )
        h_in = h * height_in
        fig.text(
            left + 0.1 / FIG_WIDTH_IN,
            bottom + h - 0.17 / height_in,
            _panel_title(panel, window),
            color=TEXT,
            fontsize=8.5,
            fontweight="bold",
            va="center",
        )
        kind = str(panel.panel.get("type", "timeseries"))
        is_ts = kind == "timeseries"
        n_series = panel.series_count
        legend_in = 0.0
        if is_ts and n_series and not panel.errors:
            ncol = max(1, min(n_series, int(width * FIG_WIDTH_IN / 2.6)))
            legend_in = min(math.ceil(min(n_series, MAX_LEGEND_ENTRIES) / ncol), 4) * 0.15 + 0.06
        margin_left = (0.62 if is_ts or kind == "table" else 0.1) / FIG_WIDTH_IN
        if kind == "table":
            margin_left = 1.0 / FIG_WIDTH_IN
        ax_bottom_in = 0.08 + legend_in + (0.22 if is_ts or kind == "table" else 0.0)
        ax_h_in = max(0.3, h_in - 0.34 - ax_bottom_in)
        ax = fig.add_axes(
            (
                left + margin_left,
                bottom + ax_bottom_in / height_in,
                width - margin_left - 0.12 / FIG_WIDTH_IN,
                ax_h_in / height_in,
            )
        )
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color(BORDER)
        ax.tick_params(colors=MUTED, labelsize=6.5)
        if panel.errors:
            ax.set_axis_off()
            msg = "; ".join(f"{t.ref_id}: {t.error}" for t in panel.errors)
            wrap = max(20, int(width * FIG_WIDTH_IN * 11))
            _draw_message(ax, "query error\n" + textwrap.fill(msg, wrap)[:600], NAMED_COLORS["red"])
        elif not n_series:
            ax.set_axis_off()
            _draw_message(ax, "No data", MUTED)
        elif is_ts:
            legend_box = (left + margin_left, bottom + (0.06 + legend_in) / height_in, width)
            _draw_timeseries(fig, ax, panel, legend_box, time_range)
        elif kind in ("stat", "gauge"):
            _draw_values(ax, panel)
        elif kind == "table" and any(
            t.get("id") == "groupingToMatrix" for t in panel.panel.get("transformations") or []
        ):
            _draw_matrix(ax, panel)
        else:
            _draw_table(ax, panel)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor=BACKGROUND)
    return path


# --- the command --------------------------------------------------------------------------


def snapshot(
    prometheus_url: str,
    out_dir: Path,
    *,
    range_: str = "15m",
    step: str = "15s",
    model: str = "fashion-mnist",
    window: str = "last_1000",
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
    end: float | None = None,
) -> SnapshotResult:
    """Query every panel of every dashboard and write <uid>.png per dashboard + index.md.

    Raises PrometheusUnreachableError when the URL does not answer. Queries Prometheus
    rejects do not raise: they are drawn on their panel and listed in `result.failures`.
    """
    range_s = parse_duration(range_, "--range")
    step_s = parse_duration(step, "--step")
    if range_s / step_s > 11_000:
        raise ConfigError(
            f"--range {range_} at --step {step} is {range_s / step_s:.0f} points per series",
            hint="Prometheus answers at most 11000: use a larger --step",
        )
    client = PrometheusClient(prometheus_url)
    client.check()
    end_t = time.time() if end is None else end
    start_t = end_t - range_s
    # Grafana: $__rate_interval = max($__interval + scrape interval, 4 * scrape interval),
    # with the default scrape interval of 15 s.
    variables = {
        "model": model,
        "window": window,
        "rate_interval": _promql_duration(max(step_s + 15, 60)),
        "interval": _promql_duration(step_s),
        "range_": _promql_duration(range_s),
    }
    boards = dashboards if dashboards is not None else dash.build_all()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(end_t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    results = []
    for uid, board in boards.items():
        panel_results = query_dashboard(
            client, board, start=start_t, end=end_t, step=step_s, variables=variables
        )
        rows = [p for p in board.get("panels", []) if p.get("type") == "row"]
        subtitle = (
            f"{prometheus_url}  ·  model={model}  window={window}  ·  last {range_} at "
            f"{step} steps, to {stamp}  ·  preview by atelier dashboards snapshot"
        )
        png = render_png(
            str(board.get("title", uid)),
            panel_results,
            rows,
            out_dir / f"{uid}.png",
            subtitle=subtitle,
            window=window,
            time_range=(start_t, end_t),
        )
        results.append(DashboardSnapshot(uid, str(board.get("title", uid)), png, panel_results))
    index = _write_index(out_dir, results, prometheus_url, model, window, range_, step, stamp)
    return SnapshotResult(out_dir, index, results)


def _write_index(
    out_dir: Path,
    results: Sequence[DashboardSnapshot],
    url: str,
    model: str,
    window: str,
    range_: str,
    step: str,
    stamp: str,
) -> Path:
    lines = [
        "# Dashboard snapshots",
        "",
        f"Rendered by `atelier dashboards snapshot` from {url} at {stamp}: model `{model}`, "
        f"window `{window}`, last {range_} at {step} steps. A preview of the Grafana "
        "dashboards in monitoring/grafana/dashboards/, not Grafana itself.",
        "",
    ]
    for d in results:
        lines += [f"## {d.title} (`{d.uid}`)", "", f"![{d.title}]({d.png.name})", ""]
        lines += ["| panel | status | series |", "| --- | --- | --- |"]
        for p in d.panels:
            status = p.status
            if p.errors:
                status += ": " + "; ".join(f"{t.ref_id} {t.error}" for t in p.errors)
            title = _panel_title(p, window).replace("|", "\\|")
            lines.append(f"| {title} | {status.replace('|', '/')} | {p.series_count} |")
        lines.append("")
    path = out_dir / "index.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
