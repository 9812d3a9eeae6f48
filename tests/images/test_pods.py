"""The chart's pods, run for real with `podman kube play`: training, serving, helm test, teardown.

The chart is rendered by `helm template` from charts/atelier with a values file, as a user
renders it, and its pods run on the images scripts/build-images.sh builds (the session's
``built_images``). What is proven:

2. Training: the training Job's pod (a Pod from the Job's template, with the training
   ConfigMap) trains the smoke config (training.config = training-job/configs/smoke.yaml) in
   its init container, and its main container archives the run into the model store, the
   chart's PersistentVolumeClaim (modelStore.type=pvc): the pod's containers exit 0 and the
   store holds version 1 (versions/1/ with the .mar, config.properties and model card) and
   its current copy (CURRENT.json, config/, model-store/ at the root).
3. Serving: the raw-mode Deployment (serving.mode=raw) on that claim serves version 1, through
   the pod's IP on the container ports the chart declares: Fashion-MNIST test images over raw
   PNG, KServe v1 and v2 get exactly the classes and probabilities (1e-5) of the published .mar
   run in this process. The chart's HTTP probes (the OIP front's ready and live routes) answer
   200 from the host. The
   drift sidecar ingests every record, is the reporter and reports over them. The metrics
   endpoints the chart's ServiceMonitors scrape (their port and path, resolved through the
   Services they select to the container ports) answer with the metrics.
4. The `helm test` pod (templates/tests/, annotation helm.sh/hook: test) classifies its image
   against the serving pod and exits 0.
5. `podman kube down` of every file played and the removal of the volumes leave no pod,
   container or volume of the run. The module fixture's finalizer does the same on failure.
6. The KServe runtime (serving.runtime=kserve): a second release (its name starts with the
   first's) renders the raw-mode Deployment with atelier's KServe runtime on the first
   release's claim (modelStore.pvc.existingClaim, training off), and its pod runs from the
   atelier-kserve image once the TorchServe pod is down: raw PNG and v2 get the published .mar's
   classes and probabilities, the rendered httpGet probes answer 200 (the model is ready),
   the monitor of job atelier-kserve scrapes the atelier_* series off the inference port, and
   the drift sidecar ingests every record the runtime spooled. (Section 5 runs last.)

Values (a user's choices, not adaptations): serving.mode=raw with one replica and autoscaling
off; drift.store.type=sqlite, since one replica needs no database server, while the bundled
PostgreSQL StatefulSet would need a pod and an image (docker.io/library/postgres) that cannot
be pulled here; drift.settings REPORT_EVERY_RECORDS=100 and REPORT_EVERY_SECONDS=1 so that a
report follows the test's traffic within seconds. Helm merges training.config into the chart's
default config, so the ConfigMap holds smoke.yaml's keys and the default's other keys
(optim.weight_decay, train.threads, train.time_budget_seconds...): checked key by key.

Adaptations of the rendered YAML, because kube play 4.3.1 cannot run it as rendered. Each is a
pure function below with a unit test; the chart is never changed for them:
- job_as_pod: kube play rejects a Job; its pod template becomes a Pod named after the Job.
- without_liveness_probes: kube play turns a livenessProbe into a podman healthcheck whose
  failures kill healthy containers. Readiness and startup probes are ignored by kube play and
  are left as rendered; the test sends their HTTP GETs itself.
- private_empty_dirs: kube play makes an emptyDir a volume named after it, shared by every
  pod using that name ("tmp" is in all three pods); each becomes <pod>-<volume>.
- with_service_alias: there is no cluster DNS. The test pod gets a hostAliases entry that
  maps its URL's host (the Service's DNS name) to the serving pod's IP; the URL stays as
  rendered, and the test checks that the Service's port is the container port it targets.
Outside the YAML: the claim is a named volume bound to a temp folder owned by the pod's
runAsUser/runAsGroup, since kube play ignores fsGroup (which makes a real volume writable).

Left on the host: the network podman-default-kube-network (/etc/containers/networks/) unless
it did not exist before and nothing else uses it, net.ipv4.ip_forward=1 and netavark's
iptables chains (podman sets them on first use; they hold no rule of this run's pods once
they are gone), and the images and layer cache under ATELIER_PODMAN_HOME.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import secrets
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import yaml

from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.tools.paths import project_file
from support.kube_play import (
    KUBE_NETWORK,
    Played,
    PodInfo,
    containers_named,
    create_bind_volume,
    kube_down,
    kube_play,
    logs,
    network_exists,
    network_in_use,
    pod_info,
    pod_ip,
    pods_named,
    remove_volume,
    volumes_named,
    wait_exited,
)
from support.pod_spec import container, env, volumes
from support.podman import BuiltImage, PodmanMissingError, podman, podman_env

pytestmark = pytest.mark.podman

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "atelier"
HELM = ROOT / ".tools" / "bin" / "helm"
SMOKE = project_file("training-job/configs/smoke.yaml")
NAMESPACE = "atelier"
MODEL = "fashion-mnist"
VERSION = "1"
N_IMAGES = 128  # raw PNG 16, v1 16, v2 96: more than the drift sidecar's min_rows (100)
KSERVE_IMAGES = 64  # the KServe runtime's pod: raw PNG 16, one v2 request of 48
TEST_HOOK = "helm.sh/hook"


# --------------------------------------------------------------------------- adaptations
# Pure functions: a rendered object in, a new object out (the input is never changed).


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Pod, or of a Deployment's or Job's pod template."""
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def job_as_pod(job: dict[str, Any]) -> dict[str, Any]:
    """kube play rejects a Job: its pod template as a Pod named after the Job."""
    template = copy.deepcopy(job["spec"]["template"])
    metadata = {
        "name": job["metadata"]["name"],
        "namespace": job["metadata"].get("namespace", "default"),
        "labels": template.get("metadata", {}).get("labels", {}),
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def without_liveness_probes(obj: dict[str, Any]) -> dict[str, Any]:
    """kube play makes a livenessProbe a healthcheck that kills healthy containers: drop it."""
    out = copy.deepcopy(obj)
    spec = pod_spec(out)
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        c.pop("livenessProbe", None)
    return out


def private_empty_dirs(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    """kube play shares an emptyDir by name between pods: rename each to <prefix>-<name>."""
    out = copy.deepcopy(obj)
    spec = pod_spec(out)
    renamed = {
        v["name"]: f"{prefix}-{v['name']}" for v in spec.get("volumes", []) if "emptyDir" in v
    }
    for v in spec.get("volumes", []):
        v["name"] = renamed.get(v["name"], v["name"])
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for m in c.get("volumeMounts", []):
            m["name"] = renamed.get(m["name"], m["name"])
    return out


def with_service_alias(pod: dict[str, Any], hostname: str, ip: str) -> dict[str, Any]:
    """No cluster DNS under kube play: resolve ``hostname`` (a Service's name) to ``ip``."""
    out = copy.deepcopy(pod)
    aliases = out["spec"].setdefault("hostAliases", [])
    aliases.append({"ip": ip, "hostnames": [hostname]})
    return out


# Unit tests of the adaptations (no podman needed).

_DEPLOYMENT: dict[str, Any] = {
    "kind": "Deployment",
    "metadata": {"name": "d"},
    "spec": {"template": {"spec": {
        "containers": [
            {"name": "a", "livenessProbe": {"httpGet": {}}, "readinessProbe": {"exec": {}},
             "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                              {"name": "store", "mountPath": "/s"}]},
            {"name": "b", "volumeMounts": [{"name": "tmp", "mountPath": "/x"}]},
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "store", "persistentVolumeClaim": {"claimName": "c"}}],
    }}},
}  # fmt: skip


def test_job_as_pod_keeps_the_template() -> None:
    job: dict[str, Any] = {
        "kind": "Job",
        "metadata": {"name": "train-1", "namespace": "ns"},
        "spec": {"backoffLimit": 2, "template": {
            "metadata": {"labels": {"app": "t"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c"}]},
        }},
    }  # fmt: skip
    pod = job_as_pod(job)
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "train-1"
    assert pod["metadata"]["labels"] == {"app": "t"}
    assert pod["spec"] == job["spec"]["template"]["spec"]
    pod["spec"]["containers"].append({"name": "d"})
    assert len(job["spec"]["template"]["spec"]["containers"]) == 1  # a copy


def test_only_liveness_probes_are_dropped() -> None:
    out = without_liveness_probes(_DEPLOYMENT)
    (a, _) = pod_spec(out)["containers"]
    assert "livenessProbe" not in a and a["readinessProbe"] == {"exec": {}}
    assert "livenessProbe" in pod_spec(_DEPLOYMENT)["containers"][0]


def test_empty_dirs_are_renamed_in_volumes_and_mounts() -> None:
    spec = pod_spec(private_empty_dirs(_DEPLOYMENT, "pod-1"))
    assert [v["name"] for v in spec["volumes"]] == ["pod-1-tmp", "store"]
    assert [m["name"] for c in spec["containers"] for m in c["volumeMounts"]] == [
        "pod-1-tmp", "store", "pod-1-tmp",
    ]  # fmt: skip
    assert pod_spec(_DEPLOYMENT)["volumes"][0]["name"] == "tmp"


def test_service_alias() -> None:
    pod = {"kind": "Pod", "spec": {"containers": []}}
    out = with_service_alias(pod, "svc.ns.svc", "10.89.0.7")
    assert out["spec"]["hostAliases"] == [{"ip": "10.89.0.7", "hostnames": ["svc.ns.svc"]}]
    assert "hostAliases" not in pod["spec"]


# --------------------------------------------------------------------------- render


@dataclass
class Render:
    release: str
    objects: list[dict[str, Any]]

    @property
    def fullname(self) -> str:
        return f"{self.release}-atelier"

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"the render has {len(found)} {kind} named {name}"
        return found[0]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]


def values(smoke: dict[str, Any]) -> dict[str, Any]:
    """What a user running this chart on one node without a Prometheus Operator sets."""
    return {
        "training": {"config": smoke},
        "modelStore": {"type": "pvc"},
        "serving": {"mode": "raw", "replicas": 1, "autoscaling": {"enabled": False}},
        "drift": {
            "store": {"type": "sqlite"},
            "settings": {"REPORT_EVERY_RECORDS": "100", "REPORT_EVERY_SECONDS": "1"},
        },
    }


@pytest.fixture(scope="module")
def podman_required() -> None:
    """No podman is a failure naming scripts/setup.sh, never a skip."""
    try:
        podman_env()
    except PodmanMissingError as exc:
        pytest.fail(str(exc))
    if not HELM.is_file():
        pytest.fail(f"{HELM.relative_to(ROOT)} missing: run `make setup` (scripts/setup.sh)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pods")


def helm_template(release: str, chosen: dict[str, Any], folder: Path) -> Render:
    """`helm template` of the chart with ``chosen`` as its values file."""
    values_file = folder / f"{release}-values.yaml"
    values_file.write_text(yaml.safe_dump(chosen))
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = subprocess.run(
        [str(HELM), "template", release, str(CHART), "--namespace", NAMESPACE,
         "-f", str(values_file)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"helm template failed:\n{proc.stderr}")
    return Render(release, [o for o in yaml.safe_load_all(proc.stdout) if o])


@pytest.fixture(scope="module")
def render(podman_required: None, folder: Path) -> Render:
    """`helm template` of the chart with the values file; a release name of its own per run,
    so every pod, claim and ConfigMap name (hence every podman name) is this run's."""
    release = f"podtest-{secrets.token_hex(3)}"
    return helm_template(release, values(yaml.safe_load(SMOKE.read_text())), folder)


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything the module starts, stopped in reverse order by ``close`` (idempotent)."""

    folder: Path
    release: str
    stack: ExitStack = field(default_factory=ExitStack)
    closed: bool = False

    def play(self, name: str, docs: list[dict[str, Any]], timeout: float = 600) -> Played:
        """kube play of ``docs``; its `kube down` is registered before it runs."""
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        self.stack.callback(kube_down, path)
        return kube_play(path, timeout=timeout)

    def volume(self, name: str) -> None:
        """Remove the volume ``name`` at close (after the pods using it are down)."""
        self.stack.callback(remove_volume, name)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stack.close()


@pytest.fixture(scope="module")
def run(render: Render, folder: Path) -> Iterator[Run]:
    the_run = Run(folder, render.release)
    network_was_there = network_exists(KUBE_NETWORK)

    def drop_network() -> None:
        # Only a network this run created, and only when no other container uses it.
        ours = not network_was_there and network_exists(KUBE_NETWORK)
        if ours and not network_in_use(KUBE_NETWORK):
            podman("network", "rm", KUBE_NETWORK)

    the_run.stack.callback(drop_network)
    try:
        yield the_run
    finally:
        the_run.close()


@pytest.fixture(scope="module")
def images_match(built_images: dict[str, BuiltImage], render: Render) -> None:
    """Every image the played pods name is one the session built, by the same reference."""
    built = {b.ref for b in built_images.values()}
    named = {
        c["image"]
        for o in render.objects
        if o["kind"] in ("Job", "Deployment", "Pod")
        for c in [*pod_spec(o).get("initContainers", []), *pod_spec(o)["containers"]]
    }
    assert named <= built, f"the chart names images that were not built: {named - built}"


# --------------------------------------------------------------------------- 2. training


@dataclass(frozen=True)
class Training:
    store: Path
    seconds: float
    pod: str
    archive_exit: int
    config: dict[str, Any]


@pytest.fixture(scope="module")
def training(render: Render, run: Run, images_match: None) -> Training:
    job = one(render.of_kind("Job"))
    pod = private_empty_dirs(without_liveness_probes(job_as_pod(job)), job["metadata"]["name"])
    spec = pod_spec(pod)
    config_map = render.get("ConfigMap", volumes(spec)["config"]["configMap"]["name"])
    claim = volumes(spec)["store"]["persistentVolumeClaim"]["claimName"]
    assert claim == f"{render.fullname}-model-store", claim

    # The claim: a folder the pod's user owns (kube play ignores fsGroup).
    store = run.folder / "model-store"
    store.mkdir()
    os.chown(store, spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"])
    run.volume(claim)
    create_bind_volume(claim, store)
    run.volume(config_map["metadata"]["name"])  # kube play keeps a ConfigMap's volume

    started = time.monotonic()
    played = run.play("training", [config_map, pod], timeout=900)
    name = pod["metadata"]["name"]
    if played.returncode != 0:
        pytest.fail(f"training pod failed: {played.output}\n--- train:\n{logs(f'{name}-train')}")
    info = pod_info(name)
    code = wait_exited(info.containers["archive"], timeout=600)
    seconds = time.monotonic() - started
    print(
        f"\ntraining pod: {seconds:.1f} s from kube play to the archive container's exit "
        f"(kube play, which waits for the train init container, took {played.seconds:.1f} s)"
    )
    if code != 0:
        pytest.fail(f"archive exited {code}:\n{logs(info.containers['archive'])}")
    config = yaml.safe_load(config_map["data"]["train.yaml"])
    return Training(store, seconds, name, code, config)


def one(items: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(items) == 1, [i["metadata"]["name"] for i in items]
    return items[0]


def test_training_config_is_the_smoke_config(training: Training) -> None:
    """Every key of smoke.yaml is in the ConfigMap with smoke.yaml's value (Helm adds the
    chart default's other keys: it merges maps)."""

    def leaves(d: dict[str, Any], path: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(leaves(v, f"{path}{k}.") if isinstance(v, dict) else {f"{path}{k}": v})
        return out

    smoke, rendered = leaves(yaml.safe_load(SMOKE.read_text())), leaves(training.config)
    assert {k: rendered.get(k) for k in smoke} == smoke


def test_training_pod_publishes_version_1(training: Training) -> None:
    store = training.store
    assert training.archive_exit == 0
    current = json.loads((store / "CURRENT.json").read_text())
    assert current["name"] == MODEL and current["version"] == VERSION
    version = store / "versions" / VERSION
    mar = version / "model-store" / f"{MODEL}.mar"
    assert mar.is_file() and (version / "config" / "config.properties").is_file()
    card = json.loads((version / "model_card.json").read_text())
    assert card["name"] == MODEL and card["version"] == VERSION
    # The root is a complete storage layout too: the current version's copy.
    assert (store / "model-store" / f"{MODEL}.mar").read_bytes() == mar.read_bytes()
    assert (store / "config" / "config.properties").is_file()
    # Nothing half-written: no staging folder is left behind.
    assert sorted(p.name for p in (store / "versions").iterdir()) == [VERSION]
    with zipfile.ZipFile(mar) as z:
        metrics = json.loads(z.read("metrics.json"))
    assert metrics["test_accuracy"] >= training.config["gate"]["min_accuracy"]


# --------------------------------------------------------------------------- 3. serving


@dataclass
class Serving:
    pod: PodInfo
    ip: str
    ports: dict[str, int]  # container port name -> number, both containers
    cold_start_s: float
    deployment: dict[str, Any]
    sent: list[int] = field(default_factory=lambda: [0])

    def url(self, port_name: str, path: str) -> str:
        return f"http://{self.ip}:{self.ports[port_name]}{path}"


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def published(training: Training, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The published .mar's model, run in this process: what the pod must answer."""
    out = tmp_path_factory.mktemp("mar")
    mar = training.store / "versions" / VERSION / "model-store" / f"{MODEL}.mar"
    with zipfile.ZipFile(mar) as z:
        z.extractall(out)
    return Classifier.from_dir(out, version=VERSION)


@pytest.fixture(scope="module")
def serving(
    render: Render, run: Run, training: Training, test_images: tuple[np.ndarray, np.ndarray]
) -> Serving:
    deployment = render.get("Deployment", f"{render.fullname}-serving")
    return play_serving(run, "serving", deployment, render.fullname, test_images)


def play_serving(
    run: Run,
    name: str,
    deployment: dict[str, Any],
    fullname: str,
    test_images: tuple[np.ndarray, np.ndarray],
) -> Serving:
    """kube play of a rendered serving Deployment on the training pod's claim, until the pod
    answers a PNG with 200."""
    adapted = private_empty_dirs(
        without_liveness_probes(deployment), deployment["metadata"]["name"]
    )
    spec = pod_spec(adapted)
    assert volumes(spec)["store"]["persistentVolumeClaim"]["claimName"] == (
        f"{fullname}-model-store"
    )  # the claim the training pod wrote
    ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}

    started = time.monotonic()
    played = run.play(name, [adapted], timeout=300)
    assert played.returncode == 0, played.output
    (pod_id,) = played.pod_ids
    info = pod_info(pod_id)
    ip = pod_ip(info)
    png = encode_png(test_images[0][0])
    url = f"http://{ip}:{ports['http']}/predictions/{MODEL}"

    def answers() -> bool:
        for name, cid in info.containers.items():
            state = podman("inspect", cid, "--format", "{{.State.Status}}").stdout.strip()
            if state != "running":
                raise AssertionError(f"container {name} is {state}:\n{logs(cid)}")
        try:
            r = requests.post(url, data=png, headers={"Content-Type": "image/png"}, timeout=10)
        except requests.RequestException:
            return False
        return r.status_code == 200

    wait_for(answers, timeout=240, what=f"a 200 from {url}")
    cold = time.monotonic() - started
    print(f"\n{name} pod: cold start {cold:.1f} s from kube play to the first 200 on /predictions")
    serving = Serving(info, ip, ports, cold, deployment)
    serving.sent[0] += 1
    return serving


def test_raw_png_serves_the_published_version(
    serving: Serving, test_images: tuple[np.ndarray, np.ndarray], published: Classifier
) -> None:
    x, _ = test_images
    expected = published.predict_proba(x[:16])
    for i in range(16):
        r = requests.post(
            serving.url("http", f"/predictions/{MODEL}"), data=encode_png(x[i]),
            headers={"Content-Type": "image/png", "X-Request-Id": f"raw-{i}"}, timeout=30,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == VERSION and body["request_id"] == f"raw-{i}"
        assert body["class_id"] == int(expected[i].argmax())
        assert body["label"] == published.spec.class_names[body["class_id"]]
        assert body["confidence"] == pytest.approx(float(expected[i].max()), abs=1e-5)
    serving.sent[0] += 16


def test_kserve_v1(
    serving: Serving, test_images: tuple[np.ndarray, np.ndarray], published: Classifier
) -> None:
    x, _ = test_images
    batch = x[16:32]
    instances = [{"b64": base64.b64encode(encode_png(img)).decode()} for img in batch]
    r = requests.post(
        serving.url("http", f"/v1/models/{MODEL}:predict"), json={"instances": instances},
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    expected = published.predict_proba(batch)
    assert [p["class_id"] for p in preds] == list(expected.argmax(axis=1))
    for p, e in zip(preds, expected, strict=True):
        assert p["confidence"] == pytest.approx(float(e.max()), abs=1e-5)
    serving.sent[0] += len(batch)


def test_kserve_v2(
    serving: Serving, test_images: tuple[np.ndarray, np.ndarray], published: Classifier
) -> None:
    x, _ = test_images
    for start in range(32, N_IMAGES, 32):
        batch = x[start : start + 32]
        tensor = {"name": "x", "shape": list(batch.shape), "datatype": "UINT8",
                  "data": batch.reshape(-1).tolist()}  # fmt: skip
        r = requests.post(
            serving.url("http", f"/v2/models/{MODEL}/infer"),
            json={"id": f"v2-{start}", "inputs": [tensor]}, timeout=60,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == MODEL and body["model_version"] == VERSION
        assert body["id"] == f"v2-{start}"
        out = {o["name"]: o for o in body["outputs"]}
        probs = np.array(out["probabilities"]["data"]).reshape(len(batch), -1)
        np.testing.assert_allclose(probs, published.predict_proba(batch), atol=1e-5)
        serving.sent[0] += len(batch)


def test_probes_say_ready_and_live(serving: Serving) -> None:
    """The chart's startup, readiness and liveness probes, as rendered: HTTP GETs on the OIP
    front's port, which answer 200 for the served model (and 404 for another version)."""
    spec = container(pod_spec(serving.deployment), "torchserve")
    ports = {p["containerPort"]: p["name"] for p in spec["ports"]}
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = spec[name]["httpGet"]
        r = requests.get(serving.url(ports[get["port"]], get["path"]), timeout=10)
        assert r.status_code == 200, (name, r.text)
    ready = spec["readinessProbe"]["httpGet"]["path"]
    assert ready == f"/v2/models/{MODEL}/ready"
    other = serving.url("http", f"/v2/models/{MODEL}/versions/999/ready")
    assert requests.get(other, timeout=10).status_code == 404


def drift_metric(serving: Serving, name: str) -> float:
    """One sample of a drift gauge or counter without labels (0 when absent)."""
    text = requests.get(serving.url("drift", "/metrics"), timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"{name} ") or line.startswith(f"{name}{{}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_drift_sidecar_ingests_and_reports(serving: Serving) -> None:
    sent = serving.sent[0]
    assert sent >= N_IMAGES
    wait_for(
        lambda: drift_metric(serving, "atelier_drift_records_ingested_total") >= sent,
        timeout=60, what=f"{sent} ingested records",
    )  # fmt: skip
    ready = requests.get(serving.url("drift", "/readyz"), timeout=10)
    assert ready.status_code == 200 and f"version {VERSION}" in ready.json()["reason"]
    found: dict[str, Any] = {}

    def reported() -> bool:
        body = requests.get(serving.url("drift", "/reports"), timeout=10).json()
        status = body["status"].get("last_1000")
        if status and status["detail"].get("rows", 0) >= N_IMAGES:
            found.update(body)
            return True
        return False

    wait_for(reported, timeout=90, what=f"a drift report over {N_IMAGES} records")
    # The pod's name reaches the sidecar (fieldRef metadata.name): it is the reporter.
    assert found["reporter"] == serving.pod.name
    assert found["model_name"] == MODEL and found["model_version"] == VERSION
    assert found["reports"], found
    assert drift_metric(serving, "atelier_drift_reporter") == 1


def test_metrics_ports_answer_as_the_monitors_expect(serving: Serving, render: Render) -> None:
    """Each ServiceMonitor's endpoint (port name, path), resolved through the Service it
    selects to a container port of the serving pod, answers 200 with its metrics."""
    scraped = scrape_as_the_monitors_do(serving, render)
    assert "ts_inference_requests_total" in scraped["atelier-torchserve"]
    assert "atelier_drift_records_ingested_total" in scraped["atelier-drift"]
    assert set(scraped) == {"atelier-torchserve", "atelier-drift"}


def scrape_as_the_monitors_do(serving: Serving, render: Render) -> dict[str, str]:
    """job -> the text each monitor's endpoint answers (200, text/plain), found as Prometheus
    finds it: the port name, through the Service the monitor selects, to a container port."""
    containers = pod_spec(serving.deployment)["containers"]
    scraped: dict[str, str] = {}
    for monitor in render.of_kind("ServiceMonitor") + render.of_kind("PodMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        job = next(r["replacement"] for e in monitor_endpoints(monitor)
                   for r in e.get("relabelings", []) if r.get("targetLabel") == "job")  # fmt: skip
        for endpoint in monitor_endpoints(monitor):
            if monitor["kind"] == "PodMonitor":
                assert matches(serving.deployment["spec"]["template"], selector)
                port = container_port(containers, endpoint["port"])
            else:
                (svc,) = [s for s in render.of_kind("Service") if matches(s, selector)]
                assert matches(serving.deployment["spec"]["template"], svc["spec"]["selector"])
                (svc_port,) = [p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"]]
                port = container_port(containers, svc_port["targetPort"])
            r = requests.get(f"http://{serving.ip}:{port}{endpoint['path']}", timeout=10)
            assert r.status_code == 200, (monitor["metadata"]["name"], r.status_code)
            assert r.headers["Content-Type"].startswith("text/plain")
            scraped[job] = r.text
    return scraped


def matches(obj: dict[str, Any], selector: dict[str, str]) -> bool:
    """Do the object's labels match a matchLabels selector?"""
    labels = obj["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in selector.items())


def monitor_endpoints(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    spec = monitor["spec"]
    return spec.get("endpoints") or spec.get("podMetricsEndpoints") or []


def container_port(containers: list[dict[str, Any]], port: str | int) -> int:
    """A container port by name, or by number (which a container must declare)."""
    declared = [p for c in containers for p in c.get("ports", [])]
    key = "name" if isinstance(port, str) else "containerPort"
    (found,) = [p["containerPort"] for p in declared if p.get(key) == port]
    return int(found)


# --------------------------------------------------------------------------- 4. helm test


def test_helm_test_pod_passes(serving: Serving, render: Render, run: Run) -> None:
    (test_pod,) = [
        o for o in render.of_kind("Pod")
        if o["metadata"].get("annotations", {}).get(TEST_HOOK) == "test"
    ]  # fmt: skip
    url = urlsplit(str(env(container(test_pod["spec"], "classify"))["URL"]))
    assert url.hostname and url.port
    # The Service the URL names sends its port to the container port of the same number, so
    # aliasing the Service's name to the pod's IP keeps the request as the cluster makes it.
    service_name = url.hostname.split(".")[0]
    (svc_port,) = [p for p in render.get("Service", service_name)["spec"]["ports"]
                   if p["port"] == url.port]  # fmt: skip
    assert container_port(pod_spec(serving.deployment)["containers"], svc_port["targetPort"]) == (
        url.port
    )
    name = test_pod["metadata"]["name"]
    adapted = private_empty_dirs(with_service_alias(test_pod, url.hostname, serving.ip), name)
    played = run.play("helm-test", [adapted], timeout=120)
    assert played.returncode == 0, played.output
    classify = pod_info(name).containers["classify"]
    code = wait_exited(classify, timeout=120)
    output = logs(classify)
    print(f"\nhelm test pod: {output}")
    assert code == 0, output
    assert f"POST {url.geturl()} -> 200" in output


# --------------------------------------------------------------------------- 6. KServe runtime


def kserve_values(smoke: dict[str, Any], claim: str) -> dict[str, Any]:
    """A second release that serves the first one's store with atelier's KServe runtime: raw
    mode, serving.runtime=kserve, the existing claim, no training Job of its own."""
    chosen = values(smoke)
    chosen["training"] = {"enabled": False}
    chosen["modelStore"] = {"type": "pvc", "pvc": {"create": False, "existingClaim": claim}}
    chosen["serving"]["runtime"] = "kserve"
    return chosen


@pytest.fixture(scope="module")
def kserve_render(render: Render, folder: Path) -> Render:
    """The KServe runtime's release: its name starts with the first release's, so teardown's
    checks cover it."""
    claim = f"{render.fullname}-model-store"
    smoke = yaml.safe_load(SMOKE.read_text())
    return helm_template(f"{render.release}-ks", kserve_values(smoke, claim), folder)


@pytest.fixture(scope="module")
def kserve_serving(
    kserve_render: Render,
    render: Render,
    run: Run,
    training: Training,
    built_images: dict[str, BuiltImage],
    test_images: tuple[np.ndarray, np.ndarray],
) -> Serving:
    """The raw-mode Deployment with serving.runtime=kserve, played on the training pod's claim
    (the store version 1 was published into). The TorchServe pod goes down first: kube play
    4.3.1 publishes every containerPort on the host, so two serving pods cannot both hold the
    inference and drift ports (the TorchServe tests above are done with it)."""
    deployment = kserve_render.get("Deployment", f"{kserve_render.fullname}-serving")
    images = {c["image"] for c in pod_spec(deployment)["containers"]}
    assert images <= {b.ref for b in built_images.values()}, images
    assert "atelier-kserve:" in " ".join(images)
    kube_down(run.folder / "serving.yaml")
    return play_serving(run, "kserve-serving", deployment, render.fullname, test_images)


def test_kserve_runtime_serves_the_published_version(
    kserve_serving: Serving, test_images: tuple[np.ndarray, np.ndarray], published: Classifier
) -> None:
    """Real test images over raw PNG and v2 (UINT8 tensors) get the .mar's classes and
    probabilities (1e-5), as on TorchServe."""
    x, _ = test_images
    expected = published.predict_proba(x[:KSERVE_IMAGES])
    for i in range(16):
        r = requests.post(
            kserve_serving.url("http", f"/predictions/{MODEL}"), data=encode_png(x[i]),
            headers={"Content-Type": "image/png", "X-Request-Id": f"ks-raw-{i}"}, timeout=30,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == VERSION and body["request_id"] == f"ks-raw-{i}"
        assert body["class_id"] == int(expected[i].argmax())
        assert body["confidence"] == pytest.approx(float(expected[i].max()), abs=1e-5)
    kserve_serving.sent[0] += 16
    batch = x[16:KSERVE_IMAGES]
    tensor = {"name": "x", "shape": list(batch.shape), "datatype": "UINT8",
              "data": batch.reshape(-1).tolist()}  # fmt: skip
    r = requests.post(
        kserve_serving.url("http", f"/v2/models/{MODEL}/infer"),
        json={"id": "ks-v2", "inputs": [tensor]}, timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (MODEL, VERSION, "ks-v2")
    out = {o["name"]: o for o in body["outputs"]}
    probs = np.array(out["probabilities"]["data"]).reshape(len(batch), -1)
    np.testing.assert_allclose(probs, expected[16:], atol=1e-5)
    kserve_serving.sent[0] += len(batch)


def test_kserve_runtime_probes_pass(kserve_serving: Serving) -> None:
    """kube play ignores probes: the rendered httpGet probes, sent to the pod as the kubelet
    sends them, answer 200 (startup and readiness: the model is ready)."""
    c = container(pod_spec(kserve_serving.deployment), "kserve")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        r = requests.get(f"http://{kserve_serving.ip}:{get['port']}{get['path']}", timeout=10)
        assert r.status_code == 200, (probe, r.status_code, r.text)
    ready = c["readinessProbe"]["httpGet"]
    r = requests.get(f"http://{kserve_serving.ip}:{ready['port']}{ready['path']}", timeout=10)
    assert r.json() == {"name": MODEL, "ready": True}


def test_kserve_runtime_metrics_as_the_monitors_scrape(
    kserve_serving: Serving, kserve_render: Render
) -> None:
    """The ServiceMonitor of job atelier-kserve reaches /metrics on the inference port, with the
    atelier_* series of the requests just served."""
    scraped = scrape_as_the_monitors_do(kserve_serving, kserve_render)
    assert set(scraped) == {"atelier-kserve", "atelier-drift"}
    text = scraped["atelier-kserve"]
    # raw: the fixture's first PNG, then the 16 of the test above; v2: one request.
    for series in ('atelier_requests_total{code="200",model_name="fashion-mnist",'
                   f'model_version="{VERSION}",protocol="raw"}} 17.0',
                   'atelier_requests_total{code="200",model_name="fashion-mnist",'
                   f'model_version="{VERSION}",protocol="v2"}} 1.0'):  # fmt: skip
        assert series in text, text[:2000]
    assert "atelier_handler_seconds_bucket{" in text and "atelier_batch_size_bucket{" in text


def test_kserve_runtime_drift_sidecar_ingests_the_spool(kserve_serving: Serving) -> None:
    sent = kserve_serving.sent[0]
    assert sent >= KSERVE_IMAGES
    wait_for(
        lambda: drift_metric(kserve_serving, "atelier_drift_records_ingested_total") >= sent,
        timeout=60, what=f"{sent} ingested records",
    )  # fmt: skip
    ready = requests.get(kserve_serving.url("drift", "/readyz"), timeout=10)
    assert ready.status_code == 200 and f"version {VERSION}" in ready.json()["reason"]


# --------------------------------------------------------------------------- 5. teardown


def test_teardown_leaves_nothing_of_the_run(run: Run, render: Render, training: Training) -> None:
    """kube down of every played file and the volume removals (what the fixture's finalizer
    also runs on failure) leave no pod, container or volume named after this release."""
    run.close()
    prefix = render.release
    assert pods_named(prefix) == []
    assert containers_named(prefix) == []
    assert volumes_named(prefix) == []
    # The claim's data is the temp folder's: the store outlives the volume, as a PV would.
    assert (training.store / "CURRENT.json").is_file()
