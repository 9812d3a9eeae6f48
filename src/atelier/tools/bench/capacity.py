"""`atelier bench capacity`: the highest request rate one serving replica holds within the p99
SLO, on this machine, and the chart's autoscaling defaults derived from it.

One TorchServe (one replica: its configured workers, the feature spool on) is driven by wrk
(the C load generator) in a step ramp over connection counts; each step records req/s, p50,
p99, non-2xx answers and the CPU of TorchServe's whole process tree. The knee is the step
with the highest req/s whose p99 is within the SLO and that had no errors.

`derive_autoscaling` turns the measured block into the autoscaling defaults; docs/capacity.md
records both, and tests check that the doc (and the chart) agree with the derivation.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from atelier.runtime.errors import AtelierError, ConfigError

DEFAULT_CONNECTIONS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_SLO_P99_MS = 100.0  # the project's latency SLO objective: p99 <= 0.1 s
# Run each replica at 60% of its knee: the knee moved by a third between runs on this shared
# machine, and bursts arrive faster than any autoscaler reacts (docs/capacity.md).
DEFAULT_UTILISATION = 0.6
DEFAULT_DESIGN_PEAK_RPS = 5000.0  # the request rate maxReplicas is sized for (an assumption)
# Raw mode scales on the request rate by default: CPU follows TorchServe batches, not
# requests, so it is a weak load signal (docs/capacity.md). hpa-cpu and keda are values.
DEFAULT_RAW_MODE = "hpa-rps"
RAW_MODES = ("hpa-cpu", "hpa-rps", "keda")
DEFAULT_MIN_REPLICAS = 2  # N+1: one replica may be lost at any time


@dataclass
class Step:
    connections: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    cpu_percent: float  # TorchServe's process tree, of one core: 100 = one core busy
    machine_cpu_percent: float = 0.0  # the whole machine (wrk too), of all its cores
    # Answered with a 2xx: past its job queue TorchServe answers 503 at once, which wrk
    # counts in req/s.
    ok_req_per_s: float = 0.0

    def within(self, slo_p99_ms: float) -> bool:
        return self.non_2xx == 0 and self.p99_ms <= slo_p99_ms


def find_knee(steps: list[Step], slo_p99_ms: float) -> Step | None:
    """The step with the highest req/s that kept p99 within the SLO and had no errors."""
    ok = [s for s in steps if s.within(slo_p99_ms)]
    return max(ok, key=lambda s: s.req_per_s) if ok else None


class _CpuMeter:
    """CPU time of a process and all its descendants (TorchServe's Java frontend and its
    Python workers) between start() and stop(), as percent of one core."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.seen: dict[int, Any] = {}
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                t = p.cpu_times()
                self._last[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue

    def _total(self) -> float:
        return sum(self._last.values())

    def start(self) -> None:
        import psutil

        psutil.cpu_percent(interval=None)  # the machine-wide counter starts here
        self._last = {}
        self._sample()
        self._cpu0 = self._total()
        self._t0 = time.monotonic()
        self._stop.clear()
        # Sample during the step too, so a worker that exits mid-step still counts.
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def stop(self) -> tuple[float, float]:
        """(TorchServe CPU % of one core, machine CPU % of all cores) since start()."""
        import psutil

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        machine = float(psutil.cpu_percent(interval=None))
        wall = time.monotonic() - self._t0
        return (100.0 * (self._total() - self._cpu0) / wall if wall > 0 else 0.0), machine


def measure(
    store: Path,
    out: Path,
    step_seconds: float,
    connections: list[int],
    slo_p99_ms: float,
) -> dict[str, Any]:
    """Run the step ramp against one TorchServe; return the measured block."""
    import psutil

    from atelier.runtime.preprocess import encode_png
    from atelier.tools.bench.serve import WRK_SCRIPT, ensure_store, run_wrk
    from atelier.tools.torchserve import TorchServe, TorchServeSettings
    from atelier.training.archive import current
    from atelier.training.config import DEFAULT_FASHION_MNIST_DIR
    from atelier.training.data.idx import load_fashion_mnist

    out.mkdir(parents=True, exist_ok=True)
    ensure_store(store, out)
    cur = current(store)
    assert cur is not None
    name = str(cur["name"])
    work = Path(tempfile.mkdtemp(prefix="bench-capacity-", dir=out))
    body = work / "one.png"
    body.write_bytes(encode_png(load_fashion_mnist(DEFAULT_FASHION_MNIST_DIR)["test_x"][0]))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    settings = TorchServeSettings(
        store=store, run_dir=work / "torchserve", model_name=name,
        extra_env={"ATELIER_SPOOL_DIR": str(work / "spool")},
    )  # fmt: skip
    steps: list[Step] = []
    baseline = 0.0
    try:
        with TorchServe(settings) as ts:
            assert ts.proc is not None
            url = f"{ts.inference_url}/predictions/{name}"
            run_wrk(url, body, "image/png", 4, 2.0, script)  # warm-up
            # Other processes on the machine take CPU from the replica: say how busy it was.
            baseline = float(psutil.cpu_percent(interval=2.0))
            if baseline > 20:
                print(
                    f"warning: the machine is {baseline:.0f}% busy before the ramp (other "
                    "processes): the replica gets less CPU, the knee comes lower",
                    flush=True,
                )
            meter = _CpuMeter(ts.proc.pid)
            for c in connections:
                meter.start()
                r = run_wrk(url, body, "image/png", c, step_seconds, script)
                cpu, machine = meter.stop()
                ok = max(0.0, r["req_per_s"] - r["non_2xx"] / max(1, round(step_seconds)))
                step = Step(c, r["req_per_s"], r["p50_ms"], r["p99_ms"], int(r["non_2xx"]),
                            cpu, machine, ok)  # fmt: skip
                steps.append(step)
                print(
                    f"  c={c:<3} {step.ok_req_per_s:8.1f} 2xx req/s  p50 {step.p50_ms:7.2f} ms  "
                    f"p99 {step.p99_ms:7.2f} ms  TorchServe CPU {step.cpu_percent:4.0f}%  "
                    f"machine {machine:3.0f}%",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    knee = find_knee(steps, slo_p99_ms)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "busy_before_percent": round(baseline, 1),
            "load_generator": "wrk -t1, 127.0.0.1",
        },
        "model": {"name": name, "version": str(cur["version"]), **_serving(store, name)},
        "protocol": "raw PNG, one image per request",
        "slo_p99_ms": slo_p99_ms,
        "step_seconds": step_seconds,
        "steps": [_rounded(s) for s in steps],
        "knee_connections": knee.connections if knee else None,
    }


