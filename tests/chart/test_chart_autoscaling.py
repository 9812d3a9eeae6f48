"""The chart's autoscaling numbers equal the ones docs/capacity.md records (issue 7).

docs/capacity.md's "Chart autoscaling defaults" block is derived from the measured capacity
(tests/unit/test_bench_capacity.py checks that); this test renders the chart and checks that
every autoscaling number in the rendered objects, and in values.yaml, is that block's. It fails
when one is changed without the other.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from atelier.tools.bench.capacity import read_capacity_doc
from atelier.tools.chart import chart_dir, rendered
from atelier.tools.paths import project_file

pytestmark = pytest.mark.chart


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    _, defaults = read_capacity_doc(project_file("docs/capacity.md"))
    return defaults


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((chart_dir() / "values.yaml").read_text())


def one(objects: tuple[Any, ...], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def serving_container(objects: tuple[Any, ...]) -> dict[str, Any]:
    runtime = one(objects, "ServingRuntime")
    return runtime["spec"]["containers"][0]


def test_values_defaults_equal_the_doc(doc: dict[str, Any], values: dict[str, Any]) -> None:
    a = values["serving"]["autoscaling"]
    d = doc["autoscaling"]
    assert (a["minReplicas"], a["maxReplicas"]) == (d["minReplicas"], d["maxReplicas"])
    assert a["kserve"]["scaleMetric"] == d["kserve"]["scaleMetric"]
    assert a["kserve"]["scaleTarget"] == d["kserve"]["scaleTarget"]
    assert a["raw"]["mode"] == d["raw"]["mode"]
    assert a["raw"]["hpa"]["cpuUtilization"] == d["raw"]["hpa"]["cpuUtilization"]
    assert a["raw"]["hpa"]["requestsPerSecond"] == d["raw"]["hpa"]["requestsPerSecond"]
    assert values["serving"]["resources"]["requests"]["cpu"] == doc["resources"]["requests"]["cpu"]


def test_kserve_serverless_scales_on_rps(doc: dict[str, Any]) -> None:
    """Knative (Serverless): the predictor's scaleMetric and scaleTarget are the doc's kserve.*."""
    objects = rendered("serving.kserve.deploymentMode=Knative")
    predictor = one(objects, "InferenceService")["spec"]["predictor"]
    d = doc["autoscaling"]
    assert predictor["scaleMetric"] == d["kserve"]["scaleMetric"] == "rps"
    assert predictor["scaleTarget"] == d["kserve"]["scaleTarget"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        d["minReplicas"],
        d["maxReplicas"],
    )


def test_kserve_raw_deployment_scales_on_cpu_by_default(doc: dict[str, Any]) -> None:
    """Standard (RawDeployment): KServe's HPA knows cpu and memory only, so hpa-cpu numbers."""
    objects = rendered()
    isvc = one(objects, "InferenceService")
    predictor = isvc["spec"]["predictor"]
    d = doc["autoscaling"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert predictor["scaleMetric"] == "cpu"
    assert predictor["scaleTarget"] == d["raw"]["hpa"]["cpuUtilization"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        d["minReplicas"],
        d["maxReplicas"],
    )
    cpu = doc["resources"]["requests"]["cpu"]
    assert predictor["model"]["resources"]["requests"]["cpu"] == cpu
    assert serving_container(objects)["resources"]["requests"]["cpu"] == cpu


def test_kserve_raw_deployment_keda_uses_the_rps_target(doc: dict[str, Any]) -> None:
    objects = rendered("serving.autoscaling.kserve.rawDeployment=keda")
    isvc = one(objects, "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    assert "scaleMetric" not in predictor  # KServe rejects scaleMetric with KEDA
    (metric,) = predictor["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["backend"] == "prometheus"
    assert "ts_inference_requests_total" in metric["external"]["metric"]["query"]
    assert float(metric["external"]["target"]["value"]) == doc["autoscaling"]["perReplicaRps"]
    assert (
        float(metric["external"]["target"]["value"])
        == (doc["autoscaling"]["raw"]["hpa"]["requestsPerSecond"])
    )


def test_raw_default_is_an_hpa_on_the_request_rate(doc: dict[str, Any]) -> None:
    objects = rendered("serving.mode=raw")
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    d = doc["autoscaling"]
    assert d["raw"]["mode"] == "hpa-rps"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (d["minReplicas"], d["maxReplicas"])
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert float(metric["pods"]["target"]["averageValue"]) == d["raw"]["hpa"]["requestsPerSecond"]
    deployment = one(objects, "Deployment")
    torchserve = deployment["spec"]["template"]["spec"]["containers"][0]
    assert torchserve["resources"]["requests"]["cpu"] == doc["resources"]["requests"]["cpu"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the replica count


def test_raw_hpa_cpu(doc: dict[str, Any]) -> None:
    objects = rendered("serving.mode=raw", "serving.autoscaling.raw.mode=hpa-cpu")
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": doc["autoscaling"]["raw"]["hpa"]["cpuUtilization"],
    }


def test_raw_keda_threshold_is_the_per_replica_rate(doc: dict[str, Any]) -> None:
    objects = rendered("serving.mode=raw", "serving.autoscaling.raw.mode=keda")
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    scaled = one(objects, "ScaledObject")["spec"]
    d = doc["autoscaling"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (
        d["minReplicas"],
        d["maxReplicas"],
    )
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert float(trigger["metadata"]["threshold"]) == d["raw"]["hpa"]["requestsPerSecond"]
    assert 'model="fashion-mnist"' in trigger["metadata"]["query"]


def test_autoscaling_off_pins_the_replicas() -> None:
    objects = rendered("serving.autoscaling.enabled=false", "serving.replicas=3")
    isvc = one(objects, "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (3, 3)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "none"
    raw = rendered("serving.mode=raw", "serving.autoscaling.enabled=false", "serving.replicas=3")
    assert one(raw, "Deployment")["spec"]["replicas"] == 3
    assert not [o for o in raw if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
