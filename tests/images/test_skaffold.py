"""Skaffold.yaml, cross-checked against the repo and a real render of the chart.

No Skaffold binary can be installed here, so the file is proved the other way round: every
field is one the skaffold/v4beta13 schema knows; every artifact's context is a folder with a
Dockerfile, its image is the chart's default repository, its hook runs a script that exists
on that folder; every values key it sets is a key of charts/atelier/values.yaml; Skaffold's
image fields, filled in as Skaffold fills them, reach the containers of the render; every
profile renders; and every port-forward names a Service (and port) of that render, or the
Service KServe or kube-prometheus-stack create by their naming conventions.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from atelier.tools import chart
from atelier.tools.loadtest import DEFAULT_DRIFT_URL, DEFAULT_HOST

pytestmark = pytest.mark.chart

ROOT = Path(__file__).resolve().parents[2]
SKAFFOLD = ROOT / "Skaffold.yaml"
VALUES = ROOT / "charts/atelier/values.yaml"
STAGE_SCRIPT = "scripts/stage-image-context.sh"
# image -> (context, values key of its image)
ARTIFACTS = {
    "atelier-training": ("training-job", "training"),
    "atelier-serving": ("services/serving", "serving"),
    "atelier-drift": ("services/drift", "drift"),
    "atelier-kserve": ("services/kserve", "serving.kserveRuntime"),
}
# Values that make the chart run each image: the KServe runtime's only with serving.runtime.
RUNTIMES = ((), ("serving.runtime=kserve",))
PROFILES = {"kind": ("raw", "bundled"), "kserve": ("kserve", "operator")}
# Skaffold's image fields for Helm (pkg/skaffold/helm/args.go): per artifact, with "-" and
# "/" in its name turned into "_".
FIELDS = {"IMAGE_REPO": "repository", "IMAGE_TAG": "tag", "IMAGE_DIGEST": "digest"}
SAMPLE_TAG = "0123abc"
SAMPLE_DIGEST = "sha256:" + "ab" * 32

# The fields of the skaffold/v4beta13 schema objects this file uses (from the published JSON
# schema): a misspelt key is an error Skaffold would report at start.
SCHEMA: dict[str, set[str]] = {
    "config": {
        "apiVersion", "kind", "metadata", "requires", "build", "test", "manifests", "deploy",
        "portForward", "resourceSelector", "verify", "customActions", "profiles",
    },
    "metadata": {"name", "labels", "annotations"},
    "build": {
        "artifacts", "insecureRegistries", "tagPolicy", "platforms", "local",
        "googleCloudBuild", "cluster",
    },
    "tagPolicy": {
        "gitCommit", "sha256", "envTemplate", "dateTime", "customTemplate", "inputDigest",
    },
    "local": {"push", "tryImportMissing", "useDockerCLI", "useBuildkit", "concurrency"},
    "artifact": {
        "image", "context", "sync", "requires", "hooks", "platforms", "runtimeType", "docker",
    },
    "docker": {
        "dockerfile", "target", "buildArgs", "network", "addHost", "cacheFrom", "cliFlags",
        "pullParent", "noCache", "squash", "secrets", "ssh",
    },
    "hooks": {"before", "after"},
    "hostHook": {"command", "os", "dir"},
    "deploy": {
        "docker", "helm", "kpt", "kubectl", "cloudrun", "statusCheck",
        "statusCheckDeadlineSeconds", "tolerateFailuresUntilDeadline", "kubeContext", "logs",
    },
    "helm": {"concurrency", "releases", "flags", "hooks"},
    "release": {
        "name", "chartPath", "remoteChart", "valuesFiles", "namespace", "version", "setValues",
        "setValueTemplates", "setFiles", "createNamespace", "wait", "recreatePods",
        "skipBuildDependencies", "skipTests", "useHelmSecrets", "repo", "upgradeOnChange",
        "overrides", "packaged", "dependsOn",
    },
    "portForward": {"resourceType", "resourceName", "namespace", "port", "address", "localPort"},
    "profile": {
        "name", "activation", "requiresAllActivations", "patches", "build", "test",
        "manifests", "deploy", "portForward", "resourceSelector", "verify", "customActions",
    },
    "patch": {"op", "path", "from", "value"},
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """Helm from make setup: missing tools fail the tests, they do not skip them."""
    for tool in (ROOT / ".tools/bin/helm",):
        if not tool.is_file():
            pytest.fail(f"{tool} is missing: run make setup")


def load() -> dict[str, Any]:
    assert SKAFFOLD.is_file(), "Skaffold.yaml is missing"
    data: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return data


def values() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return data


def has_key(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON patch operations a profile uses (add, replace, remove), as Skaffold does."""
    out = copy.deepcopy(config)
    for p in patches:
        op = p.get("op", "replace")
        assert op in {"add", "replace", "remove"}, f"patch op {op} is not handled here"
        *parents, last = [unescape(t) for t in p["path"].split("/")[1:]]
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op == "add":
                node.insert(index, p["value"])
            elif op == "replace":
                node[index] = p["value"]
            else:
                del node[index]
        else:
            assert op == "add" or last in node, f"{p['path']}: nothing to {op}"
            if op == "remove":
                del node[last]
            else:
                node[last] = p["value"]
    return out


