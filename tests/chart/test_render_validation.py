"""Every object the chart renders, in every ci/*-values.yaml scenario, is valid for Kubernetes 1.31.

- `helm lint --strict` passes for each scenario.
- Each rendered object passes its strict checker (support.k8s_validate): kubernetes-validate
  for core kinds, the kserve models for InferenceService and ServingRuntime, the Prometheus
  Operator models for ServiceMonitor, PodMonitor, PrometheusRule and AlertmanagerConfig. A
  kind none of them knows fails.
- Names and label values fit their limits, also with Helm's longest release name.
- checkov passes on the rendered manifests, except the skips in checkov_skips.yaml, each
  justified there and each still needed.

tests/unit/test_k8s_validate.py proves each checker fails on what it should catch.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support.k8s_validate import (
    K8S_VERSION,
    KEDA_KINDS,
    KSERVE_KINDS,
    PROMETHEUS_OPERATOR_KINDS,
    check_names,
    describe,
    duplicate_problems,
    object_id,
    validate_object,
)

pytestmark = pytest.mark.chart

REQUIRED_SCENARIOS = ("default", "raw-bundled", "minimal", "everything")

# The fixtures (tests/chart/conftest.py) hand out these objects; conftest is not imported.
Render = Any  # .scenario, .release, .objects: list of (.source, .obj)
CheckovRun = Any  # .failed / .skipped: scenario -> checkov check dicts; .resources; .seconds
CheckovSkip = Any  # .check, .resources (fnmatch patterns on checkov's resource id), .why


def test_required_scenarios_exist(chart_dir: Path) -> None:
    ci = chart_dir / "ci"
    missing = [s for s in REQUIRED_SCENARIOS if not (ci / f"{s}-values.yaml").is_file()]
    assert not missing, f"missing scenario files in {ci}: " + ", ".join(
        f"{s}-values.yaml" for s in missing
    )


def test_helm_lint_strict(scenario: str, lint_result: subprocess.CompletedProcess[str]) -> None:
    if lint_result.returncode != 0:
        output = (lint_result.stdout + lint_result.stderr).strip().splitlines()
        report(output, f"{scenario}: helm lint --strict failed:")


def test_every_object_validates_strictly(scenario: str, chart_render: Render) -> None:
    assert chart_render.objects, f"{scenario}: the render holds no objects"
    errors = []
    for item in chart_render.objects:
        found = validate_object(item.obj) + check_names(item.obj)
        errors += [f"{line}  [{item.source}]" for line in describe(scenario, item.obj, found)]
    errors += [f"{scenario} {line}" for line in duplicate_problems(objects(chart_render))]
    report(errors, f"{len(errors)} problem(s) for Kubernetes {K8S_VERSION}:")


def test_names_fit_with_longest_release(scenario: str, long_release_render: Render) -> None:
    release = long_release_render.release
    assert len(release) == 53  # Helm's longest release name
    errors = []
    for item in long_release_render.objects:
        found = check_names(item.obj)
        errors += [f"{line}  [{item.source}]" for line in describe(scenario, item.obj, found)]
    errors += [f"{scenario} {line}" for line in duplicate_problems(objects(long_release_render))]
    report(errors, f"{len(errors)} name problem(s) with release {release!r}:")


def report(errors: list[str], title: str) -> None:
    """Fail with one line per problem and no traceback noise."""
    if errors:
        pytest.fail("\n".join([title, *errors]), pytrace=False)


def objects(render: Render) -> list[Any]:
    return [item.obj for item in render.objects]


def test_every_rendered_kind_is_checked_strictly(scenario: str, chart_render: Render) -> None:
    """An unknown field planted in each rendered object is caught: no kind slips through."""
    missed = []
    for item in chart_render.objects:
        for where in ("", "metadata", "spec"):
            obj = copy.deepcopy(item.obj)
            target = obj.get(where) if where else obj
            if not isinstance(target, dict):
                continue
            target["plantedUnknownField"] = 1
            if not any("plantedUnknownField" in str(p) for p in validate_object(obj)):
                missed.append(f"{scenario} {object_id(obj)}: {where or '.'}: not caught")
    report(missed, "an unknown field passed the strict checkers:")


def crd_kinds() -> set[str]:
    return {kind for _, kind in [*KSERVE_KINDS, *PROMETHEUS_OPERATOR_KINDS, *KEDA_KINDS]}


def test_crd_kinds_in_templates_are_rendered_and_checked(
    chart_dir: Path, all_renders: dict[str, Render], api_versions: tuple[str, ...]
) -> None:
    """Each CRD kind a template can emit shows up in some scenario, so its checker really ran.

    A kind gated on `.Capabilities.APIVersions.Has` that no scenario renders would mean the
    harness's API_VERSIONS miss the version the template asks for.
    """
    text = "\n".join(p.read_text() for p in (chart_dir / "templates").rglob("*") if p.is_file())
    in_templates = {k for k in crd_kinds() if re.search(rf"^\s*kind:\s*{k}\s*$", text, re.M)}
    rendered = {
        item.obj.get("kind")
        for render in all_renders.values()
        for item in render.objects
        if isinstance(item.obj, dict)
    }
    missing = sorted(in_templates - rendered)
    assert not missing, (
        f"templates emit {missing} but no scenario renders them (api versions passed: "
        f"{', '.join(api_versions)})"
    )


# --------------------------------------------------------------------------- checkov


def skipped_by(check: dict[str, Any], skips: list[CheckovSkip]) -> CheckovSkip | None:
    resource = str(check.get("resource", ""))
    for skip in skips:
        if skip.check == check.get("check_id") and any(
            fnmatch.fnmatchcase(resource, pattern) for pattern in skip.resources
        ):
            return skip
    return None


def checkov_line(scenario: str, check: dict[str, Any]) -> str:
    keys = (check.get("check_result") or {}).get("evaluated_keys") or []
    where = ", ".join(str(k) for k in keys) or "."
    file = Path(str(check.get("file_path", ""))).name
    return (
        f"{scenario} {check.get('resource')}: {where}: {check.get('check_id')} "
        f"{check.get('check_name')}  [{file}]"
    )


def test_checkov_passes(
    scenario: str, chart_render: Render, checkov_run: CheckovRun, checkov_skips: list[CheckovSkip]
) -> None:
    assert not checkov_run.parsing_errors, f"checkov could not parse: {checkov_run.parsing_errors}"
    assert checkov_run.resources.get(scenario), f"{scenario}: checkov checked no resource"
    failures = [
        checkov_line(scenario, check)
        for check in checkov_run.failed.get(scenario, [])
        if skipped_by(check, checkov_skips) is None
    ]
    report(
        sorted(failures),
        f"{len(failures)} checkov failure(s) (fix the chart, or add a justified skip to "
        "tests/chart/checkov_skips.yaml):",
    )


def test_no_checkov_skips_inside_manifests(
    scenario: str, chart_render: Render, checkov_run: CheckovRun
) -> None:
    """Skips live in checkov_skips.yaml only, not in checkov.io/skip annotations."""
    inline = [checkov_line(scenario, c) for c in checkov_run.skipped.get(scenario, [])]
    report(inline, "checks skipped by checkov.io/skip annotations in the chart:")


def test_checkov_skips_are_justified(checkov_skips: list[CheckovSkip]) -> None:
    for skip in checkov_skips:
        assert re.fullmatch(r"CKV2?_K8S_\d+", skip.check), f"not a checkov check id: {skip}"
        assert skip.resources, f"{skip.check}: empty resources list"
        assert len(skip.why) >= 40, f"{skip.check}: the justification is missing or too short"
    ids = [(s.check, s.resources) for s in checkov_skips]
    assert len(ids) == len(set(ids)), "a skip is listed twice"


def test_checkov_skips_are_all_needed(
    checkov_run: CheckovRun, checkov_skips: list[CheckovSkip]
) -> None:
    used = {
        id(skip)
        for checks in checkov_run.failed.values()
        for check in checks
        if (skip := skipped_by(check, checkov_skips)) is not None
    }
    stale = [s.check for s in checkov_skips if id(s) not in used]
    assert not stale, f"skips no scenario needs any more (remove them): {stale}"