def _serving(store: Path, name: str) -> dict[str, Any]:
    """Workers and batching of the served version, from config.properties' model_snapshot."""
    for line in (store / "config" / "config.properties").read_text().splitlines():
        if line.startswith("model_snapshot="):
            models = json.loads(line.partition("=")[2])["models"][name]
            entry = next(iter(models.values()))
            keys = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
            return {k: entry[k] for k in keys if k in entry}
    return {}


def _rounded(s: Step) -> dict[str, Any]:
    return {
        "connections": s.connections,
        "req_per_s": round(s.req_per_s, 1),
        "p50_ms": round(s.p50_ms, 2),
        "p99_ms": round(s.p99_ms, 2),
        "non_2xx": s.non_2xx,
        "cpu_percent": round(s.cpu_percent, 1),
        "machine_cpu_percent": round(s.machine_cpu_percent, 1),
        "ok_req_per_s": round(s.ok_req_per_s, 1),
    }


def steps_of(measured: dict[str, Any]) -> list[Step]:
    return [Step(**s) for s in measured["steps"]]


def derive_autoscaling(
    measured: dict[str, Any],
    utilisation: float = DEFAULT_UTILISATION,
    design_peak_rps: float = DEFAULT_DESIGN_PEAK_RPS,
    min_replicas: int = DEFAULT_MIN_REPLICAS,
    raw_mode: str = DEFAULT_RAW_MODE,
) -> dict[str, Any]:
    """The chart's autoscaling defaults, from the measured block alone.

    - per-replica target = floor(knee req/s x utilisation);
    - replicas for a rate R = ceil(R / target) + 1 (N+1: one replica may be lost);
      maxReplicas is that for ``design_peak_rps``;
    - CPU request = the replica's CPU at the knee, rounded up to 100m; the HPA's CPU target
      is the CPU at the target rate (interpolated on the curve) as a share of that request.
    """
    if not 0 < utilisation <= 1:
        raise ConfigError(f"utilisation {utilisation}: must be in (0, 1]")
    if raw_mode not in RAW_MODES:
        raise ConfigError(f"raw mode {raw_mode!r}: choose one of {', '.join(RAW_MODES)}")
    steps = steps_of(measured)
    knee = find_knee(steps, float(measured["slo_p99_ms"]))
    if knee is None:
        raise AtelierError(
            f"no step kept p99 within {measured['slo_p99_ms']} ms without errors: no knee",
            hint="start the ramp at 1 connection, or check the server",
        )
    target = math.floor(knee.req_per_s * utilisation)
    if target < 1:
        raise AtelierError(f"knee {knee.req_per_s} req/s x {utilisation} is below 1 req/s")
    cpu_request_m = math.ceil(knee.cpu_percent * 10 / 100) * 100
    curve = sorted((s.req_per_s, s.cpu_percent) for s in steps if s.req_per_s <= knee.req_per_s)
    cpu_at_target = _interp(target, curve)
    cpu_utilisation = round(100 * cpu_at_target * 10 / cpu_request_m)
    max_replicas = max(min_replicas, replicas_for(design_peak_rps, target))
    return {
        "autoscaling": {
            "utilisation": utilisation,
            "perReplicaRps": target,
            "designPeakRps": int(design_peak_rps)
            if float(design_peak_rps).is_integer()
            else design_peak_rps,
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "kserve": {"scaleMetric": "rps", "scaleTarget": target},
            "raw": {
                "mode": raw_mode,
                # keda: a Prometheus trigger with threshold requestsPerSecond
                "hpa": {"cpuUtilization": cpu_utilisation, "requestsPerSecond": target},
            },
        },
        "resources": {"requests": {"cpu": f"{cpu_request_m}m"}},
    }


