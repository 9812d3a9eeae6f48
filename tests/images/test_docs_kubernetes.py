"""docs/kubernetes.md: its atelier commands work on the chart as it is.

No cluster runs here, so the page's commands are checked the way they can be: every
`helm install atelier charts/atelier ...` renders with `helm template` and the same values;
every `kubectl port-forward svc/...` in the atelier namespace names a Service and port of
one of those renders (or KServe's predictor, or kube-prometheus-stack's Services); every
file and Skaffold profile it names exists; and the image tags it loads are the appVersion.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from atelier.tools import chart

pytestmark = pytest.mark.chart

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/kubernetes.md"
HELM_ONLY = {"--wait", "--wait-for-jobs", "--create-namespace"}


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """Helm from make setup: missing tools fail the tests, they do not skip them."""
    for tool in (ROOT / ".tools/bin/helm",):
        if not tool.is_file():
            pytest.fail(f"{tool} is missing: run make setup")


def commands() -> list[list[str]]:
    """Shell commands of the bash blocks, continuation lines joined, split like the shell."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip().rstrip("&").strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line, comments=True))
    return out


def atelier_installs() -> list[list[str]]:
    return [c for c in commands() if c[:4] == ["helm", "install", "atelier", "charts/atelier"]]


def template_args(cmd: list[str]) -> tuple[list[str], list[str], str]:
    files, sets, namespace = [], [], "default"
    args = iter(cmd[4:])
    for a in args:
        if a in {"-f", "--values"}:
            files.append(next(args))
        elif a == "--set":
            sets.append(next(args))
        elif a in {"--namespace", "-n"}:
            namespace = next(args)
        elif a == "--timeout":
            next(args)
        elif a.split("=")[0] in HELM_ONLY:
            continue
        else:
            pytest.fail(f"docs/kubernetes.md: helm install flag {a} is not understood here")
    return files, sets, namespace


@pytest.fixture(scope="module")
def renders() -> list[list[dict[str, Any]]]:
    installs = atelier_installs()
    assert len(installs) >= 2, "the page installs atelier for both paths"
    out = []
    for cmd in installs:
        files, sets, namespace = template_args(cmd)
        assert namespace == "atelier"
        for f in files:
            assert (ROOT / f).is_file(), f
        out.append(chart.helm_template([ROOT / f for f in files], sets, namespace=namespace))
    return out


def test_every_atelier_install_renders(renders: list[list[dict[str, Any]]]) -> None:
    modes = set()
    for objects in renders:
        kinds = {o["kind"] for o in objects}
        assert "Ingress" in kinds, "both paths enable the Ingress the load test uses"
        modes.add("kserve" if "InferenceService" in kinds else "raw")
    assert modes == {"raw", "kserve"}


def test_port_forwards_name_real_services(renders: list[list[dict[str, Any]]]) -> None:
    services: dict[tuple[str, str], set[int]] = {}
    for objects in renders:
        for o in objects:
            if o["kind"] == "Service":
                ports = {p["port"] for p in o["spec"]["ports"]}
                services.setdefault(("atelier", o["metadata"]["name"]), set()).update(ports)
            if o["kind"] == "InferenceService":
                services[("atelier", f"{o['metadata']['name']}-predictor")] = {80}
    # kube-prometheus-stack installed as the release kube-prometheus-stack (the page says so).
    services[("monitoring", "kube-prometheus-stack-grafana")] = {80}
    services[("monitoring", "kube-prometheus-stack-prometheus")] = {9090}
    forwards = [c for c in commands() if c[:1] == ["kubectl"] and "port-forward" in c]
    assert forwards
    for cmd in forwards:
        namespace = cmd[cmd.index("-n") + 1]
        target = next(a for a in cmd if a.startswith("svc/"))
        _local, remote = cmd[cmd.index(target) + 1].split(":")
        key = (namespace, target.removeprefix("svc/"))
        assert key in services, f"{' '.join(cmd)}: no such Service"
        assert int(remote) in services[key], f"{' '.join(cmd)}: ports {services[key]}"


def test_files_profiles_and_tags_exist() -> None:
    text = DOC.read_text()
    for cmd in commands():
        if cmd[:2] == ["docker", "build"]:
            tag, folder = cmd[cmd.index("-t") + 1], cmd[-1]
            assert (ROOT / folder / "Dockerfile").is_file(), folder
            version = yaml.safe_load((ROOT / "charts/atelier/Chart.yaml").read_text())
            assert tag.split(":")[1] == str(version["appVersion"]), tag
        if cmd[:1] == ["skaffold"]:
            assert cmd[cmd.index("-f") + 1] == "Skaffold.yaml"
            profile = cmd[cmd.index("-p") + 1]
            skaffold = yaml.safe_load((ROOT / "Skaffold.yaml").read_text())
            assert profile in {p["name"] for p in skaffold["profiles"]}, profile
        if cmd[:2] == ["kubectl", "apply"] and "-k" in cmd:
            assert (ROOT / cmd[cmd.index("-k") + 1] / "kustomization.yaml").is_file()
        if cmd[:1] == ["bash"]:
            assert (ROOT / cmd[1]).is_file(), cmd[1]
    for link in re.findall(r"\]\((\.\./[^)#]+)\)", text):
        assert (DOC.parent / link).resolve().exists(), link
    # The page says what was run on the machine it was written on, and what was not.
    assert "What was run here" in text and "were\n> not run on it" in text