def effective(config: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """The config with a profile applied: its patches, then its sections replacing ours."""
    if profile is None:
        return config
    (prof,) = [p for p in config["profiles"] if p["name"] == profile]
    out = apply_patches(config, prof.get("patches", []))
    for section in ("build", "deploy", "portForward", "manifests", "test", "verify"):
        if section in prof:
            out[section] = prof[section]
    return out


def sanitize(image: str) -> str:
    return image.replace("-", "_").replace("/", "_")


def expand(template: str, fields: dict[str, str]) -> str:
    """Skaffold's Go template expansion for the {{.NAME}} fields this file uses."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        assert name in fields, f"{{{{.{name}}}}} is not a field Skaffold provides here"
        return fields[name]

    return re.sub(r"\{\{\s*\.(\w+)\s*\}\}", one, template)


def image_fields(digest: str) -> dict[str, str]:
    out = {}
    for image in ARTIFACTS:
        out[f"IMAGE_REPO_{sanitize(image)}"] = image
        out[f"IMAGE_TAG_{sanitize(image)}"] = SAMPLE_TAG
        out[f"IMAGE_DIGEST_{sanitize(image)}"] = digest
    return out


def helm_args(release: dict[str, Any], digest: str = "") -> tuple[list[str], list[str]]:
    """The -f files and --set pairs Skaffold passes for this release."""
    sets = [f"{k}={v}" for k, v in sorted((release.get("setValues") or {}).items())]
    for k, v in sorted((release.get("setValueTemplates") or {}).items()):
        sets.append(f"{k}={expand(v, image_fields(digest))}")
    return list(release.get("valuesFiles") or []), sets


def render(
    release: dict[str, Any], digest: str = "", extra: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    files, sets = helm_args(release, digest)
    return chart.helm_template(
        [ROOT / f for f in files],
        [*sets, *extra],
        release=release["name"],
        namespace=release.get("namespace", "default"),
    )


def containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("containers", "initContainers"):
                if isinstance(node.get(key), list):
                    out.extend(c for c in node[key] if isinstance(c, dict) and "image" in c)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(objects)
    return out


def check_keys(node: Any, allowed: str, where: str) -> None:
    assert isinstance(node, dict), f"{where}: a mapping expected"
    unknown = set(node) - SCHEMA[allowed]
    assert not unknown, f"{where}: {sorted(unknown)} are not skaffold/v4beta13 fields"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load()


def test_api_version_is_a_current_v4beta(config: dict[str, Any]) -> None:
    assert config["kind"] == "Config"
    m = re.fullmatch(r"skaffold/v4beta(\d+)", config["apiVersion"])
    assert m and int(m.group(1)) >= 13, config["apiVersion"]


def test_every_field_is_a_schema_field(config: dict[str, Any]) -> None:
    check_keys(config, "config", "top level")
    check_keys(config["metadata"], "metadata", "metadata")
    build = config["build"]
    check_keys(build, "build", "build")
    check_keys(build["tagPolicy"], "tagPolicy", "build.tagPolicy")
    check_keys(build["local"], "local", "build.local")
    for i, artifact in enumerate(build["artifacts"]):
        where = f"build.artifacts[{i}]"
        check_keys(artifact, "artifact", where)
        check_keys(artifact["docker"], "docker", f"{where}.docker")
        check_keys(artifact["hooks"], "hooks", f"{where}.hooks")
        for phase, hooks in artifact["hooks"].items():
            for j, hook in enumerate(hooks):
                check_keys(hook, "hostHook", f"{where}.hooks.{phase}[{j}]")
                assert isinstance(hook["command"], list) and hook["command"]
                assert set(hook.get("os", [])) <= {"linux", "darwin", "windows"}
    check_keys(config["deploy"], "deploy", "deploy")
    check_keys(config["deploy"]["helm"], "helm", "deploy.helm")
    for i, release in enumerate(config["deploy"]["helm"]["releases"]):
        check_keys(release, "release", f"deploy.helm.releases[{i}]")
        for key in ("setValues", "setValueTemplates"):
            for k, v in (release.get(key) or {}).items():
                assert isinstance(v, str), f"{key}.{k}: Skaffold wants strings, got {v!r}"
    for name in ("portForward",):
        for i, pf in enumerate(config.get(name, [])):
            check_keys(pf, "portForward", f"portForward[{i}]")
    for i, profile in enumerate(config["profiles"]):
        where = f"profiles[{i}] ({profile['name']})"
        check_keys(profile, "profile", where)
        for j, patch in enumerate(profile.get("patches", [])):
            check_keys(patch, "patch", f"{where}.patches[{j}]")
        for j, pf in enumerate(profile.get("portForward", [])):
            check_keys(pf, "portForward", f"{where}.portForward[{j}]")
        for j, patch in enumerate(profile.get("patches", [])):
            for k, v in (patch["value"] if isinstance(patch.get("value"), dict) else {}).items():
                if patch["path"].endswith("/setValues"):
                    assert isinstance(v, str), f"{where}.patches[{j}]: {k}: strings only"


def test_artifacts_are_the_image_folders(config: dict[str, Any]) -> None:
    chart_values = values()
    artifacts = config["build"]["artifacts"]
    assert [a["image"] for a in artifacts] == list(ARTIFACTS)
    for artifact in artifacts:
        context, values_key = ARTIFACTS[artifact["image"]]
        assert artifact["context"] == context
        folder = ROOT / context
        assert folder.is_dir(), f"{context} does not exist"
        assert (folder / artifact["docker"].get("dockerfile", "Dockerfile")).is_file()
        assert (folder / "README.md").is_file(), f"{context}: one deployable, one README"
        # One name: the image, the artifact and the chart's default repository.
        assert get(chart_values, f"{values_key}.image.repository") == artifact["image"]
    # The stage script knows the same folders, in the same order.
    script = (ROOT / STAGE_SCRIPT).read_text()
    m = re.search(r"^ALL=\(([^)]*)\)", script, re.M)
    assert m, f"{STAGE_SCRIPT}: no ALL=(...) list"
    assert m.group(1).split() == [a["context"] for a in artifacts]


def test_hooks_stage_each_artifact_from_a_real_script(config: dict[str, Any]) -> None:
    for artifact in config["build"]["artifacts"]:
        (hook,) = artifact["hooks"]["before"]
        command = hook["command"]
        assert "dir" not in hook, "the hook runs from the repository root, where skaffold runs"
        assert command[0] == "bash", command
        script = ROOT / command[1]
        assert script.is_file(), f"{command[1]} does not exist"
        assert command[1] == STAGE_SCRIPT
        assert command[2:] == [artifact["context"]], "the hook stages the artifact's own folder"
        assert "after" not in artifact["hooks"]
    # docs and the file itself tell people to stage everything before a cached build.
    assert f"bash {STAGE_SCRIPT} --all" in SKAFFOLD.read_text()


def test_tag_policy_never_makes_latest(config: dict[str, Any]) -> None:
    # The chart fails on the tag "latest"; the sha256 tagger produces exactly that.
    assert "sha256" not in config["build"]["tagPolicy"]


def test_helm_release_is_the_chart(config: dict[str, Any]) -> None:
    (release,) = config["deploy"]["helm"]["releases"]
    chart_path = ROOT / release["chartPath"]
    assert (chart_path / "Chart.yaml").is_file()
    assert chart_path.resolve() == chart.chart_dir().resolve()
    chart_values = values()
    for key in release.get("setValues") or {}:
        assert has_key(chart_values, key), f"setValues.{key}: not a key of values.yaml"
    templates = release["setValueTemplates"]
    wanted = set()
    for image, (_, values_key) in ARTIFACTS.items():
        for field, leaf in FIELDS.items():
            key = f"{values_key}.image.{leaf}"
            wanted.add(key)
            assert has_key(chart_values, key), f"{key}: not a key of values.yaml"
            assert templates.get(key) == f"{{{{.{field}_{sanitize(image)}}}}}", key
    assert set(templates) == wanted


@pytest.mark.parametrize("digest", ["", SAMPLE_DIGEST], ids=["loaded-into-kind", "pushed"])
def test_image_fields_reach_the_containers(config: dict[str, Any], digest: str) -> None:
    """Filled in as Skaffold fills them, the fields decide every atelier container's image."""
    release = effective(config, "kind")["deploy"]["helm"]["releases"][0]
    images = {c["image"] for extra in RUNTIMES for c in containers(render(release, digest, extra))}
    ours = {i for i in images if i.split(":")[0] in ARTIFACTS}
    suffix = f"@{digest}" if digest else ""
    expected = {f"{image}:{SAMPLE_TAG}{suffix}" for image in ARTIFACTS}
    assert ours == expected, sorted(images)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_set_real_values_and_render(config: dict[str, Any], profile: str) -> None:
    eff = effective(config, profile)
    (release,) = eff["deploy"]["helm"]["releases"]
    chart_values = values()
    for key in release.get("setValues") or {}:
        assert has_key(chart_values, key), f"{profile}: setValues.{key} is not a values key"
    for f in release.get("valuesFiles") or []:
        assert (ROOT / f).is_file(), f"{profile}: values file {f} does not exist"
        extra = yaml.safe_load((ROOT / f).read_text()) or {}
        assert isinstance(extra, dict)
    serving_mode, monitoring_mode = PROFILES[profile]
    assert release["setValues"]["serving.mode"] == serving_mode
    assert release["setValues"]["monitoring.mode"] == monitoring_mode
    kinds = {o["kind"] for o in render(release)}
    if serving_mode == "raw":
        assert "Deployment" in kinds and "InferenceService" not in kinds
    else:
        assert "InferenceService" in kinds
    if monitoring_mode == "operator":
        assert "ServiceMonitor" in kinds or "PodMonitor" in kinds


def forwards(config: dict[str, Any], profile: str | None) -> list[dict[str, Any]]:
    return list(effective(config, profile).get("portForward") or [])


@pytest.mark.parametrize("profile", [None, *sorted(PROFILES)])
def test_port_forwards_name_rendered_services(config: dict[str, Any], profile: str | None) -> None:
    eff = effective(config, profile)
    (release,) = eff["deploy"]["helm"]["releases"]
    objects = render(release)
    services = {
        o["metadata"]["name"]: {p["port"] for p in o["spec"]["ports"]}
        for o in objects
        if o["kind"] == "Service"
    }
    isvcs = [o for o in objects if o["kind"] == "InferenceService"]
    release_label = get(values(), "monitoring.operator.releaseLabel")
    pfs = forwards(config, profile)
    assert pfs, f"{profile}: no port-forwards"
    local_ports = [pf["localPort"] for pf in pfs]
    assert len(set(local_ports)) == len(local_ports), f"{profile}: a local port is used twice"
    names = set()
    for pf in pfs:
        assert pf["resourceType"].lower() == "service"
        name, port, ns = pf["resourceName"], pf["port"], pf["namespace"]
        names.add(name)
        if ns == release["namespace"] and name in services:
            assert port in services[name], f"{name} has no port {port}: {services[name]}"
        elif isvcs and name == f"{isvcs[0]['metadata']['name']}-predictor":
            # KServe creates <InferenceService>-predictor (port 80), not the chart.
            assert ns == release["namespace"] and port == 80
        elif ns == "monitoring" and name == f"{release_label}-grafana":
            # kube-prometheus-stack installed as release <releaseLabel> in monitoring
            # (docs/kubernetes.md) names its Grafana Service <release>-grafana, port 80.
            assert port == 80
        else:
            pytest.fail(f"{profile}: port-forward {ns}/{name}:{port} matches no Service")
    # The predictor and Grafana are always forwarded; the predictor on the port atelier
    # loadtest and atelier send default to, the drift sidecar on its default too.
    assert any(n.endswith("-predictor") or n.endswith("-serving") for n in names)
    assert any(n.endswith("-grafana") for n in names)
    by_name = {pf["resourceName"]: pf["localPort"] for pf in pfs}
    serving = [v for k, v in by_name.items() if k.endswith(("-predictor", "-serving"))]
    assert serving == [int(DEFAULT_HOST.rsplit(":", 1)[1])]
    if any(k.endswith("-drift") for k in by_name):
        assert by_name[next(k for k in by_name if k.endswith("-drift"))] == int(
            DEFAULT_DRIFT_URL.rsplit(":", 1)[1]
        )


def test_usage_lines_name_the_file(config: dict[str, Any]) -> None:
    """The file is Skaffold.yaml, not skaffold.yaml: every command in it says -f."""
    for line in SKAFFOLD.read_text().splitlines():
        m = re.match(r"#\s+(skaffold \w+.*)", line)
        if m:
            args = shlex.split(m.group(1).split("#")[0])
            assert "-f" in args and args[args.index("-f") + 1] == "Skaffold.yaml", line
