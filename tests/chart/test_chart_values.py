"""The chart's pod-level values: ServiceAccounts, labels, extra env and volumes, security
contexts, drift probes, init-container resources and emptyDir sizes; and the KEDA query, which
comes from monitoring/.

Each value is rendered once with a non-default setting and found where it belongs; the
defaults are the chart's earlier hard-coded ones (tests/kustomize compares k8s/ with them).
The schema refuses a wrong type naming the value's path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from atelier.runtime.errors import ConfigError
from atelier.tools.chart import helm_template, rendered
from atelier.tools.paths import project_file
from support.pod_spec import container, env, mounts, volumes

pytestmark = pytest.mark.chart

RAW = "serving.mode=raw"
OBJECT_STORE = (
    "modelStore.type=objectStore",
    "modelStore.objectStore.uri=s3://models/atelier",
    "serving.modelVersion=3",
)


def of_kind(objects: tuple[Any, ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def predictor(objects: tuple[Any, ...]) -> dict[str, Any]:
    (isvc,) = of_kind(objects, "InferenceService")
    spec: dict[str, Any] = isvc["spec"]["predictor"]
    return spec


def runtime_container(objects: tuple[Any, ...]) -> dict[str, Any]:
    (runtime,) = of_kind(objects, "ServingRuntime")
    container: dict[str, Any] = runtime["spec"]["containers"][0]
    return container


def deployment(objects: tuple[Any, ...], component: str) -> dict[str, Any]:
    (dep,) = [
        o for o in of_kind(objects, "Deployment") if o["metadata"]["name"].endswith(component)
    ]
    return dep


def raw_pod(objects: tuple[Any, ...]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(objects, "-serving")["spec"]["template"]["spec"]
    return spec


def job_pod(objects: tuple[Any, ...]) -> dict[str, Any]:
    (job,) = of_kind(objects, "Job")
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def js(key: str, value: Any) -> str:
    """A typed --set-json argument."""
    return f"{key}:={json.dumps(value)}"


Pod = tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]


def serving_pods(*args: str) -> Iterator[Pod]:
    """(mode, pod spec, TorchServe's env container, TorchServe's mounts container) in KServe
    mode (the ServingRuntime's container holds the env, the predictor's model the mounts) and
    in raw mode (one container)."""
    objects = rendered(*args)
    spec = predictor(objects)
    yield "kserve", spec, runtime_container(objects), spec["model"]
    objects = rendered(RAW, *args)
    spec = raw_pod(objects)
    yield "raw", spec, container(spec, "torchserve"), container(spec, "torchserve")


# --------------------------------------------------------------------------- ServiceAccounts


def accounts(objects: tuple[Any, ...]) -> set[str]:
    return {o["metadata"]["name"] for o in of_kind(objects, "ServiceAccount")}


def test_service_accounts_are_created_by_default() -> None:
    objects = rendered()
    assert {"atelier-training", "atelier-serving"} <= accounts(objects)
    assert predictor(objects)["serviceAccountName"] == "atelier-serving"
    assert job_pod(objects)["serviceAccountName"] == "atelier-training"


def test_service_accounts_not_created_use_default_or_a_name() -> None:
    objects = rendered(
        "serving.serviceAccount.create=false", "training.serviceAccount.create=false"
    )
    assert not {"atelier-training", "atelier-serving"} & accounts(objects)
    assert predictor(objects)["serviceAccountName"] == "default"
    assert job_pod(objects)["serviceAccountName"] == "default"
    objects = rendered(
        RAW,
        "serving.serviceAccount.create=false",
        "serving.serviceAccount.name=ml-serving",
        "training.serviceAccount.create=false",
        "training.serviceAccount.name=ml-training",
    )
    assert raw_pod(objects)["serviceAccountName"] == "ml-serving"
    assert job_pod(objects)["serviceAccountName"] == "ml-training"
    assert not {"ml-serving", "ml-training"} & accounts(objects)


def test_service_accounts_created_with_a_name() -> None:
    objects = rendered("serving.serviceAccount.name=ml-serving")
    assert "ml-serving" in accounts(objects)
    assert "atelier-serving" not in accounts(objects)
    assert predictor(objects)["serviceAccountName"] == "ml-serving"


# --------------------------------------------------------------------------- labels, env, volumes


def test_pod_labels_reach_the_pods_not_the_selectors() -> None:
    args = (js("serving.podLabels", {"team": "ml"}), js("training.podLabels", {"cost": "train"}))
    objects = rendered(*args)
    assert predictor(objects)["labels"]["team"] == "ml"
    (job,) = of_kind(objects, "Job")
    assert job["spec"]["template"]["metadata"]["labels"]["cost"] == "train"
    dep = deployment(rendered(RAW, *args), "-serving")
    assert dep["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert "team" not in dep["spec"]["selector"]["matchLabels"]
    assert "team" not in dep["metadata"]["labels"]


def test_extra_env() -> None:
    extra = [{"name": "EXTRA_A", "value": "1"}]
    secret = [{"name": "EXTRA_B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    args = (
        js("serving.extraEnv", extra),
        js("drift.extraEnv", secret),
        js("training.extraEnv", extra),
    )
    for mode, spec, torchserve, _ in serving_pods(*args):
        assert env(torchserve)["EXTRA_A"] == "1", mode
        assert "TS_INFERENCE_ADDRESS" in env(torchserve), mode
        drift = env(container(spec, "drift"))
        assert drift["EXTRA_B"] == secret[0]["valueFrom"], mode
        assert "EXTRA_A" not in drift, mode
    job = job_pod(rendered(*args))
    for name in ("train", "archive"):
        assert env(container(job, name))["EXTRA_A"] == "1", name


def test_extra_volumes_and_mounts() -> None:
    vol = [{"name": "certs", "secret": {"secretName": "ca"}}]
    mount = [{"name": "certs", "mountPath": "/etc/ssl/extra", "readOnly": True}]
    args = (
        js("serving.extraVolumes", vol),
        js("serving.extraVolumeMounts", mount),
        js("drift.extraVolumeMounts", mount),
        js("training.extraVolumes", vol),
        js("training.extraVolumeMounts", mount),
    )
    for mode, spec, _, torchserve in serving_pods(*args):
        assert volumes(spec)["certs"] == vol[0], mode
        assert {"tmp", "spool", "drift-data", "drift-tmp", "store"} <= set(volumes(spec)), mode
        for c in [torchserve, container(spec, "drift")]:
            assert mounts(c)["/etc/ssl/extra"] == "certs", (mode, c.get("name"))
    job = job_pod(rendered(*args))
    assert volumes(job)["certs"] == vol[0]
    for name in ("train", "archive"):
        assert mounts(container(job, name))["/etc/ssl/extra"] == "certs", name
    # Not set: nothing extra anywhere.
    for mode, spec, _, _ in serving_pods():
        assert "certs" not in volumes(spec), mode


# --------------------------------------------------------------------------- hard-coded before


def test_security_contexts_default_and_override() -> None:
    for mode, spec, runtime, model in serving_pods():
        assert spec["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, mode  # fmt: skip
        for c in [runtime, model, container(spec, "drift")]:
            assert c["securityContext"] == {
                "runAsNonRoot": True, "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True, "privileged": False,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
            }, mode  # fmt: skip
    args = (
        "serving.podSecurityContext.runAsUser=20000",
        "serving.securityContext.runAsUser=20000",
        "drift.securityContext.runAsUser=20001",
        "training.podSecurityContext.fsGroup=30000",
        "training.securityContext.runAsUser=30001",
        "tests.podSecurityContext.runAsUser=40000",
        "monitoring.mode=bundled",
        "monitoring.bundled.grafana.podSecurityContext.runAsUser=472",
        "monitoring.bundled.prometheus.securityContext.runAsUser=65534",
    )
    objects = rendered(RAW, *args)
    spec = raw_pod(objects)
    assert spec["securityContext"]["runAsUser"] == 20000
    assert spec["securityContext"]["fsGroup"] == 10001
    assert container(spec, "torchserve")["securityContext"]["runAsUser"] == 20000
    assert container(spec, "drift")["securityContext"]["runAsUser"] == 20001
    job = job_pod(objects)
    assert job["securityContext"]["fsGroup"] == 30000
    assert container(job, "train")["securityContext"]["runAsUser"] == 30001
    (test_pod,) = of_kind(objects, "Pod")
    assert test_pod["spec"]["securityContext"]["runAsUser"] == 40000
    grafana = deployment(objects, "-grafana")["spec"]["template"]["spec"]
    assert grafana["securityContext"]["runAsUser"] == 472
    prometheus = deployment(objects, "-prometheus")["spec"]["template"]["spec"]
    assert container(prometheus, "prometheus")["securityContext"]["runAsUser"] == 65534


def test_drift_probes() -> None:
    spec = predictor(rendered())
    drift = container(spec, "drift")
    assert drift["readinessProbe"] == {
        "httpGet": {"path": "/healthz", "port": 8095}, "periodSeconds": 10, "timeoutSeconds": 3,
    }  # fmt: skip
    assert drift["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": 8095}, "initialDelaySeconds": 10,
        "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 6,
    }  # fmt: skip
    spec = predictor(
        rendered(
            "drift.probes.liveness.failureThreshold=12", "drift.probes.readiness.periodSeconds=5"
        )
    )
    drift = container(spec, "drift")
    assert drift["livenessProbe"]["failureThreshold"] == 12
    assert drift["readinessProbe"]["periodSeconds"] == 5


def test_init_container_resources_and_empty_dir_sizes() -> None:
    default = {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    objects = rendered(RAW, *OBJECT_STORE)
    spec = raw_pod(objects)
    for name in ("fetch-model", "fetch-reference"):
        assert container(spec, name)["resources"] == default, name
    job = job_pod(objects)
    for name in ("fetch-store", "publish-version", "publish-current"):
        assert container(job, name)["resources"] == default, name
    assert container(job, "archive")["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"},
    }  # fmt: skip
    sizes = {n: v["emptyDir"]["sizeLimit"] for n, v in volumes(spec).items() if "emptyDir" in v}
    assert sizes == {
        "model": "1Gi", "tmp": "1Gi", "spool": "512Mi", "drift-data": "1Gi",
        "drift-tmp": "256Mi", "store": "1Gi",
    }  # fmt: skip
    assert volumes(job)["tmp"]["emptyDir"]["sizeLimit"] == "1Gi"
    assert volumes(job)["store"]["emptyDir"]["sizeLimit"] == "2Gi"

    objects = rendered(
        RAW,
        *OBJECT_STORE,
        "modelStore.objectStore.resources.limits.memory=512Mi",
        "training.archive.resources.limits.memory=2Gi",
        "serving.modelSizeLimit=3Gi",
        "drift.tmpSizeLimit=128Mi",
        "drift.storeSizeLimit=2Gi",
        "training.tmpSizeLimit=4Gi",
        "training.storeSizeLimit=8Gi",
        "tests.tmpSizeLimit=32Mi",
    )
    spec, job = raw_pod(objects), job_pod(objects)
    assert container(spec, "fetch-model")["resources"]["limits"]["memory"] == "512Mi"
    assert container(job, "publish-current")["resources"]["limits"]["memory"] == "512Mi"
    assert container(job, "archive")["resources"]["limits"]["memory"] == "2Gi"
    sizes = {n: v["emptyDir"]["sizeLimit"] for n, v in volumes(spec).items() if "emptyDir" in v}
    assert (sizes["model"], sizes["drift-tmp"], sizes["store"]) == ("3Gi", "128Mi", "2Gi")
    assert volumes(job)["tmp"]["emptyDir"]["sizeLimit"] == "4Gi"
    assert volumes(job)["store"]["emptyDir"]["sizeLimit"] == "8Gi"
    (test_pod,) = of_kind(objects, "Pod")
    assert test_pod["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] == "32Mi"


def test_bundled_monitoring_sizes() -> None:
    def sizes(objects: tuple[Any, ...], component: str) -> dict[str, str]:
        spec = deployment(objects, component)["spec"]["template"]["spec"]
        return {n: v["emptyDir"]["sizeLimit"] for n, v in volumes(spec).items() if "emptyDir" in v}

    objects = rendered("monitoring.mode=bundled")
    assert sizes(objects, "-alertmanager") == {"data": "256Mi"}
    assert sizes(objects, "-grafana") == {"data": "512Mi", "tmp": "64Mi"}
    objects = rendered(
        "monitoring.mode=bundled",
        "monitoring.bundled.alertmanager.storageSizeLimit=1Gi",
        "monitoring.bundled.grafana.storageSizeLimit=2Gi",
        "monitoring.bundled.grafana.tmpSizeLimit=128Mi",
    )
    assert sizes(objects, "-alertmanager") == {"data": "1Gi"}
    assert sizes(objects, "-grafana") == {"data": "2Gi", "tmp": "128Mi"}


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["serving.serviceAccount.create=maybe"], "/serving/serviceAccount/create"),
        (["training.serviceAccount.name=Not_A_Name"], "/training/serviceAccount/name"),
        ([js("serving.podLabels", {"team": 1})], "/serving/podLabels/team"),
        ([js("serving.extraEnv", {"A": "1"})], "/serving/extraEnv"),
        ([js("drift.extraEnv", [{"value": "1"}])], "/drift/extraEnv/0"),
        ([js("training.extraVolumes", "certs")], "/training/extraVolumes"),
        ([js("serving.extraVolumeMounts", [{"name": "certs"}])], "/serving/extraVolumeMounts/0"),
        (["serving.podSecurityContext.runAsUser=root"], "/serving/podSecurityContext/runAsUser"),
        (["drift.securityContext.privileged=yes"], "/drift/securityContext/privileged"),
        (["tests.securityContext.bogus=1"], "additional properties 'bogus'"),
        (["drift.probes.liveness.periodSeconds=0"], "/drift/probes/liveness/periodSeconds"),
        (["drift.tmpSizeLimit=big"], "/drift/tmpSizeLimit"),
        (["modelStore.objectStore.resources.limits.cpu=lots"], "/modelStore/objectStore/resources"),
    ],
)
def test_schema_refuses_wrong_types_naming_the_path(args: list[str], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        helm_template(set_values=args)
    message = str(info.value)
    assert "values don't meet the specifications of the schema" in message, message
    assert path in message, message


# --------------------------------------------------------------------------- KEDA query


def test_keda_queries_come_from_monitoring() -> None:
    """Both KEDA triggers run monitoring/prometheus/queries/autoscaling.yml's inference_rate."""
    doc = yaml.safe_load(project_file("monitoring/prometheus/queries/autoscaling.yml").read_text())
    want = (
        doc["queries"]["inference_rate"]
        .replace("$namespace", "ml")
        .replace("$model", "fashion-mnist")
    )
    assert "$" not in want
    objects = helm_template(
        set_values=["serving.mode=raw", "serving.autoscaling.raw.mode=keda"], namespace="ml"
    )
    (scaled,) = of_kind(tuple(objects), "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["query"] == want
    objects = helm_template(
        set_values=["serving.autoscaling.kserve.rawDeployment=keda"], namespace="ml"
    )
    (metric,) = predictor(tuple(objects))["autoScaling"]["metrics"]
    assert metric["external"]["metric"]["query"] == want
