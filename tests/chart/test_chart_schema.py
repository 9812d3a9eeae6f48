"""values.schema.json and the chart's own checks refuse bad values with a message naming the key."""

from __future__ import annotations

import pytest

from atelier.runtime.errors import ConfigError
from atelier.tools.chart import helm_template

pytestmark = pytest.mark.chart

# (--set arguments, text the error must contain: the key's path)
SCHEMA_CASES = [
    (["serving.mode=bogus"], "/serving/mode"),
    (["monitoring.mode=prometheus"], "/monitoring/mode"),
    (["modelStore.type=nfs"], "/modelStore/type"),
    (["serving.autoscaling.minReplicas=-1"], "/serving/autoscaling/minReplicas"),
    (["serving.replicas=0"], "/serving/replicas"),
    (["serving.image.tag=latest"], "/serving/image/tag"),
    (["drift.image.tag=latest"], "/drift/image/tag"),
    (["training.image.digest=abc123"], "/training/image/digest"),
    (["serving.bogus=1"], "additional properties 'bogus'"),
    (["bogus=1"], "additional properties 'bogus'"),
    (["serving.autoscaling.raw.mode=hpa-memory"], "/serving/autoscaling/raw/mode"),
    (
        ["serving.autoscaling.raw.hpa.cpuUtilization=150"],
        "/serving/autoscaling/raw/hpa/cpuUtilization",
    ),
    (["serving.kserve.deploymentMode=Raw"], "/serving/kserve/deploymentMode"),
    (["serving.kserve.canaryTrafficPercent=101"], "/serving/kserve/canaryTrafficPercent"),
    (["serving.resources.requests.cpu=lots"], "/serving/resources/requests/cpu"),
    (["serving.ports.inference=70000"], "/serving/ports/inference"),
    (["training.backoffLimit=-1"], "/training/backoffLimit"),
    (["monitoring.scrapeInterval=often"], "/monitoring/scrapeInterval"),
    (
        ["monitoring.alertmanager.receivers.page.url=ftp://x"],
        "/monitoring/alertmanager/receivers/page/url",
    ),
    (["modelStore.objectStore.uri=gs://bucket"], "/modelStore/objectStore/uri"),
    (["serving.kserve.name=Upper_Case"], "/serving/kserve/name"),
    (["serving.runtime=triton"], "/serving/runtime"),
    (["serving.kserveRuntime.bogus=1"], "additional properties 'bogus'"),
    (["serving.kserveRuntime.workers=0"], "/serving/kserveRuntime/workers"),
    (["serving.kserveRuntime.image.tag=latest"], "/serving/kserveRuntime/image/tag"),
    (["serving.kserveRuntime.image.pulPolicy=Always"], "additional properties 'pulPolicy'"),
    (["serving.kserveRuntime.resources.limits.cpu=2"], "/serving/kserveRuntime/resources"),
    (["serving.autoscaling.raw.hpa.metricName=rps/s"], "/serving/autoscaling/raw/hpa/metricName"),
]

# Combinations the schema cannot express, refused by the templates (atelier.validate).
TEMPLATE_CASES = [
    (["modelStore.type=objectStore", "serving.modelVersion=3"], "modelStore.objectStore.uri"),
    (
        ["modelStore.type=objectStore", "modelStore.objectStore.uri=s3://models/atelier"],
        "serving.modelVersion",
    ),
    (["serving.kserve.canaryTrafficPercent=10"], "serving.kserve.canaryTrafficPercent"),
    (["modelStore.pvc.create=false"], "modelStore.pvc.existingClaim"),
    (["training.imageFolder.enabled=true"], "training.imageFolder.claimName"),
    (
        ["serving.autoscaling.minReplicas=4", "serving.autoscaling.maxReplicas=2"],
        "serving.autoscaling.maxReplicas",
    ),
    (["ingress.enabled=true", "ingress.tls.enabled=true"], "ingress.tls.secretName"),
    (
        ["monitoring.mode=bundled", "serving.kserve.deploymentMode=Knative"],
        "monitoring.mode",
    ),
]


@pytest.mark.parametrize(("args", "key"), SCHEMA_CASES + TEMPLATE_CASES)
def test_bad_values_are_refused_naming_the_key(args: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        helm_template(set_values=args)
    assert key in str(info.value), str(info.value)


def test_schema_errors_come_from_the_schema() -> None:
    with pytest.raises(ConfigError) as info:
        helm_template(set_values=["serving.mode=bogus"])
    assert "values don't meet the specifications of the schema" in str(info.value)
    assert "value must be one of 'kserve', 'raw'" in str(info.value)


def test_a_wrong_runtime_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        helm_template(set_values=["serving.runtime=triton"])
    assert "value must be one of 'torchserve', 'kserve'" in str(info.value)


@pytest.mark.parametrize(
    "args",
    [
        ["serving.modelVersion=3"],
        ["serving.modelVersion=2024-05-01.1"],
        ["serving.image.tag=1.2.3"],
        ["serving.image.digest=sha256:" + "a" * 64],
        ["serving.kserve.deploymentMode=RawDeployment"],
        ["serving.kserve.deploymentMode=Serverless"],
        ["monitoring.mode=none"],
        ["serving.runtime=kserve", "serving.kserveRuntime.workers=4"],
        ["serving.runtime=torchserve"],
    ],
)
def test_good_values_pass(args: list[str]) -> None:
    assert helm_template(set_values=args)
