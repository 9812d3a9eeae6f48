"""serving.runtime: kserve, atelier's KServe runtime as the chart's model server, in both modes.

- KServe mode: a ServingRuntime of its own (atelier-kserve, model format atelier-kserve,
  protocols v1 and v2) runs `python -m atelier.serving.kserve_runtime` from the atelier-kserve
  image, and the InferenceService selects it; raw mode's Deployment runs the same container.
- Probes wait for the model's ready state (GET /v2/models/<name>/ready), liveness is
  /v2/health/live; the drift sidecar and the spool are TorchServe's; non-root, read-only root,
  resources (serving.kserveRuntime.resources or serving.resources), workers from values.
- Monitoring follows: the monitors, the bundled Prometheus, the NetworkPolicy and the
  autoscalers scrape and query the inference port's /metrics as the job atelier-kserve, a job
  the rules in monitoring/ select.
- Every object renders and validates strictly in both modes (and in ci/raw-kserve-runtime).

Bad values (serving.runtime: triton, unknown keys under serving.kserveRuntime) are refused in
test_chart_schema.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from atelier.tools.chart import chart_dir, helm_template, rendered
from atelier.tools.paths import project_file
from support.k8s_validate import check_names, describe, duplicate_problems, validate_object
from support.pod_spec import container, env, mounts, volumes

pytestmark = pytest.mark.chart

APP_VERSION = yaml.safe_load((chart_dir() / "Chart.yaml").read_text())["appVersion"]
VALUES = yaml.safe_load((chart_dir() / "values.yaml").read_text())
KSERVE = ("serving.runtime=kserve",)
RAW = ("serving.mode=raw", "serving.runtime=kserve")
MODEL = "fashion-mnist"
COMMAND = [
    "tini", "-g", "--", "python", "-m", "atelier.serving.kserve_runtime",
    "--store", "/mnt/models", "--model-name", MODEL, "--host", "0.0.0.0", "--port", "8080",
    "--workers", "1",
]  # fmt: skip
CONTAINER_KEYS = ("image", "imagePullPolicy", "command", "env", "ports", "startupProbe",
                  "readinessProbe", "livenessProbe", "resources", "securityContext")  # fmt: skip


def of_kind(objects: tuple[Any, ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: tuple[Any, ...], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [o for o in of_kind(objects, kind) if name in (None, o["metadata"]["name"])]
    return found


def runtime_container(objects: tuple[Any, ...]) -> dict[str, Any]:
    (c,) = one(objects, "ServingRuntime")["spec"]["containers"]
    return dict(c)


def raw_pod(objects: tuple[Any, ...]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment", "atelier-serving")["spec"]["template"]["spec"]
    return spec


# --------------------------------------------------------------------------- strict validation


@pytest.mark.parametrize(
    "args",
    [
        KSERVE,
        RAW,
        (*KSERVE, "serving.kserve.deploymentMode=Knative"),
        (*KSERVE, "serving.autoscaling.kserve.rawDeployment=keda", "monitoring.mode=bundled"),
        (*RAW, "modelStore.type=objectStore", "modelStore.objectStore.uri=s3://models/atelier",
         "serving.modelVersion=3", "ingress.enabled=true"),
    ],
    ids=["kserve", "raw", "kserve-knative", "kserve-keda-bundled", "raw-object-store"],
)  # fmt: skip
def test_both_modes_render_and_validate_strictly(args: tuple[str, ...]) -> None:
    objects = rendered(*args)
    errors = [
        line
        for o in objects
        for line in describe(" ".join(args), o, validate_object(o) + check_names(o))
    ]
    errors += duplicate_problems(list(objects))
    assert not errors, "\n".join(errors)
    kinds = {o["kind"] for o in objects}
    assert ("InferenceService" in kinds) == ("serving.mode=raw" not in args)


# --------------------------------------------------------------------------- the container


def test_kserve_mode_has_a_serving_runtime_of_its_own() -> None:
    objects = rendered(*KSERVE)
    runtime = one(objects, "ServingRuntime")
    assert runtime["metadata"]["name"] == "atelier-kserve"
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v1", "v2"]
    assert spec["supportedModelFormats"] == [
        {"name": "atelier-kserve", "version": "1", "autoSelect": True}
    ]
    assert runtime["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8080"
    isvc = one(objects, "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "atelier-kserve"
    assert model["modelFormat"] == {"name": "atelier-kserve"}
    assert model["storageUri"] == "pvc://atelier-model-store"  # mounted at /mnt/models
    assert isvc["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8080"
    # TorchServe's runtime is not rendered beside it, and keeps its own name and format.
    assert not [o for o in objects if o["metadata"]["name"] == "atelier-torchserve"]
    torchserve = one(rendered(), "ServingRuntime")
    assert torchserve["metadata"]["name"] == "atelier-torchserve"
    assert torchserve["spec"]["supportedModelFormats"][0]["name"] == "atelier-torchserve"
    # An explicit format wins for either runtime.
    objects = rendered(*KSERVE, "serving.kserve.modelFormat=mar")
    assert one(objects, "ServingRuntime")["spec"]["supportedModelFormats"][0]["name"] == "mar"
    assert one(objects, "InferenceService")["spec"]["predictor"]["model"]["modelFormat"] == {
        "name": "mar"
    }


def test_the_container_runs_the_kserve_runtime() -> None:
    c = runtime_container(rendered(*KSERVE))
    assert c["name"] == "kserve-container"
    assert c["image"] == f"atelier-kserve:{APP_VERSION}"
    assert c["command"] == COMMAND
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    e = env(c)
    assert e["TMPDIR"] == "/tmp" and e["HOME"] == "/tmp"  # the .mar is unzipped there
    assert e["OMP_NUM_THREADS"] == "1"
    assert not [k for k in e if k.startswith(("TS_", "JAVA_"))], e
    probes = VALUES["serving"]["probes"]
    ready = {"path": f"/v2/models/{MODEL}/ready", "port": 8080}
    for probe, timing in (("startupProbe", "startup"), ("readinessProbe", "readiness")):
        assert c[probe]["httpGet"] == ready, probe
        assert {k: v for k, v in c[probe].items() if k != "httpGet"} == probes[timing]
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert {k: v for k, v in c["livenessProbe"].items() if k != "httpGet"} == probes["liveness"]
    assert c["resources"] == VALUES["serving"]["resources"]  # kserveRuntime.resources is {}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}


def test_the_spool_and_the_drift_sidecar_are_torchserves() -> None:
    """The same ATELIER_SPOOL_* settings and mounts as TorchServe, the same sidecar."""
    kserve, torchserve = rendered(*KSERVE), rendered()
    spool = {k: v for k, v in env(runtime_container(kserve)).items() if k.startswith("ATELIER_")}
    assert spool == {
        k: v for k, v in env(runtime_container(torchserve)).items() if k.startswith("ATELIER_")
    }
    assert spool["ATELIER_SPOOL_DIR"] == "/var/run/atelier/spool"
    predictor = one(kserve, "InferenceService")["spec"]["predictor"]
    assert predictor == {
        **one(torchserve, "InferenceService")["spec"]["predictor"],
        "model": predictor["model"],
    }
    (drift,) = predictor["containers"]
    assert env(drift)["ATELIER_DRIFT_SPOOL_DIR"] == spool["ATELIER_SPOOL_DIR"]
    assert mounts(predictor["model"])[spool["ATELIER_SPOOL_DIR"]] == "spool"
    assert mounts(drift)[spool["ATELIER_SPOOL_DIR"]] == "spool"
    no_drift = runtime_container(rendered(*KSERVE, "drift.enabled=false"))
    assert not [k for k in env(no_drift) if k.startswith("ATELIER_SPOOL")]


def test_raw_mode_runs_the_same_container() -> None:
    objects = rendered(*RAW)
    pod = raw_pod(objects)
    kserve = runtime_container(rendered(*KSERVE))
    c = container(pod, "kserve")
    assert [x["name"] for x in pod["containers"]] == ["kserve", "drift"]
    for key in CONTAINER_KEYS:
        assert c[key] == kserve[key], key
    assert mounts(c)["/mnt/models"] == "store"
    assert volumes(pod)["store"]["persistentVolumeClaim"]["claimName"] == "atelier-model-store"
    assert (
        mounts(c)["/var/run/atelier/spool"]
        == mounts(container(pod, "drift"))["/var/run/atelier/spool"]
    )
    service = one(objects, "Service", "atelier-serving")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]  # no metrics port: /metrics is on the inference port


def test_values_set_workers_image_and_resources() -> None:
    digest = "sha256:" + "c" * 64
    resources = {"requests": {"cpu": "3", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "3Gi"}}
    objects = rendered(
        *RAW,
        "serving.kserveRuntime.workers=3",
        "serving.kserveRuntime.image.repository=registry.example/atelier-kserve",
        "serving.kserveRuntime.image.tag=1.2.3",
        f"serving.kserveRuntime.image.digest={digest}",
        "serving.kserveRuntime.image.pullPolicy=Always",
        "serving.kserveRuntime.resources:=" + json.dumps(resources),
    )
    c = container(raw_pod(objects), "kserve")
    assert c["command"][-2:] == ["--workers", "3"]
    assert c["image"] == f"registry.example/atelier-kserve:1.2.3@{digest}"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == resources
    # The helm test pod runs Python from the runtime's image.
    test_pod = one(objects, "Pod", "atelier-test-classify")
    assert container(test_pod["spec"], "classify")["image"] == c["image"]
    # serving.image is TorchServe's: it does not reach the KServe runtime, nor the reverse.
    other = rendered(*RAW, "serving.image.tag=9.9.9")
    assert container(raw_pod(other), "kserve")["image"] == f"atelier-kserve:{APP_VERSION}"
    torchserve = rendered("serving.kserveRuntime.image.tag=2.0.0")
    assert runtime_container(torchserve)["image"] == f"atelier-serving:{APP_VERSION}"
    assert "atelier-kserve:2.0.0" not in json.dumps(torchserve)


# --------------------------------------------------------------------------- monitoring


def contract_jobs() -> set[str]:
    """Jobs the serving alerts select (ModelServerDown's up{job=~...})."""
    alerts = yaml.safe_load(project_file("monitoring/prometheus/rules/alerts.yml").read_text())
    rules = [r for g in alerts["groups"] for r in g["rules"]]
    (rule,) = [r for r in rules if r.get("alert") == "ModelServerDown"]
    m = re.search(r'up\{job=~"([^"]+)"\}', rule["expr"])
    assert m, rule["expr"]
    return set(m.group(1).split("|"))


def monitor_job(monitor: dict[str, Any]) -> tuple[str, str]:
    """(job, port) of a monitor's one endpoint."""
    spec = monitor["spec"]
    (endpoint,) = spec.get("podMetricsEndpoints") or spec["endpoints"]
    labels = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
    assert labels["model"] == MODEL
    assert endpoint["path"] == "/metrics"
    return labels["job"], endpoint["port"]


def test_monitors_scrape_the_inference_port_as_atelier_kserve() -> None:
    assert "atelier-kserve" in contract_jobs()  # the rules and alerts select it
    # KServe mode: a PodMonitor on the container's inference port.
    objects = rendered(*KSERVE)
    pod_monitor = one(objects, "PodMonitor")
    assert pod_monitor["metadata"]["name"] == "atelier-kserve"
    job, port = monitor_job(pod_monitor)
    assert (job, port) == ("atelier-kserve", "http")
    ports = {p["name"]: p["containerPort"] for p in runtime_container(objects)["ports"]}
    assert ports[port] == 8080
    # Raw mode: a ServiceMonitor on the Service port that targets it.
    objects = rendered(*RAW)
    service_monitor = one(objects, "ServiceMonitor", "atelier-kserve")
    job, port = monitor_job(service_monitor)
    assert (job, port) == ("atelier-kserve", "http")
    (svc_port,) = [p for p in one(objects, "Service", "atelier-serving")["spec"]["ports"]
                   if p["name"] == port]  # fmt: skip
    kserve = container(raw_pod(objects), "kserve")
    container_ports = {p["name"]: p["containerPort"] for p in kserve["ports"]}
    assert container_ports[svc_port["targetPort"]] == 8080
    # Knative: KServe's aggregation scrapes the inference port for the queue-proxy's port.
    objects = rendered(*KSERVE, "serving.kserve.deploymentMode=Knative")
    assert monitor_job(one(objects, "PodMonitor")) == ("atelier-kserve", "aggr-metric")
    annotations = one(objects, "InferenceService")["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == "8080"
    assert [p["name"] for p in runtime_container(objects)["ports"]] == ["http1"]


def test_bundled_prometheus_scrapes_the_kserve_job() -> None:
    objects = rendered(values_file="raw-kserve-runtime")
    (cm,) = [o for o in of_kind(objects, "ConfigMap")
             if o["metadata"]["name"] == "atelier-prometheus"]  # fmt: skip
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert "atelier-torchserve" not in jobs
    keep = jobs["atelier-kserve"]["relabel_configs"][0]
    assert keep["action"] == "keep"
    # name;instance;component;container port name: the kserve container's inference port.
    assert keep["regex"] == "atelier;atelier;serving;http"
    assert [p["name"] for p in container(raw_pod(objects), "kserve")["ports"]] == ["http"]


def test_network_policy_lets_prometheus_reach_the_inference_port() -> None:
    for args in (KSERVE, RAW):
        policy = one(rendered(*args), "NetworkPolicy", "atelier-serving")
        by_port: dict[int, list[str]] = {}
        for rule in policy["spec"]["ingress"]:
            (port,) = rule["ports"]
            apps = [
                f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name", "")
                for f in rule["from"]
            ]
            by_port.setdefault(port["port"], []).extend(apps)
        assert set(by_port) == {8080, 8095}, args  # no TorchServe metrics port (8082)
        assert "prometheus" in by_port[8080], args


def test_autoscaling_follows_the_runtime() -> None:
    hpa = one(rendered(*RAW), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "atelier_requests_per_second"
    hpa = one(rendered(*RAW, "serving.autoscaling.raw.hpa.metricName=my_rps"),
              "HorizontalPodAutoscaler")  # fmt: skip
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "my_rps"
    hpa = one(rendered("serving.mode=raw"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == (
        "ts_inference_requests_per_second"
    )
    doc = yaml.safe_load(project_file("monitoring/prometheus/queries/autoscaling.yml").read_text())
    want = doc["queries"]["inference_rate_kserve"].replace("$namespace", "ml")
    want = want.replace("$model", MODEL)
    assert 'job="atelier-kserve"' in want and "$" not in want
    objects = helm_template(set_values=[*RAW, "serving.autoscaling.raw.mode=keda"], namespace="ml")
    (scaled,) = of_kind(tuple(objects), "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["query"] == want
    objects = helm_template(
        set_values=[*KSERVE, "serving.autoscaling.kserve.rawDeployment=keda"], namespace="ml"
    )
    (metric,) = one(tuple(objects), "InferenceService")["spec"]["predictor"]["autoScaling"][
        "metrics"
    ]
    assert metric["external"]["metric"]["query"] == want
