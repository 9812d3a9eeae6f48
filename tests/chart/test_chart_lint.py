"""`helm lint --strict` for every ci/*-values.yaml scenario and for the value combinations no
scenario holds (Knative, raw KEDA, object store, the sqlite and external drift stores); those
are also checked object by object."""

from __future__ import annotations

import re
import subprocess

import pytest

from atelier.tools.chart import chart_dir, helm_binary, rendered
from support.k8s_validate import K8S_VERSION, check_names, validate_object

pytestmark = pytest.mark.chart

SCENARIOS = sorted(p.name for p in (chart_dir() / "ci").glob("*-values.yaml"))
COMBINATIONS = [
    ("serving.kserve.deploymentMode=Knative",),
    ("serving.kserve.deploymentMode=RawDeployment", "serving.modelVersion=4",
     "serving.kserve.canaryTrafficPercent=20"),
    ("serving.mode=raw", "serving.autoscaling.raw.mode=hpa-cpu", "ingress.enabled=true"),
    ("serving.mode=raw", "serving.autoscaling.raw.mode=keda"),
    ("modelStore.type=objectStore", "modelStore.objectStore.uri=s3://models/atelier",
     "modelStore.objectStore.endpoint=http://minio.minio.svc:9000",
     "modelStore.objectStore.credentialsSecret=s3-credentials", "serving.modelVersion=3"),
    ("serving.mode=raw", "modelStore.type=objectStore", "serving.modelVersion=3",
     "modelStore.objectStore.uri=s3://models/atelier", "monitoring.mode=bundled"),
    ("training.cronJob.enabled=true", "training.imageFolder.enabled=true",
     "training.imageFolder.claimName=images", "training.imageFolder.subPath=fashion"),
    ("serving.mode=raw", "drift.store.type=sqlite", "serving.autoscaling.enabled=false",
     "serving.replicas=1"),
    ("drift.store.type=external", "drift.store.external.existingSecret=inference-db",
     "drift.store.external.passwordKey=password"),
]  # fmt: skip
# Kinds no offline checker knows; the tests that render them check their fields.
UNCHECKED_KINDS = {"ScaledObject"}


def lint(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(helm_binary()), "lint", "--strict", str(chart_dir()), "--namespace", "atelier"]
    return subprocess.run(
        [*cmd, "--kube-version", K8S_VERSION, *args], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("values", SCENARIOS)
def test_lint_strict_scenario(values: str) -> None:
    result = lint("-f", str(chart_dir() / "ci" / values))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("args", COMBINATIONS, ids=lambda a: " ".join(a))
def test_lint_strict_and_validate_combination(args: tuple[str, ...]) -> None:
    sets = [x for a in args for x in ("--set", a)]
    result = lint(*sets)
    assert result.returncode == 0, result.stdout + result.stderr
    problems = []
    for obj in rendered(*args):
        if obj["kind"] in UNCHECKED_KINDS:
            continue
        for p in validate_object(obj) + check_names(obj):
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {p}")
    assert not problems, "\n".join(problems)


def test_four_scenarios() -> None:
    assert {"default", "raw-bundled", "minimal", "everything"} <= {
        s.removesuffix("-values.yaml") for s in SCENARIOS
    }


# Free-form maps whose inner keys are documented by their parent's comment (Kubernetes objects
# such as resources and security contexts, the training config). Label selectors are skipped
# with their own key.
FREE_FORM = ("training.config", "resources", "podSecurityContext", "securityContext")
SELECTORS = ("matchLabels",)


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a `##` comment right above it (chart hygiene)."""
    lines = (chart_dir() / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w./-]*):(\s|$)", line)
        if not m:
            continue
        indent, key = len(m[1]), m[2]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = ".".join(k for _, k in stack)
        if any(f".{free}." in f".{path}" or path.endswith(f".{free}") for free in SELECTORS):
            continue
        if any(f".{free}." in f".{path}" and not path.endswith(free) for free in FREE_FORM):
            continue
        j = i - 1
        documented = False
        while j >= 0 and lines[j].strip().startswith("#"):
            documented = documented or lines[j].strip().startswith("##")
            j -= 1
        if not documented:
            undocumented.append(f"values.yaml:{i + 1}: {path}")
    assert not undocumented, "keys without a ## comment:\n" + "\n".join(undocumented)
