"""Render the chart with the real Helm binary, once per scenario and release, and run checkov.

Scenarios are the files charts/atelier/ci/<scenario>-values.yaml, found at collection time. No
chart or no scenario file is a failing test, never a skip.

`helm template` runs with no cluster, so `.Capabilities.APIVersions.Has` is false for every
CRD group. The harness passes the CRD API versions the chart may gate on (API_VERSIONS) with
`--api-versions`, so that the KServe and Prometheus Operator templates render and reach their
strict checkers, and `--kube-version` the pinned version the objects are validated for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.k8s_validate import K8S_VERSION

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "atelier"
CI_DIR = CHART / "ci"
HELM = ROOT / ".tools" / "bin" / "helm"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
CHECKOV_SKIPS = Path(__file__).with_name("checkov_skips.yaml")

NAMESPACE = "atelier"
RELEASE = "atelier"
LONG_RELEASE = "release-name-as-long-as-helm-allows-fifty-three-chars"
"""53 characters, Helm's longest release name, and without "atelier" in it, so the chart's
full name is "<release>-atelier" before truncation: the worst case for every derived name."""

NO_SCENARIOS = "no-scenarios"

API_VERSIONS = (
    "serving.kserve.io/v1beta1",
    "serving.kserve.io/v1beta1/InferenceService",
    "serving.kserve.io/v1alpha1",
    "serving.kserve.io/v1alpha1/ServingRuntime",
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "monitoring.coreos.com/v1alpha1",
    "monitoring.coreos.com/v1alpha1/AlertmanagerConfig",
    "keda.sh/v1alpha1",
    "keda.sh/v1alpha1/ScaledObject",
)
"""CRD API versions (group/version and group/version/Kind) reported as served to the chart."""


def scenarios() -> list[str]:
    return sorted(p.name.removesuffix("-values.yaml") for p in CI_DIR.glob("*-values.yaml"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `scenario` by the ci/*-values.yaml files; none at all is one failing case."""
    if "scenario" in metafunc.fixturenames:
        metafunc.parametrize("scenario", scenarios() or [NO_SCENARIOS])


def values_file(scenario: str) -> Path:
    if not CHART.joinpath("Chart.yaml").is_file():
        pytest.fail(f"no Helm chart at {CHART.relative_to(ROOT)} (Chart.yaml missing)")
    if scenario == NO_SCENARIOS:
        pytest.fail(f"no scenario files {CI_DIR.relative_to(ROOT)}/*-values.yaml")
    if not HELM.is_file():
        pytest.fail(f"{HELM.relative_to(ROOT)} missing: run `make setup` (scripts/setup.sh)")
    return CI_DIR / f"{scenario}-values.yaml"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """The static helm binary; no kubeconfig is read (template and lint need no cluster)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


@dataclass(frozen=True)
class Rendered:
    """One object of a render, with the template that produced it."""

    source: str
    obj: Any


@dataclass
class Render:
    scenario: str
    release: str
    objects: list[Rendered] = field(default_factory=list)
    error: str = ""

    def __repr__(self) -> str:  # short, for pytest's failure reports
        return f"<Render {self.scenario} release={self.release} objects={len(self.objects)}>"


_SOURCE = re.compile(r"^# Source: (?P<source>.+)$", re.MULTILINE)
_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


def split_documents(text: str) -> list[Rendered]:
    """Multi-document YAML -> objects, empty documents skipped, each with its `# Source:`."""
    out = []
    for chunk in _SEPARATOR.split(text):
        source = _SOURCE.search(chunk)
        for obj in yaml.safe_load_all(chunk):  # one document, unless a separator has a comment
            if obj is not None:
                out.append(Rendered(source["source"] if source else "<unknown>", obj))
    return out


@cache
def render(scenario: str, release: str = RELEASE) -> Render:
    """`helm template` of one scenario, cached for the session."""
    values = values_file(scenario)
    args = ["template", release, str(CHART), "--namespace", NAMESPACE, "-f", str(values)]
    args += ["--kube-version", K8S_VERSION]
    for api_version in API_VERSIONS:
        args += ["--api-versions", api_version]
    result = helm(*args)
    if result.returncode != 0:
        return Render(scenario, release, error=result.stderr.strip() or result.stdout.strip())
    try:
        objects = split_documents(result.stdout)
    except yaml.YAMLError as exc:
        return Render(scenario, release, error=f"rendered YAML does not parse: {exc}")
    return Render(scenario, release, objects)


def rendered(scenario: str, release: str = RELEASE) -> Render:
    """The render, or a test failure that quotes Helm's error."""
    result = render(scenario, release)
    if result.error:
        pytest.fail(f"{scenario}: `helm template {release} ...` failed:\n{result.error}")
    return result


# --------------------------------------------------------------------------- checkov


@dataclass
class CheckovRun:
    failed: dict[str, list[dict[str, Any]]]  # scenario -> failed checks
    skipped: dict[str, list[dict[str, Any]]]  # scenario -> checks skipped inside the manifests
    resources: dict[str, int]  # scenario -> files with at least one check result
    parsing_errors: list[str]
    seconds: float

    def __repr__(self) -> str:  # short, for pytest's failure reports
        failed = {s: len(c) for s, c in self.failed.items()}
        return f"<CheckovRun failed={failed} seconds={self.seconds:.1f}>"


