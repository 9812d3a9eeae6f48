"""atelier.tools.bench.capacity: the knee, the autoscaling defaults derived from it, and
docs/capacity.md, whose recorded defaults must follow from its recorded measurement."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from atelier.runtime.errors import AtelierError, ConfigError
from atelier.tools.bench import capacity as bc

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[3] / "docs" / "capacity.md"


def step(c: int, rps: float, p99: float, cpu: float, non_2xx: int = 0) -> dict[str, Any]:
    return {"connections": c, "req_per_s": rps, "p50_ms": p99 / 2, "p99_ms": p99,
            "non_2xx": non_2xx, "cpu_percent": cpu, "machine_cpu_percent": cpu / 2,
            "ok_req_per_s": rps - non_2xx / 5}  # fmt: skip


def measured(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"machine": {"cpus": 2}, "slo_p99_ms": 100.0, "step_seconds": 5.0,
            "steps": list(steps)}  # fmt: skip


CURVE = measured(
    step(1, 100, 10, 50),
    step(4, 400, 20, 80),
    step(16, 1000, 60, 150),
    step(32, 1100, 95, 170),
    step(64, 1300, 140, 180),  # over the SLO
    step(128, 4000, 90, 160, non_2xx=15000),  # fast 503s: errors, not capacity
)


def test_knee_is_the_fastest_step_within_the_slo_without_errors() -> None:
    knee = bc.find_knee(bc.steps_of(CURVE), 100)
    assert knee is not None and knee.connections == 32
    assert bc.find_knee(bc.steps_of(CURVE), 5) is None


def test_derived_defaults() -> None:
    d = bc.derive_autoscaling(CURVE, utilisation=0.7, design_peak_rps=5000)
    a = d["autoscaling"]
    assert a["perReplicaRps"] == math.floor(1100 * 0.7) == 770
    assert a["kserve"] == {"scaleMetric": "rps", "scaleTarget": 770}
    assert a["raw"]["hpa"]["requestsPerSecond"] == 770
    assert (a["minReplicas"], a["maxReplicas"]) == (2, math.ceil(5000 / 770) + 1)
    assert d["resources"]["requests"]["cpu"] == "1700m"  # 170% of a core, rounded up
    # CPU at 770 req/s on the curve: between (400, 80) and (1000, 150).
    cpu_at_target = 80 + (150 - 80) * (770 - 400) / (1000 - 400)
    assert a["raw"]["hpa"]["cpuUtilization"] == round(100 * cpu_at_target * 10 / 1700)
    assert a["raw"]["mode"] == "hpa-rps"


def test_replicas_for_a_rate_keep_one_spare() -> None:
    assert bc.replicas_for(100, 1236) == 2
    assert bc.replicas_for(1236, 1236) == 2
    assert bc.replicas_for(1237, 1236) == 3
    # A small design peak never sets maxReplicas under minReplicas.
    d = bc.derive_autoscaling(CURVE, design_peak_rps=10, min_replicas=3)
    assert d["autoscaling"]["maxReplicas"] == 3


def test_no_knee_and_bad_options_are_errors() -> None:
    with pytest.raises(AtelierError, match="no knee"):
        bc.derive_autoscaling(measured(step(1, 100, 500, 50)))
    with pytest.raises(ConfigError, match="utilisation"):
        bc.derive_autoscaling(CURVE, utilisation=1.5)
    with pytest.raises(ConfigError, match="raw mode"):
        bc.derive_autoscaling(CURVE, raw_mode="vpa")


def test_doc_blocks_round_trip(tmp_path: Path) -> None:
    defaults = bc.derive_autoscaling(CURVE)
    doc = tmp_path / "capacity.md"
    doc.write_text("# t\n\n" + bc.doc_blocks(CURVE, defaults, {"utilisation": 0.6}))
    assert bc.read_capacity_doc(doc) == (CURVE, defaults)
    doc.write_text("# t\n\n## Measured\n\nnothing\n")
    with pytest.raises(ConfigError, match="no ```json block under '## Measured'"):
        bc.read_capacity_doc(doc)


# --- docs/capacity.md: the recorded numbers agree with each other


@pytest.fixture(scope="module")
def doc() -> tuple[dict[str, Any], dict[str, Any]]:
    return bc.read_capacity_doc(DOC)


def test_doc_defaults_follow_from_the_doc_measurement(doc) -> None:
    measured_block, defaults = doc
    a = defaults["autoscaling"]
    derived = bc.derive_autoscaling(
        measured_block,
        utilisation=a["utilisation"],
        design_peak_rps=a["designPeakRps"],
        min_replicas=a["minReplicas"],
        raw_mode=a["raw"]["mode"],
    )
    assert defaults == derived


def test_doc_knee_and_target(doc) -> None:
    measured_block, defaults = doc
    knee = bc.find_knee(bc.steps_of(measured_block), measured_block["slo_p99_ms"])
    assert knee is not None and knee.connections == measured_block["knee_connections"]
    a = defaults["autoscaling"]
    assert a["perReplicaRps"] == math.floor(knee.req_per_s * a["utilisation"])
    assert a["kserve"]["scaleTarget"] == a["raw"]["hpa"]["requestsPerSecond"] == a["perReplicaRps"]
    assert a["maxReplicas"] == math.ceil(a["designPeakRps"] / a["perReplicaRps"]) + 1
    assert measured_block["slo_p99_ms"] == bc.DEFAULT_SLO_P99_MS  # the project's objective


def test_doc_table_and_plot_show_the_recorded_measurement(doc) -> None:
    measured_block, _ = doc
    text = DOC.read_text()
    assert bc.curve_table(measured_block) in text
    assert "](capacity.png)" in text and (DOC.parent / "capacity.png").stat().st_size > 10_000
