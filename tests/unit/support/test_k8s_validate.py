"""The chart harness's validators can fail: each checker catches what it exists to catch.

Fast and offline; no helm. tests/chart/ runs the same validators over the rendered chart.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from support.k8s_validate import (
    K8S_VERSION,
    check_names,
    describe,
    duplicate_problems,
    format_path,
    validate_object,
)

pytestmark = pytest.mark.unit


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "drift", "labels": {"app.kubernetes.io/name": "drift"}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "drift"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "drift"}},
                "spec": {
                    "containers": [
                        {
                            "name": "drift",
                            "image": "atelier/drift:0.1.0",
                            "ports": [{"name": "metrics", "containerPort": 9102}],
                            "resources": {"limits": {"cpu": 1, "memory": "256Mi"}},
                        }
                    ]
                },
            },
        },
    }


def inference_service() -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "fashion",
            "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"},
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "model": {
                    "modelFormat": {"name": "pytorch"},
                    "protocolVersion": "v1",
                    "runtime": "atelier-torchserve",
                    "storageUri": "pvc://model-store/fashion",
                    "resources": {"requests": {"cpu": 1, "memory": "1Gi"}},
                },
            }
        },
    }


def serving_runtime() -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": "atelier-torchserve"},
        "spec": {
            "supportedModelFormats": [{"name": "pytorch", "version": "1", "autoSelect": True}],
            "protocolVersions": ["v1", "v2"],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "atelier/torchserve:0.1.0",
                    "args": ["torchserve", "--start"],
                    "ports": [{"name": "h2c", "containerPort": 8080}],
                }
            ],
        },
    }


def service_monitor() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "drift", "labels": {"release": "prometheus"}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "drift"}},
            "endpoints": [{"port": "metrics", "interval": "15s", "path": "/metrics"}],
        },
    }


def prometheus_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "atelier"},
        "spec": {
            "groups": [
                {
                    "name": "atelier",
                    "rules": [
                        {
                            "alert": "HighErrorRate",
                            "expr": "sum(rate(errors_total[5m])) > 1",
                            "for": "5m",
                            "labels": {"severity": "page"},
                            "annotations": {"summary": "errors"},
                        }
                    ],
                }
            ]
        },
    }


def alertmanager_config() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "AlertmanagerConfig",
        "metadata": {"name": "atelier"},
        "spec": {
            "route": {"receiver": "webhook", "groupBy": ["alertname"], "groupWait": "30s"},
            "receivers": [{"name": "webhook", "webhookConfigs": [{"url": "http://hook:9000/"}]}],
        },
    }


def messages(obj: dict[str, Any]) -> list[str]:
    return [str(p) for p in validate_object(obj)]


GOOD = [
    deployment,
    inference_service,
    serving_runtime,
    service_monitor,
    prometheus_rule,
    alertmanager_config,
]


@pytest.mark.parametrize("make", GOOD, ids=lambda f: f.__name__)
def test_valid_objects_pass(make: Any) -> None:
    obj = make()
    assert validate_object(obj) == []
    assert check_names(obj) == []


def test_pinned_version_is_131_or_newer() -> None:
    major, minor, *_ = (int(x) for x in K8S_VERSION.split("."))
    assert (major, minor) >= (1, 31)


# ----------------------------------------------------------------- core kinds


def test_core_unknown_field_fails() -> None:
    obj = deployment()
    obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    (problem,) = validate_object(obj)
    assert problem.where == "spec.template.spec.containers[0]"
    assert "imagePullPolicyy" in problem.message


def test_core_wrong_type_fails() -> None:
    obj = deployment()
    obj["spec"]["replicas"] = "two"
    assert [p.where for p in validate_object(obj)] == ["spec.replicas"]


def test_core_missing_required_fails() -> None:
    obj = deployment()
    del obj["spec"]["selector"]
    assert "'selector' is a required property" in messages(obj)[0]


def test_unknown_kind_fails() -> None:
    (msg,) = messages({"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "f"}})
    assert "Foo" in msg and "no schema" in msg


def test_core_kind_with_wrong_api_version_fails() -> None:
    obj = deployment()
    obj["apiVersion"] = "extensions/v1beta1"
    assert "no schema" in messages(obj)[0]


def test_missing_api_version_or_kind_fails() -> None:
    assert messages({"kind": "ConfigMap"}) == ["apiVersion: missing or not a string"]
    assert messages({"apiVersion": "v1"}) == ["kind: missing or not a string"]


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("monitoring.coreos.com/v1", "Prometheus"),
        ("monitoring.coreos.com/v1", "AlertmanagerConfig"),
        ("serving.kserve.io/v1alpha1", "InferenceGraph"),
    ],
)
def test_unchecked_crd_kind_fails(api_version: str, kind: str) -> None:
    (msg,) = messages({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}})
    assert "no strict checker" in msg


# ----------------------------------------------------------------- KServe


def test_kserve_unknown_field_fails() -> None:
    obj = inference_service()
    obj["spec"]["predictor"]["minReplica"] = 1
    assert messages(obj) == [
        "spec.predictor.minReplica: unknown field (not in V1beta1PredictorSpec)"
    ]


def test_kserve_unknown_top_level_field_fails() -> None:
    obj = inference_service()
    obj["specs"] = {}
    assert messages(obj) == ["specs: unknown field (not in V1beta1InferenceService)"]


def test_kserve_wrong_type_fails() -> None:
    obj = inference_service()
    obj["spec"]["predictor"]["minReplicas"] = "two"
    assert messages(obj) == ['spec.predictor.minReplicas: expected int, got string "two"']


def test_kserve_bool_is_not_an_int() -> None:
    obj = inference_service()
    obj["spec"]["predictor"]["maxReplicas"] = True
    assert messages(obj) == ["spec.predictor.maxReplicas: expected int, got boolean true"]


def test_kserve_missing_required_fields_fail() -> None:
    obj = inference_service()
    del obj["spec"]["predictor"]["model"]["modelFormat"]
    assert messages(obj) == [
        "spec.predictor.model.modelFormat: required field missing (in V1beta1ModelSpec)"
    ]
    del obj["spec"]["predictor"]
    assert messages(obj) == [
        "spec.predictor: required field missing (in V1beta1InferenceServiceSpec)"
    ]


def test_kserve_null_required_field_fails() -> None:
    obj = serving_runtime()
    obj["spec"]["containers"] = None
    assert messages(obj) == [
        "spec.containers: required field missing (in V1alpha1ServingRuntimeSpec)"
    ]


def test_kserve_nested_list_and_map_types_are_walked() -> None:
    obj = serving_runtime()
    obj["spec"]["supportedModelFormats"][0]["autoSelect"] = "yes"
    obj["spec"]["nodeSelector"] = {"disk": 1}
    obj["spec"]["protocolVersions"] = "v1"
    assert sorted(messages(obj)) == [
        "spec.nodeSelector.disk: expected str, got integer 1",
        "spec.protocolVersions: expected a list (list[str]), got string",
        'spec.supportedModelFormats[0].autoSelect: expected bool, got string "yes"',
    ]


def test_kserve_embedded_kubernetes_types_are_strict() -> None:
    obj = serving_runtime()
    container = obj["spec"]["containers"][0]
    container["imagePullPolicyy"] = "Always"
    container["ports"][0]["containerPort"] = "8080"
    del container["name"]
    found = messages(obj)
    assert any(
        m.startswith("spec.containers[0]: Additional properties") and "imagePullPolicyy" in m
        for m in found
    )
    assert "spec.containers[0].ports[0].containerPort: '8080' is not of type 'integer'" in found
    assert "spec.containers[0]: 'name' is a required property" in found


def test_kserve_metadata_is_checked() -> None:
    obj = inference_service()
    obj["metadata"]["label"] = {"a": "b"}
    assert any(m.startswith("metadata: Additional properties") for m in messages(obj))


def test_kserve_quantities_accept_numbers_and_strings() -> None:
    obj = inference_service()
    obj["spec"]["predictor"]["model"]["resources"] = {"limits": {"cpu": 2, "memory": "2Gi"}}
    assert messages(obj) == []


def test_kserve_wrong_api_version_fails() -> None:
    obj = inference_service()
    obj["apiVersion"] = "serving.kserve.io/v1alpha1"
    assert "no strict checker" in messages(obj)[0]


# ----------------------------------------------------------------- Prometheus Operator


def test_prometheus_unknown_key_under_endpoints_fails() -> None:
    obj = service_monitor()
    obj["spec"]["endpoints"][0]["scrapeInterval"] = "15s"
    assert messages(obj) == ["spec.endpoints[0].scrapeInterval: unknown field (not in Endpoint)"]


def test_prometheus_snake_case_key_is_unknown() -> None:
    """The models accept python names too (populate_by_name); a manifest must use JSON names."""
    obj = service_monitor()
    obj["spec"]["endpoints"][0]["scrape_timeout"] = "10s"
    assert messages(obj) == ["spec.endpoints[0].scrape_timeout: unknown field (not in Endpoint)"]


def test_prometheus_unknown_keys_at_every_level_fail() -> None:
    obj = prometheus_rule()
    obj["spec"]["groups"][0]["rules"][0]["severity"] = "page"
    obj["metadata"]["label"] = {}
    obj["extra"] = 1
    assert sorted(messages(obj)) == [
        "extra: unknown field (not in PrometheusRule)",
        "metadata.label: unknown field (not in ObjectMeta)",
        "spec.groups[0].rules[0].severity: unknown field (not in Rule)",
    ]


def test_prometheus_wrong_type_and_enum_fail() -> None:
    obj = service_monitor()
    obj["spec"]["endpoints"][0]["interval"] = 15
    obj["spec"]["endpoints"][0]["scheme"] = "ftp"
    found = messages(obj)
    assert any(
        m.startswith("spec.endpoints[0].interval: Input should be a valid string") for m in found
    )
    assert any(m.startswith("spec.endpoints[0].scheme: Input should be 'http'") for m in found)


def test_prometheus_strict_mode_does_not_coerce() -> None:
    obj = service_monitor()
    obj["spec"]["endpoints"][0]["honorLabels"] = "true"
    assert any("honorLabels" in m for m in messages(obj))


def test_prometheus_missing_required_fails() -> None:
    obj = alertmanager_config()
    del obj["spec"]["receivers"][0]["name"]
    assert messages(obj) == ["spec.receivers[0].name: Field required"]
    obj = service_monitor()
    del obj["spec"]["endpoints"]
    assert messages(obj) == ["spec.endpoints: Field required"]


# ----------------------------------------------------------------- names and labels


def test_name_of_64_characters_fails() -> None:
    obj = deployment()
    obj["metadata"]["name"] = "a" * 64
    (problem,) = check_names(obj)
    assert problem.where == "metadata.name"
    assert "64 characters (max 63)" in problem.message
    obj["metadata"]["name"] = "a" * 63
    assert check_names(obj) == []


def test_cronjob_name_over_52_fails() -> None:
    obj = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c" * 53}}
    assert ["CronJob name" in p.message for p in check_names(obj)] == [True]


def test_service_name_must_be_dns_1035() -> None:
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1drift"}}
    assert "DNS-1035" in check_names(obj)[0].message


def test_name_must_be_dns_1123() -> None:
    obj = deployment()
    obj["metadata"]["name"] = "Drift_Sidecar"
    assert "DNS-1123" in check_names(obj)[0].message


def test_rbac_names_may_hold_colons() -> None:
    obj = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "atelier:reader"},
    }
    assert check_names(obj) == []


def test_inference_service_derived_names_fit() -> None:
    obj = inference_service()
    obj["metadata"]["name"] = "f" * 54  # "-predictor" makes 64
    (problem,) = check_names(obj)
    assert "predictor" in problem.message and "64 characters" in problem.message


def test_label_values_are_checked_everywhere() -> None:
    obj = deployment()
    obj["metadata"]["labels"]["version"] = "v" * 64
    obj["spec"]["template"]["metadata"]["labels"]["bad"] = "has space"
    obj["spec"]["selector"]["matchLabels"]["flag"] = True
    found = {p.where: p.message for p in check_names(obj)}
    assert set(found) == {
        "metadata.labels.version",
        "spec.template.metadata.labels.bad",
        "spec.selector.matchLabels.flag",
    }
    assert "64 characters" in found["metadata.labels.version"]


def test_service_selector_values_are_label_values() -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "drift"},
        "spec": {"selector": {"app": "x" * 64}, "ports": [{"port": 80}]},
    }
    assert [p.where for p in check_names(obj)] == ["spec.selector.app"]


def test_alert_rule_labels_are_not_kubernetes_labels() -> None:
    obj = prometheus_rule()
    obj["spec"]["groups"][0]["rules"][0]["labels"]["runbook"] = "see " + "x" * 80
    assert check_names(obj) == []


def test_label_and_annotation_keys_are_qualified_names() -> None:
    obj = deployment()
    obj["metadata"]["labels"]["Bad Key"] = "v"
    obj["metadata"]["annotations"] = {"example.com/" + "k" * 64: "v", "UPPER.com/x": "v"}
    assert len(check_names(obj)) == 3


def test_container_and_port_names() -> None:
    obj = deployment()
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["name"] = "prometheus-metrics"  # 18 characters
    container["name"] = "Drift"
    found = [p.where for p in check_names(obj)]
    assert found == [
        "spec.template.spec.containers[0].name",
        "spec.template.spec.containers[0].ports[0].name",
    ]


def test_missing_name_fails() -> None:
    obj = deployment()
    del obj["metadata"]["name"]
    assert check_names(obj)[0].message == "an object needs a non-empty string name"


# ----------------------------------------------------------------- reporting


def test_messages_name_scenario_object_and_path() -> None:
    obj = inference_service()
    obj["spec"]["predictor"]["minReplicas"] = "two"
    assert describe("minimal", obj, validate_object(obj)) == [
        "minimal InferenceService/fashion: spec.predictor.minReplicas: "
        'expected int, got string "two"'
    ]


def test_format_path() -> None:
    assert format_path(()) == "."
    assert format_path(("spec", "containers", 0, "name")) == "spec.containers[0].name"


def test_duplicates_fail() -> None:
    one, two = deployment(), copy.deepcopy(deployment())
    assert duplicate_problems([one, two]) == ["Deployment/drift: rendered more than once"]
    two["metadata"]["name"] = "other"
    assert duplicate_problems([one, two]) == []


# ----------------------------------------------------------------- KEDA


def scaled_object() -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "atelier-serving"},
        "spec": {
            "scaleTargetRef": {"name": "atelier-serving"},
            "minReplicaCount": 2,
            "maxReplicaCount": 6,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": "http://prometheus:9090",
                        "query": "sum(rate(ts_inference_requests_total[1m]))",
                        "threshold": "1236",
                    },
                }
            ],
        },
    }


def test_keda_scaled_object_passes_and_unknown_keys_fail() -> None:
    assert messages(scaled_object()) == []
    obj = scaled_object()
    obj["spec"]["triggers"][0]["threshold"] = "1236"
    assert messages(obj) == ["spec.triggers[0].threshold: unknown field (not in TriggerModel)"]
    obj = scaled_object()
    obj["spec"]["minReplicaCount"] = "two"
    assert messages(obj)