def replicas_for(rate: float, per_replica: float) -> int:
    """Replicas to serve ``rate`` req/s at ``per_replica`` each, with one lost (N+1)."""
    return math.ceil(rate / per_replica) + 1


def _interp(x: float, curve: list[tuple[float, float]]) -> float:
    """Linear interpolation through (0, 0) and the (req/s, cpu%) points."""
    pts = [(0.0, 0.0), *curve]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1 and x1 > x0:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


# --- docs/capacity.md: one ```json block under "## Measured", one ```yaml block under
# "## Chart autoscaling defaults". The chart test reads the same function.

MEASURED_HEADING = "## Measured"
DEFAULTS_HEADING = "## Chart autoscaling defaults"


def _block(text: str, heading: str, lang: str) -> str:
    start = text.find(f"\n{heading}\n")
    if start < 0:
        raise ConfigError(f"capacity doc: no '{heading}' section")
    m = re.compile(rf"```{lang}\n(.*?)\n```", re.S).search(text, start)
    if m is None:
        raise ConfigError(f"capacity doc: no ```{lang} block under '{heading}'")
    return m.group(1)


def read_capacity_doc(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(measured block, chart autoscaling defaults) from docs/capacity.md."""
    text = path.read_text()
    measured = json.loads(_block(text, MEASURED_HEADING, "json"))
    defaults = yaml.safe_load(_block(text, DEFAULTS_HEADING, "yaml"))
    return measured, defaults


def curve_table(measured: dict[str, Any]) -> str:
    """The measured steps as a markdown table (docs/capacity.md shows it above the plot)."""
    steps = steps_of(measured)
    knee = find_knee(steps, float(measured["slo_p99_ms"]))
    lines = [
        "| connections | 2xx req/s | p50 ms | p99 ms | non-2xx | TorchServe CPU % | "
        "machine CPU % | |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in steps:
        mark = "**knee**" if s is knee else ("" if s.within(measured["slo_p99_ms"]) else "over SLO")
        lines.append(
            f"| {s.connections} | {s.ok_req_per_s:,.0f} | {s.p50_ms:.1f} | {s.p99_ms:.1f} | "
            f"{s.non_2xx:,} | {s.cpu_percent:.0f} | {s.machine_cpu_percent:.0f} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def _measured_json(measured: dict[str, Any]) -> str:
    """JSON with one line per key and per step: readable in a doc, exact for a parser."""
    parts = []
    for key, value in measured.items():
        if key == "steps":
            rows = ",\n".join(f"    {json.dumps(step)}" for step in value)
            parts.append(f'  "steps": [\n{rows}\n  ]')
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}"


def doc_blocks(measured: dict[str, Any], defaults: dict[str, Any], notes: dict[str, Any]) -> str:
    """The curve table and the two blocks, as they go into docs/capacity.md."""
    head = (
        "# derived by atelier.tools.bench.capacity.derive_autoscaling from the measured block; "
        + (", ".join(f"{k}={v}" for k, v in notes.items()))
    )
    return (
        f"{curve_table(measured)}\n"
        f"{MEASURED_HEADING}\n\n```json\n{_measured_json(measured)}\n```\n\n"
        f"{DEFAULTS_HEADING}\n\n```yaml\n{head}\n"
        f"{yaml.safe_dump(defaults, sort_keys=False)}```\n"
    )


def plot(measured: dict[str, Any], defaults: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = steps_of(measured)
    slo = float(measured["slo_p99_ms"])
    knee = find_knee(steps, slo)
    target = defaults["autoscaling"]["perReplicaRps"]
    rps = [s.ok_req_per_s for s in steps]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(rps, [s.p99_ms for s in steps], "o-", color="tab:red", label="p99")
    ax1.plot(rps, [s.p50_ms for s in steps], "o-", color="tab:blue", label="p50")
    for s in steps:
        ax1.annotate(f"c={s.connections}", (s.ok_req_per_s, s.p99_ms), fontsize=7,
                     xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax1.axhline(slo, color="grey", ls="--", label=f"SLO p99 {slo:g} ms")
    if knee is not None:
        ax1.axvline(knee.req_per_s, color="tab:green", ls=":",
                    label=f"knee {knee.req_per_s:.0f} req/s")  # fmt: skip
    ax1.axvline(target, color="tab:purple", ls="-.", label=f"target {target} req/s")
    ax1.set_yscale("log")
    ax1.set_xlabel("2xx req/s (one replica)")
    ax1.set_ylabel("latency ms (log)")
    ax1.set_title("latency against throughput")
    ax1.legend(fontsize=8)
    conns = [s.connections for s in steps]
    ax2.plot(conns, rps, "o-", color="tab:green", label="2xx req/s")
    ax2.plot(conns, [s.req_per_s - s.ok_req_per_s for s in steps], "x:", color="tab:red",
             label="non-2xx/s (queue full)")  # fmt: skip
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("wrk connections (step ramp)")
    ax2.set_ylabel("req/s")
    ax3 = ax2.twinx()
    cpus = int(measured["machine"]["cpus"] or 1)
    ax3.plot(conns, [s.cpu_percent for s in steps], "s--", color="tab:orange",
             label="TorchServe CPU")  # fmt: skip
    ax3.plot(conns, [s.machine_cpu_percent * cpus for s in steps], "^--", color="tab:grey",
             label="machine CPU")  # fmt: skip
    ax3.set_ylabel("CPU % of one core")
    ax3.set_ylim(0, 100 * cpus * 1.05)
    ax2.set_title("throughput and CPU per step")
    h2, l2 = ax2.get_legend_handles_labels()
    h3, l3 = ax3.get_legend_handles_labels()
    ax2.legend(h2 + h3, l2 + l3, fontsize=8, loc="upper left")
    fig.suptitle(
        f"one TorchServe replica, {measured['machine']['cpus']} cores, "
        f"{measured['step_seconds']:g} s per step"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(measured: dict[str, Any], defaults: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    steps = steps_of(measured)
    slo = float(measured["slo_p99_ms"])
    knee = find_knee(steps, slo)
    table = Table(title=f"atelier bench capacity: one TorchServe replica, p99 SLO {slo:g} ms")
    cols = ("connections", "2xx req/s", "p50 ms", "p99 ms", "non-2xx", "TorchServe CPU %",
            "machine CPU %", "")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right" if col else "left")
    for s in steps:
        mark = "<- knee" if s is knee else ("" if s.within(slo) else "over SLO")
        table.add_row(str(s.connections), f"{s.ok_req_per_s:,.0f}", f"{s.p50_ms:.2f}",
                      f"{s.p99_ms:.2f}", str(s.non_2xx), f"{s.cpu_percent:.0f}",
                      f"{s.machine_cpu_percent:.0f}", mark)  # fmt: skip
    console = Console(width=120)
    console.print(table)
    a = defaults["autoscaling"]
    if knee is not None:
        console.print(
            f"knee: {knee.req_per_s:,.0f} req/s at {knee.connections} connections "
            f"(p50 {knee.p50_ms:.1f} ms, p99 {knee.p99_ms:.1f} ms, CPU {knee.cpu_percent:.0f}%)",
            highlight=False,
        )
    console.print(
        f"per-replica target {a['perReplicaRps']} req/s (x{a['utilisation']}); "
        f"replicas for R req/s = ceil(R / {a['perReplicaRps']}) + 1; "
        f"HPA CPU {a['raw']['hpa']['cpuUtilization']}% of "
        f"{defaults['resources']['requests']['cpu']}",
        highlight=False,
    )


def bench_capacity(
    store: Path,
    out: Path,
    step_seconds: float,
    connections: list[int],
    slo_p99_ms: float,
    utilisation: float,
    design_peak_rps: float,
) -> dict[str, Any]:
    if sorted(connections) != connections or len(set(connections)) != len(connections):
        raise ConfigError(f"--connections {connections}: give increasing counts (a step ramp)")
    measured = measure(store, out, step_seconds, connections, slo_p99_ms)
    try:
        defaults = derive_autoscaling(measured, utilisation, design_peak_rps)
    except AtelierError:
        (out / "capacity.json").write_text(json.dumps({"measured": measured}, indent=2))
        raise
    print_table(measured, defaults)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {"measured": measured, "defaults": defaults}
    for name in (f"capacity-{stamp}.json", "capacity.json"):
        (out / name).write_text(json.dumps(result, indent=2) + "\n")
    plot(measured, defaults, out / "capacity.png")
    notes = {"utilisation": utilisation, "design_peak_rps": f"{design_peak_rps:g}"}
    (out / "capacity-doc.md").write_text(doc_blocks(measured, defaults, notes))
    print(f"wrote {out}/capacity.json, capacity.png and capacity-doc.md (the blocks for "
          "docs/capacity.md)")  # fmt: skip
    return result
