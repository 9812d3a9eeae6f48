"""The images and the chart agree: what the chart runs is what the images hold.

The chart sets its own command and environment; the images carry the same defaults, so a
`docker run` behaves like the pod and a chart that drops a setting still works. Checked on a
real render (the kind scenario: raw mode, bundled monitoring) against the Dockerfiles.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from atelier.tools import chart

pytestmark = pytest.mark.chart

ROOT = Path(__file__).resolve().parents[2]
KIND_VALUES = ROOT / "charts/atelier/ci/raw-bundled-values.yaml"
# The KServe runtime as the model server (serving.runtime=kserve), raw mode.
KSERVE_RUNTIME_VALUES = ROOT / "charts/atelier/ci/raw-kserve-runtime-values.yaml"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """Helm from make setup: missing tools fail the tests, they do not skip them."""
    for tool in (ROOT / ".tools/bin/helm",):
        if not tool.is_file():
            pytest.fail(f"{tool} is missing: run make setup")


def dockerfile_runtime(folder: str) -> dict[str, Any]:
    """ENV, USER, EXPOSE, ENTRYPOINT and CMD of the Dockerfile's last stage."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / folder / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    last = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    out: dict[str, Any] = {"env": {}, "expose": set()}
    for line in lines[last:]:
        name, _, args = line.partition(" ")
        name = name.upper()
        if name == "ENV":
            for item in shlex.split(args):
                k, _, v = item.partition("=")
                out["env"][k] = v
        elif name == "USER":
            out["user"] = args.strip()
        elif name == "EXPOSE":
            out["expose"] |= {int(p) for p in args.split()}
        elif name in {"ENTRYPOINT", "CMD"}:
            out[name.lower()] = json.loads(args)
    return out


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return chart.helm_template([KIND_VALUES])


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for o in objects:
        spec = o.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template"
        )
        if template:
            out[f"{o['kind']}/{o['metadata']['name']}"] = template["spec"]
    return out


def container(objects: list[dict[str, Any]], image: str) -> list[dict[str, Any]]:
    found = []
    for spec in pod_specs(objects).values():
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            if c["image"].split(":")[0] == image:
                found.append(c)
    assert found, f"the chart runs no {image} container"
    return found


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", []) if "value" in e}


def test_pods_run_as_the_images_user(objects: list[dict[str, Any]]) -> None:
    uids = {
        dockerfile_runtime(f)["user"]
        for f in ("training-job", "services/serving", "services/drift", "services/kserve")
    }
    assert len(uids) == 1
    uid = int(uids.pop().split(":")[0])
    kserve = chart.helm_template([KSERVE_RUNTIME_VALUES])
    for name, spec in {**pod_specs(objects), **pod_specs(kserve)}.items():
        images = [c["image"] for c in spec.get("containers", [])]
        if not any(i.startswith("atelier-") for i in images):
            continue
        ctx = spec.get("securityContext", {})
        assert ctx.get("runAsUser") == uid and ctx.get("runAsGroup") == uid, name
        assert ctx.get("runAsNonRoot") is True, name


def test_serving_container_matches_the_image(objects: list[dict[str, Any]]) -> None:
    image = dockerfile_runtime("services/serving")
    for c in container(objects, "atelier-serving"):
        if c["name"] != "torchserve":
            continue  # the helm test pod runs the image's Python, not TorchServe
        env = env_of(c)
        for key, value in image["env"].items():
            if key in env:
                assert env[key] == value, f"{key}: chart {env[key]!r}, image {value!r}"
        for key in ("TS_INFERENCE_ADDRESS", "TS_METRICS_ADDRESS", "TS_MANAGEMENT_ADDRESS"):
            assert key in env, f"the chart no longer sets {key}"
        ports = {p["containerPort"] for p in c["ports"]}
        assert ports == image["expose"]
        # The chart's command is the image's entrypoint (tini first, as PID 1, then the OIP
        # front), then the image's flags: the front's (the chart may add --model-name), and
        # after --launch the TorchServe command, the same flags with the same values.
        command = c.get("command") or image["entrypoint"]
        command = command + c.get("args", [])
        entry = image["entrypoint"]
        assert command[: len(entry)] == entry and entry[-1] == "atelier.serving.oip_front"
        rest, cmd = command[len(entry) :], image["cmd"]
        front, launched = rest[: rest.index("--launch")], rest[rest.index("--launch") :]
        image_front, image_launched = cmd[: cmd.index("--launch")], cmd[cmd.index("--launch") :]
        torchserve = ["--launch", "--", "nice", "-n", "5", "torchserve"]
        assert launched[:6] == image_launched[:6] == torchserve

        def flags(args: list[str]) -> set[str]:
            return {a.split("=", 1)[0] for a in args if a.startswith("--")}

        assert flags(launched) == flags(image_launched)
        assert flags(image_front) <= flags(front) <= flags(image_front) | {"--model-name"}
        chart_args = " ".join(command).replace("=", " ")
        for a in image["cmd"]:
            if "=" in a:
                flag, value = a.split("=", 1)
                assert f"{flag} {value}" in chart_args, f"chart passes another {flag}"


def test_kserve_runtime_container_matches_the_image() -> None:
    """The chart's command is the image's entrypoint with the image's flags (and the model,
    the workers); its env agrees with the image's; its one port is the one the image exposes."""
    image = dockerfile_runtime("services/kserve")
    (c,) = container(chart.helm_template([KSERVE_RUNTIME_VALUES]), "atelier-kserve")
    assert c["name"] == "kserve"
    command = c["command"]
    entry = image["entrypoint"]
    assert command[: len(entry)] == entry, command
    args = command[len(entry) :]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    image_flags = dict(a.split("=", 1) for a in image["cmd"])
    for flag, value in image_flags.items():
        assert pairs.get(flag) == value, f"chart passes {flag} {pairs.get(flag)!r}"
    assert set(pairs) - set(image_flags) == {"--model-name", "--workers"}
    env = env_of(c)
    for key, value in image["env"].items():
        if key in env:
            assert env[key] == value, f"{key}: chart {env[key]!r}, image {value!r}"
    assert "TMPDIR" in env, "the chart no longer sets TMPDIR"
    assert {p["containerPort"] for p in c["ports"]} == image["expose"]


def test_drift_container_matches_the_image(objects: list[dict[str, Any]]) -> None:
    image = dockerfile_runtime("services/drift")
    (c,) = container(objects, "atelier-drift")
    env = env_of(c)
    for key, value in image["env"].items():
        if key.startswith("ATELIER_DRIFT_") and key in env:
            assert env[key] == value, f"{key}: chart {env[key]!r}, image {value!r}"
    assert {p["containerPort"] for p in c["ports"]} == image["expose"]
    assert "command" not in c, "the chart relies on the image's entrypoint"


def test_training_containers_run_the_images_entrypoint(objects: list[dict[str, Any]]) -> None:
    image = dockerfile_runtime("training-job")
    assert image["entrypoint"] == ["atelier"]
    for c in container(objects, "atelier-training"):
        command = c.get("command") or image["entrypoint"]
        assert command == image["entrypoint"], c["name"]
        subcommand = c["args"][0]
        assert subcommand in {"train", "archive"}, c["name"]
        env = env_of(c)
        # atelier archive reads the handler and the config templates from package data:
        # nothing points it at a checkout.
        assert "ATELIER_HOME" not in env and "ATELIER_HOME" not in image["env"]
