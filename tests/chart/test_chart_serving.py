"""What the chart's serving, training, ingress, network and security objects say.

- The drift sidecar is a second container of the predictor pod (KServe) and of the Deployment
  (raw), sharing the feature spool through an emptyDir with TorchServe.
- The ServingRuntime declares v1 and v2, which the OIP front in front of TorchServe answers
  on the inference port (TorchServe itself on 127.0.0.1); readiness is the front's model
  ready route (a READY worker), never /ping; raw mode runs the same container.
- storageUri points at the served version; the training Job trains, gates and archives.
- The Ingress routes only the inference paths to the inference port; the NetworkPolicies let
  inference in from the ingress controller, metrics from Prometheus, drift from Grafana and
  Prometheus.
- Every pod container is non-root, read-only, without capabilities, with seccomp, requests and
  limits; images default to the appVersion and take digests; NOTES prints the commands.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from atelier.tools.chart import chart_dir, helm_notes, rendered
from support.pod_spec import mounts

pytestmark = pytest.mark.chart

APP_VERSION = yaml.safe_load((chart_dir() / "Chart.yaml").read_text())["appVersion"]
SCENARIOS = ["default", "raw-bundled", "minimal", "everything"]
EXTRA = [
    ("serving.mode=raw", "serving.autoscaling.raw.mode=keda"),
    ("serving.kserve.deploymentMode=Knative",),
    (
        "modelStore.type=objectStore",
        "modelStore.objectStore.uri=s3://models/atelier",
        "modelStore.objectStore.credentialsSecret=s3-credentials",
        "serving.modelVersion=3",
    ),
    (
        "serving.mode=raw",
        "modelStore.type=objectStore",
        "modelStore.objectStore.uri=s3://models/atelier",
        "serving.modelVersion=3",
    ),
    ("training.cronJob.enabled=true", "training.imageFolder.enabled=true",
     "training.imageFolder.claimName=images", "ingress.enabled=true"),
]  # fmt: skip


def of_kind(objects: tuple[Any, ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: tuple[Any, ...], kind: str) -> dict[str, Any]:
    (found,) = of_kind(objects, kind)
    return found


def predictor(objects: tuple[Any, ...]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "InferenceService")["spec"]["predictor"]
    return spec


def raw_pod(objects: tuple[Any, ...]) -> dict[str, Any]:
    (dep,) = [
        o for o in of_kind(objects, "Deployment") if o["metadata"]["name"].endswith("serving")
    ]
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# --------------------------------------------------------------------------- drift sidecar


def check_spool_shared(torchserve: dict[str, Any], drift: dict[str, Any], volumes: list) -> None:
    spool = env(torchserve)["ATELIER_SPOOL_DIR"]
    assert env(drift)["ATELIER_DRIFT_SPOOL_DIR"] == spool
    assert mounts(torchserve)[spool] == mounts(drift)[spool] == "spool"
    assert {v["name"]: v for v in volumes}["spool"].get("emptyDir") is not None
    assert mounts(drift)["/mnt/store"] == "store"
    assert env(drift)["ATELIER_DRIFT_STORE"] == "/mnt/store"


def test_drift_sidecar_in_the_kserve_predictor() -> None:
    objects = rendered()
    spec = predictor(objects)
    (drift,) = spec["containers"]
    assert drift["name"] == "drift"
    assert drift["image"] == f"atelier-drift:{APP_VERSION}"
    # predictor.model is merged into the runtime's kserve-container, which gets the spool env.
    runtime_container = one(objects, "ServingRuntime")["spec"]["containers"][0]
    merged = {**runtime_container, "volumeMounts": spec["model"]["volumeMounts"]}
    check_spool_shared(merged, drift, spec["volumes"])
    store = {v["name"]: v for v in spec["volumes"]}["store"]
    assert store["persistentVolumeClaim"] == {"claimName": "atelier-model-store", "readOnly": True}
    # Readiness is /healthz: a sidecar with no reference yet must not hold the pod back.
    assert drift["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_drift_sidecar_in_the_raw_deployment() -> None:
    pod = raw_pod(rendered("serving.mode=raw"))
    torchserve, drift = pod["containers"]
    assert (torchserve["name"], drift["name"]) == ("torchserve", "drift")
    check_spool_shared(torchserve, drift, pod["volumes"])


def test_no_drift_means_no_spool() -> None:
    objects = rendered("drift.enabled=false")
    spec = predictor(objects)
    assert "containers" not in spec
    assert "ATELIER_SPOOL_DIR" not in env(one(objects, "ServingRuntime")["spec"]["containers"][0])
    assert not [o for o in objects if o["metadata"]["name"] == "atelier-drift"]


# --------------------------------------------------------------------------- runtime and probes


def test_serving_runtime_protocols_ports_and_probes() -> None:
    runtime = one(rendered(), "ServingRuntime")
    assert runtime["spec"]["protocolVersions"] == ["v1", "v2"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    e = env(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # The OIP front listens on the inference port and launches TorchServe behind it, whose
    # inference and management APIs stay on 127.0.0.1 (the front reads both from TS_*).
    command = container["command"]
    assert command[:5] == ["tini", "--", "python", "-m", "atelier.serving.oip_front"]
    front, launched = command[5 : command.index("--launch")], command[command.index("--launch") :]
    assert front == ["--host", "0.0.0.0", "--port", str(ports["http"]), "--store", "/mnt/models",
                     "--model-name", "fashion-mnist"]  # fmt: skip
    assert launched[:7] == ["--launch", "--", "nice", "-n", "5", "torchserve", "--start"]
    assert "/mnt/models/config/config.properties" in launched
    assert e["TS_INFERENCE_ADDRESS"] == "http://127.0.0.1:8085"
    assert e["TS_METRICS_ADDRESS"] == f"http://0.0.0.0:{ports['metrics']}"
    assert e["TS_MANAGEMENT_ADDRESS"].startswith("http://127.0.0.1:")  # never exposed
    ready = {"path": "/v2/models/fashion-mnist/ready", "port": ports["http"]}
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == ready
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/v2/health/live",
        "port": ports["http"],
    }
    isvc = one(rendered(), "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    fmt = runtime["spec"]["supportedModelFormats"][0]["name"]
    assert isvc["spec"]["predictor"]["model"]["modelFormat"]["name"] == fmt


def test_raw_mode_runs_the_same_container() -> None:
    assert not of_kind(rendered("serving.mode=raw"), "ServingRuntime")
    kserve = one(rendered(), "ServingRuntime")["spec"]["containers"][0]
    raw = raw_pod(rendered("serving.mode=raw"))["containers"][0]
    for key in ("image", "command", "env", "ports", "startupProbe", "readinessProbe",
                "livenessProbe", "resources", "securityContext"):  # fmt: skip
        assert raw[key] == kserve[key], key
    assert mounts(raw)["/mnt/models"] == "store"  # the claim, the same volume the sidecar reads
    claims = [
        v for v in raw_pod(rendered("serving.mode=raw"))["volumes"] if "persistentVolumeClaim" in v
    ]
    assert len(claims) == 1


def test_knative_declares_one_port_and_aggregates_metrics() -> None:
    objects = rendered("serving.kserve.deploymentMode=Knative")
    isvc = one(objects, "InferenceService")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Knative"
    assert annotations["serving.kserve.io/enable-metric-aggregation"] == "true"
    assert "serving.kserve.io/autoscalerClass" not in annotations
    runtime = one(objects, "ServingRuntime")["spec"]["containers"][0]
    assert [p["name"] for p in runtime["ports"]] == ["http1"]
    assert "ports" not in isvc["spec"]["predictor"]["containers"][0]
    assert one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "aggr-metric"


# --------------------------------------------------------------------------- model store


@pytest.mark.parametrize(
    ("args", "uri"),
    [
        ((), "pvc://atelier-model-store"),
        (("serving.modelVersion=3",), "pvc://atelier-model-store/versions/3"),
        (
            ("modelStore.pvc.create=false", "modelStore.pvc.existingClaim=models",
             "serving.modelVersion=7"),
            "pvc://models/versions/7",
        ),
        (
            ("modelStore.type=objectStore", "modelStore.objectStore.uri=s3://models/atelier/",
             "serving.modelVersion=3"),
            "s3://models/atelier/versions/3",
        ),
    ],
)  # fmt: skip
def test_storage_uri_points_at_the_served_version(args: tuple[str, ...], uri: str) -> None:
    assert predictor(rendered(*args))["model"]["storageUri"] == uri


def test_raw_mode_mounts_the_served_version() -> None:
    pod = raw_pod(rendered("serving.mode=raw", "serving.modelVersion=3"))
    (model,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/mnt/models"]
    assert model == {"name": "store", "mountPath": "/mnt/models", "readOnly": True,
                     "subPath": "versions/3"}  # fmt: skip


def test_object_store_serving_fetches_the_version() -> None:
    objects = rendered(*EXTRA[3])
    pod = raw_pod(objects)
    fetch = {c["name"]: c for c in pod["initContainers"]}
    assert fetch["fetch-model"]["args"][:3] == [
        "copy",
        "store:models/atelier/versions/3",
        "/mnt/models",
    ]
    assert "versions/3/model-store/**" in fetch["fetch-reference"]["args"]
    sa = [o for o in rendered(*EXTRA[2]) if o["kind"] == "ServiceAccount"
          and o["metadata"]["name"] == "atelier-serving"]  # fmt: skip
    assert sa[0]["secrets"] == [{"name": "s3-credentials"}]


def test_model_store_claim_is_kept_on_uninstall() -> None:
    pvc = one(rendered(), "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not of_kind(rendered(values_file="minimal"), "PersistentVolumeClaim")


# --------------------------------------------------------------------------- training


def test_training_job_trains_gates_and_archives() -> None:
    job = one(rendered(), "Job")
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (2, 3600)
    assert "ttlSecondsAfterFinished" not in spec
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and 4 in rule["onExitCodes"]["values"]
    pod = spec["template"]["spec"]
    (train,) = pod["initContainers"]
    (archive,) = pod["containers"]
    assert train["args"][:3] == ["train", "--config", "/etc/atelier/train.yaml"]
    assert archive["args"] == ["archive", "/work/run", "--store", "/mnt/store",
                               "--name", "fashion-mnist"]  # fmt: skip
    assert train["resources"]["limits"]["cpu"] == "2"
    (cm,) = [o for o in rendered() if o["metadata"]["name"] == "atelier-training-config"]
    config = yaml.safe_load(cm["data"]["train.yaml"])
    assert config["gate"]["min_accuracy"] == 0.92
    assert config["name"] == "fashion-mnist"


def test_training_options() -> None:
    objects = rendered(
        *EXTRA[4], "training.set={train.epochs=1}", "training.ttlSecondsAfterFinished=600"
    )
    job = one(objects, "Job")
    train = job["spec"]["template"]["spec"]["initContainers"][0]
    assert train["args"][5:] == ["--set", "data.source=folder", "--set", "data.path=/data",
                                 "--set", "train.epochs=1"]  # fmt: skip
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    cron = one(objects, "CronJob")
    assert cron["spec"]["jobTemplate"]["spec"]["template"] == job["spec"]["template"]
    assert len(cron["metadata"]["name"]) <= 52


def test_training_job_name_follows_its_config() -> None:
    a = one(rendered(), "Job")["metadata"]["name"]
    b = one(rendered("training.config.train.epochs=1"), "Job")["metadata"]["name"]
    c = one(rendered("serving.replicas=5"), "Job")["metadata"]["name"]
    assert a != b  # a changed pod template is a new Job (Job templates are immutable)
    assert a == c  # serving changes leave the finished Job alone


def test_object_store_training_publishes_the_version_first() -> None:
    pod = one(rendered(*EXTRA[2]), "Job")["spec"]["template"]["spec"]
    order = [c["name"] for c in pod["initContainers"]] + [c["name"] for c in pod["containers"]]
    assert order == ["fetch-store", "train", "archive", "publish-version", "publish-current"]
    init = {c["name"]: c for c in pod["initContainers"]}
    assert "--immutable" in init["publish-version"]["args"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]


# --------------------------------------------------------------------------- ingress, network


@pytest.mark.parametrize(
    ("args", "service", "port"),
    [((), "atelier-predictor", 80), (("serving.mode=raw",), "atelier-serving", 8080)],
)
def test_ingress_routes_only_inference(args: tuple[str, ...], service: str, port: int) -> None:
    objects = rendered("ingress.enabled=true", "ingress.className=traefik", *args)
    ingress = one(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    (rule,) = ingress["spec"]["rules"]
    paths = rule["http"]["paths"]
    assert [p["path"] for p in paths] == ["/predictions", "/v1", "/v2"]
    for p in paths:
        assert p["pathType"] == "Prefix"
        assert p["backend"]["service"] == {"name": service, "port": {"number": port}}
    if args:  # raw: the Service's port 8080 is TorchServe's inference port, not metrics
        svc = next(s for s in of_kind(objects, "Service") if s["metadata"]["name"] == service)
        by_port = {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]}
        assert by_port[port] == "http"


def test_network_policies() -> None:
    objects = rendered()
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(objects, "NetworkPolicy")}
    serving = policies["atelier-serving"]
    by_port = {r["ports"][0]["port"]: r["from"] for r in serving["ingress"]}
    assert set(by_port) == {8080, 8082, 8095}  # never the management port (8081)
    ingress_ns = {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    assert by_port[8080][0]["namespaceSelector"] == ingress_ns
    apps = [f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
            for f in by_port[8082]]  # fmt: skip
    assert apps == ["prometheus"]
    apps = [f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
            for f in by_port[8095]]  # fmt: skip
    assert apps == ["prometheus", "grafana"]
    deny = policies["atelier-deny-ingress"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    # bundled: the bundled Prometheus and Grafana pods, by their labels
    bundled = {p["metadata"]["name"]: p["spec"] for p in
               of_kind(rendered(values_file="raw-bundled"), "NetworkPolicy")}  # fmt: skip
    rules = {r["ports"][0]["port"]: r["from"] for r in bundled["atelier-serving"]["ingress"]}
    components = [
        f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in rules[8095]
    ]
    assert components == ["prometheus", "grafana"]


# --------------------------------------------------------------------------- pods and images


def pod_specs(objects: tuple[Any, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        name = f"{o['kind']}/{o['metadata']['name']}"
        kind = o["kind"]
        if kind in ("Deployment", "StatefulSet", "Job"):
            yield name, o["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield name, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield name, o["spec"]
        elif kind == "InferenceService":
            yield name, o["spec"]["predictor"]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])
    if "model" in spec:
        yield spec["model"]


def all_renders() -> Iterator[tuple[str, tuple[Any, ...]]]:
    for scenario in SCENARIOS:
        yield scenario, rendered(values_file=scenario)
    for args in EXTRA:
        yield " ".join(args), rendered(*args)


def test_every_pod_container_is_locked_down() -> None:
    for label, objects in all_renders():
        runtimes = [c for r in of_kind(objects, "ServingRuntime") for c in r["spec"]["containers"]]
        for name, spec in pod_specs(objects):
            pod_sc = spec["securityContext"]
            assert pod_sc["runAsNonRoot"] is True, (label, name)
            # The bundled PostgreSQL runs as the official image's postgres user (999).
            if name.endswith("-postgresql"):
                assert pod_sc["runAsUser"] == 999, (label, name)
            else:
                assert pod_sc["runAsUser"] >= 10000, (label, name)
            assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, (label, name)
            token = spec.get("automountServiceAccountToken")
            assert token is False or name.endswith("-prometheus"), (label, name)
            for c in [*containers(spec), *(runtimes if "model" in spec else [])]:
                where = (label, name, c.get("name", "model"))
                sc = c["securityContext"]
                assert sc["runAsNonRoot"] is True, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
                res = c["resources"]
                assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(
                    res["limits"]
                ), where


def test_one_service_account_per_component() -> None:
    objects = rendered(values_file="raw-bundled")
    accounts = {o["metadata"]["name"]: o for o in of_kind(objects, "ServiceAccount")}
    assert set(accounts) == {
        "atelier-training", "atelier-serving", "atelier-test", "atelier-postgresql",
        "atelier-prometheus", "atelier-alertmanager", "atelier-grafana",
    }  # fmt: skip
    for name, sa in accounts.items():
        assert sa["automountServiceAccountToken"] is (name == "atelier-prometheus"), name
    used = {spec.get("serviceAccountName") for _, spec in pod_specs(objects)}
    assert used == set(accounts)


def test_pdb_selects_the_serving_pods() -> None:
    for args in [(), ("serving.mode=raw",)]:
        objects = rendered(*args)
        pdb = one(objects, "PodDisruptionBudget")["spec"]
        labels = pdb["selector"]["matchLabels"]
        if args:
            pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
        else:
            pod_labels = predictor(objects)["labels"]
        assert labels.items() <= pod_labels.items()
        assert pdb["minAvailable"] == 1


def images(objects: tuple[Any, ...]) -> set[str]:
    found = set()
    for _, spec in pod_specs(objects):
        found |= {c["image"] for c in containers(spec) if "image" in c}
    for r in of_kind(objects, "ServingRuntime"):
        found |= {c["image"] for c in r["spec"]["containers"]}
    return found


def test_images_default_to_the_app_version() -> None:
    postgres = yaml.safe_load((chart_dir() / "values.yaml").read_text())["drift"]["store"][
        "postgresql"
    ]["image"]
    assert images(rendered()) == {
        f"atelier-training:{APP_VERSION}",
        f"atelier-serving:{APP_VERSION}",
        f"atelier-drift:{APP_VERSION}",
        f"{postgres['repository']}:{postgres['tag']}",  # pinned upstream, not the appVersion
    }
    for _, objects in all_renders():
        for image in images(objects):
            assert ":" in image.split("/")[-1] and ":latest" not in image, image


def test_images_take_tags_and_digests() -> None:
    digest = "sha256:" + "b" * 64
    objects = rendered(
        "serving.image.repository=registry.example/atelier-serving",
        "serving.image.tag=1.2.3",
        f"serving.image.digest={digest}",
        "training.image.tag=9.9.9",
    )
    found = images(objects)
    assert f"registry.example/atelier-serving:1.2.3@{digest}" in found
    assert "atelier-training:9.9.9" in found
    assert f"atelier-drift:{APP_VERSION}" in found


def test_labels_selectors_are_a_subset() -> None:
    for o in rendered("serving.mode=raw"):
        if o["kind"] in ("Deployment",):
            selector = o["spec"]["selector"]["matchLabels"]
            assert selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
            assert selector.items() <= o["metadata"]["labels"].items()
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", o["metadata"]["name"]
        assert labels.get("app.kubernetes.io/instance") == "atelier"


# --------------------------------------------------------------------------- NOTES, helm test


@pytest.mark.parametrize(
    ("args", "forward"),
    [
        ((), "kubectl -n atelier port-forward svc/atelier-predictor 8080:80"),
        (("serving.mode=raw",), "kubectl -n atelier port-forward svc/atelier-serving 8080:8080"),
    ],
)
def test_notes_print_the_commands(args: tuple[str, ...], forward: str) -> None:
    notes = helm_notes(args)
    assert forward in notes
    base = "http://127.0.0.1:8080"
    assert "curl -s -H 'Content-Type: image/png' --data-binary @" in notes
    assert f"{base}/predictions/fashion-mnist" in notes
    assert f"{base}/v1/models/fashion-mnist:predict" in notes
    assert f"{base}/v2/models/fashion-mnist/infer" in notes
    assert "helm test atelier -n atelier" in notes
    assert "kubectl -n atelier port-forward svc/atelier-drift 8095:8095" in notes


def test_helm_test_pod_classifies_one_image() -> None:
    for args, url in [
        ((), "http://atelier-predictor.atelier.svc:80/predictions/fashion-mnist"),
        (
            ("serving.mode=raw",),
            "http://atelier-serving.atelier.svc:8080/predictions/fashion-mnist",
        ),
    ]:
        pod = one(rendered(*args), "Pod")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        (c,) = pod["spec"]["containers"]
        assert env(c)["URL"] == url
        assert env(c)["IMAGE_B64"].startswith("iVBORw0KGgo")  # a PNG
        assert "status == 200" in c["command"][-1]