def _file_name(index: int, obj: Any) -> str:
    kind = str(obj.get("kind", "unknown")).lower() if isinstance(obj, dict) else "unknown"
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = str(meta.get("name", "unnamed")) if isinstance(meta, dict) else "unnamed"
    return f"{index:03d}-{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.yaml"


def run_checkov(base: Path, scenario_names: list[str]) -> CheckovRun:
    """One checkov run over every scenario's render, written one file per object."""
    for scenario in scenario_names:
        folder = base / scenario
        folder.mkdir(parents=True)
        result = render(scenario)
        for i, item in enumerate(result.objects):
            folder.joinpath(_file_name(i, item.obj)).write_text(
                f"# Source: {item.source}\n" + yaml.safe_dump(item.obj, sort_keys=False)
            )
    # No network: no guideline mapping download (BC_SKIP_MAPPING), no external checks.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    cmd = [str(CHECKOV), "-d", str(base), "--framework", "kubernetes", "--compact"]
    cmd += ["-o", "json", "--skip-download"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    seconds = time.monotonic() - started
    if proc.returncode not in (0, 1):
        pytest.fail(f"checkov exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    reports = report if isinstance(report, list) else [report]
    failed: dict[str, list[dict[str, Any]]] = {s: [] for s in scenario_names}
    skipped: dict[str, list[dict[str, Any]]] = {s: [] for s in scenario_names}
    resources: dict[str, int] = dict.fromkeys(scenario_names, 0)
    errors: list[str] = []
    files: dict[str, set[str]] = {s: set() for s in scenario_names}
    for one in reports:
        if one.get("check_type") not in (None, "kubernetes"):
            continue
        results = one.get("results", {})
        for bucket, key in ((failed, "failed_checks"), (skipped, "skipped_checks")):
            for check in results.get(key, []):
                scenario = _scenario_of(check, base)
                bucket.setdefault(scenario, []).append(check)
        for check in [*results.get("passed_checks", []), *results.get("failed_checks", [])]:
            files.setdefault(_scenario_of(check, base), set()).add(check.get("file_path", ""))
        if one.get("summary", {}).get("parsing_errors"):
            errors.append(f"{one['summary']['parsing_errors']} parsing errors")
    for scenario, names in files.items():
        resources[scenario] = len(names)
    return CheckovRun(failed, skipped, resources, errors, seconds)


def _scenario_of(check: dict[str, Any], base: Path) -> str:
    path = Path(check.get("file_abs_path") or check.get("file_path", ""))
    try:
        return path.relative_to(base).parts[0]
    except ValueError:
        return Path(check.get("file_path", "/?")).parts[1]


@pytest.fixture(scope="session")
def checkov_run(tmp_path_factory: pytest.TempPathFactory) -> CheckovRun:
    """checkov once for all scenarios (about 10 s), not once per scenario."""
    if not CHECKOV.is_file():
        pytest.fail(f"{CHECKOV.relative_to(ROOT)} missing: run `make setup` (scripts/setup.sh)")
    ok = [s for s in scenarios() if not render(s).error]
    return run_checkov(tmp_path_factory.mktemp("checkov"), ok)


@dataclass(frozen=True)
class CheckovSkip:
    check: str
    resources: tuple[str, ...]
    why: str


def load_checkov_skips() -> list[CheckovSkip]:
    data = yaml.safe_load(CHECKOV_SKIPS.read_text()) or {}
    return [
        CheckovSkip(
            check=str(entry.get("check", "")),
            resources=tuple(str(r) for r in entry.get("resources", ["*"])),
            why=str(entry.get("why", "") or "").strip(),
        )
        for entry in data.get("skips") or []
    ]


@pytest.fixture(scope="session")
def checkov_skips() -> list[CheckovSkip]:
    return load_checkov_skips()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def scenario_values(scenario: str) -> Path:
    """ci/<scenario>-values.yaml (a failure when the chart or its scenarios are missing)."""
    return values_file(scenario)


@pytest.fixture
def lint_result(scenario: str) -> subprocess.CompletedProcess[str]:
    """`helm lint --strict` with the scenario's values, for the pinned Kubernetes version."""
    values = values_file(scenario)
    return helm(
        "lint", "--strict", str(CHART), "-f", str(values), "--namespace", NAMESPACE,
        "--kube-version", K8S_VERSION,
    )  # fmt: skip


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    return CHART


@pytest.fixture(scope="session")
def api_versions() -> tuple[str, ...]:
    return API_VERSIONS


@pytest.fixture
def chart_render(scenario: str) -> Render:
    """The scenario rendered as release RELEASE into namespace NAMESPACE."""
    return rendered(scenario, RELEASE)


@pytest.fixture
def long_release_render(scenario: str) -> Render:
    """The scenario rendered with LONG_RELEASE, the worst case for name lengths."""
    return rendered(scenario, LONG_RELEASE)


@pytest.fixture(scope="session")
def all_renders() -> dict[str, Render]:
    """Every scenario's render (those that failed carry their error)."""
    return {s: render(s) for s in scenarios()}
