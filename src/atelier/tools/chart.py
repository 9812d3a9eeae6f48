"""`atelier chart`: keep the Helm chart's copies of monitoring/ in step, and render the chart.

Helm's `.Files` cannot read outside the chart folder, so the chart ships byte-identical copies
of the monitoring files (the one source of truth: rules, autoscaling queries, Alertmanager
routing, dashboards) under charts/atelier/files/. `sync` writes
them, `stale` names the copies that differ; tests/chart/test_chart_sync.py fails on any.

`helm_template` renders the chart with the pinned Helm binary (.tools/bin/helm, installed by
`make setup`) for the chart tests.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from atelier.runtime.errors import ConfigError
from atelier.tools.paths import project_file

CHART_DIR = "charts/atelier"
HELM = ".tools/bin/helm"

# monitoring/ source glob -> folder under charts/atelier/files/
SYNCED: tuple[tuple[str, str, str], ...] = (
    ("monitoring/prometheus/rules", "*.yml", "prometheus/rules"),
    ("monitoring/prometheus/queries", "*.yml", "prometheus/queries"),
    ("monitoring/alertmanager", "alertmanager.yml", "alertmanager"),
    ("monitoring/grafana/dashboards", "*.json", "grafana/dashboards"),
)


def chart_dir() -> Path:
    return project_file(CHART_DIR)


def pairs(root: Path | None = None) -> list[tuple[Path, Path]]:
    """(source in monitoring/, copy in the chart) for every synced file."""
    root = root or project_file("")
    out: list[tuple[Path, Path]] = []
    for src_dir, pattern, dest in SYNCED:
        for src in sorted((root / src_dir).glob(pattern)):
            out.append((src, root / CHART_DIR / "files" / dest / src.name))
    return out


def _orphans(root: Path, expected: Iterable[Path]) -> list[Path]:
    wanted = set(expected)
    found: list[Path] = []
    for _, pattern, dest in SYNCED:
        found += (root / CHART_DIR / "files" / dest).glob(pattern)
    return sorted(p for p in found if p not in wanted)


def stale(root: Path | None = None) -> list[str]:
    """Copies that are missing, differ from their source, or have no source any more."""
    root = root or project_file("")
    problems: list[str] = []
    ps = pairs(root)
    for src, dst in ps:
        rel = dst.relative_to(root)
        if not dst.is_file():
            problems.append(f"{rel}: missing (copy of {src.relative_to(root)})")
        elif dst.read_bytes() != src.read_bytes():
            problems.append(f"{rel}: differs from {src.relative_to(root)}")
    for orphan in _orphans(root, [d for _, d in ps]):
        problems.append(f"{orphan.relative_to(root)}: no source in monitoring/ any more")
    return problems


def sync(root: Path | None = None) -> list[Path]:
    """Copy the monitoring files into the chart; remove copies whose source is gone."""
    root = root or project_file("")
    written: list[Path] = []
    ps = pairs(root)
    for src, dst in ps:
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        written.append(dst)
    for orphan in _orphans(root, [d for _, d in ps]):
        orphan.unlink()
        written.append(orphan)
    return written


def check(root: Path | None = None) -> None:
    problems = stale(root)
    if problems:
        raise ConfigError(
            "the chart's copies of monitoring/ are stale: " + "; ".join(problems),
            hint="run atelier chart sync",
        )


def helm_binary() -> Path:
    helm = project_file(HELM)
    if not helm.is_file():
        raise ConfigError(f"{helm} is missing", hint="run make setup")
    return helm


def helm_template(
    values_files: Sequence[Path | str] = (),
    set_values: Sequence[str] = (),
    *,
    release: str = "atelier",
    namespace: str = "atelier",
    extra_args: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Render the chart and return its objects (hooks and tests included)."""
    cmd = [str(helm_binary()), "template", release, str(chart_dir()), "--namespace", namespace]
    for f in values_files:
        cmd += ["-f", str(f)]
    for s in set_values:
        # "key:=<json>" sets a typed value (--set-json); plain --set keeps "0.995" a string.
        cmd += ["--set-json", s.replace(":=", "=", 1)] if ":=" in s else ["--set", s]
    cmd += list(extra_args)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"helm template failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def helm_notes(set_values: Sequence[str] = (), *, release: str = "atelier") -> str:
    """NOTES.txt as `helm install --dry-run=client` prints it (no cluster is contacted)."""
    cmd = [str(helm_binary()), "install", release, str(chart_dir()), "--dry-run=client"]
    cmd += ["--namespace", "atelier"]
    for s in set_values:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"helm install --dry-run failed: {proc.stderr.strip()}")
    return proc.stdout.split("NOTES:\n", 1)[-1]


@cache
def rendered(*set_values: str, values_file: str = "", release: str = "atelier") -> tuple[Any, ...]:
    """helm_template, cached per arguments (the chart tests render the same values often)."""
    files = [project_file(f"{CHART_DIR}/ci/{values_file}-values.yaml")] if values_file else []
    return tuple(helm_template(files, set_values, release=release))
