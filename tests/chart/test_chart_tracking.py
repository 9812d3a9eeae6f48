"""tracking.enabled (the MLflow tracking server) and tune.enabled (the tune Job).

- Off by default: nothing new renders, and the training Job says ATELIER_TRACKING=off rather
  than letting `atelier train` write its local SQLite store into the pod's scratch volume.
- On: `mlflow server` from the drift image, its backend store in its own database of the
  bundled PostgreSQL (created by an init container) or an external URL from a Secret, its
  artifacts on a claim or in a bucket, probes on /health, locked down; the training Job,
  the CronJob and the tune Job get MLFLOW_TRACKING_URI, the Service's address.
- NetworkPolicies: only the training and tune pods reach the server; the PostgreSQL policy
  lets in exactly the components that keep data there.
- The tune Job is Indexed (completions = parallelism = tune.workers): prepare, worker, report.
- Bad values fail `helm template` with a message naming the value.
"""

from __future__ import annotations

from typing import Any

import pytest

from atelier.cli.tuning import STORAGE_ENV
from atelier.runtime.errors import ConfigError
from atelier.tools.chart import helm_template, rendered
from support.k8s_validate import validate_object
from support.pod_spec import container, env, mounts, volumes

pytestmark = pytest.mark.chart

CRON = "training.cronJob.enabled=true"
# One render serves most tests: both switches on, the CronJob, raw mode (a serving Deployment).
ON = ("tracking.enabled=true", "tune.enabled=true", CRON, "serving.mode=raw")
URI = "http://atelier-tracking:5000"
EXTERNAL = (
    "tracking.enabled=true",
    "tracking.backendStore.type=external",
    "tracking.backendStore.external.existingSecret=mlflow-db",
    "tracking.artifacts.type=objectStore",
    "tracking.artifacts.objectStore.uri=s3://mlflow/artifacts",
    "tracking.artifacts.objectStore.endpoint=http://minio.minio.svc:9000",
    "tracking.artifacts.objectStore.credentialsSecret=mlflow-s3",
    "tune.enabled=true",
    "tune.storage.type=external",
    "tune.storage.external.existingSecret=optuna-db",
    "drift.store.type=sqlite",
    "serving.autoscaling.enabled=false",
    "serving.replicas=1",
)


def of_kind(objects: tuple[Any, ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[Any, ...], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def component(objects: tuple[Any, ...], name: str) -> list[dict[str, Any]]:
    return [
        o for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name
    ]  # fmt: skip


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def pods(objects: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    """Object name -> pod template, for everything that runs pods."""
    kinds = {"Deployment", "StatefulSet", "Job", "CronJob"}
    return {o["metadata"]["name"]: pod_template(o) for o in objects if o["kind"] in kinds}


def tracking_pod(objects: tuple[Any, ...]) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(named(objects, "Deployment", "atelier-tracking"))["spec"]
    return spec


def tune_job(objects: tuple[Any, ...]) -> dict[str, Any]:
    (job,) = [
        o for o in of_kind(objects, "Job") if o["metadata"]["name"].startswith("atelier-tune-")
    ]
    return job


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def admitted(policy: dict[str, Any], objects: tuple[Any, ...]) -> set[str]:
    """The chart's pods (by object name) that some rule of the policy lets in."""
    peers = [p["podSelector"] for rule in policy["spec"]["ingress"] for p in rule["from"]]
    return {
        name for name, tpl in pods(objects).items()
        if any(selects(peer, tpl["metadata"]["labels"]) for peer in peers)
    }  # fmt: skip


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


# --------------------------------------------------------------------------- off


def test_off_by_default_and_the_training_job_tracks_nothing() -> None:
    objects = rendered(CRON)  # the Job and the CronJob
    assert not component(objects, "tracking") and not component(objects, "tune")
    jobs = [o for o in objects if o["kind"] in ("Job", "CronJob")]
    assert len(jobs) == 2
    for job in jobs:
        spec = pod_template(job)["spec"]
        assert "wait-for-tracking" not in [c["name"] for c in all_containers(spec)]
        for name in ("train", "archive"):
            e = env(container(spec, name))
            # Said, not defaulted: no MLflow SQLite store in the Job's emptyDir.
            assert e["ATELIER_TRACKING"] == "off", (job["metadata"]["name"], name)
            assert "MLFLOW_TRACKING_URI" not in e


# --------------------------------------------------------------------------- the server


def test_tracking_server_runs_mlflow_against_its_own_database() -> None:
    objects = rendered(*ON)
    spec = tracking_pod(objects)
    assert [c["name"] for c in spec["initContainers"]] == ["create-database"]
    (mlflow,) = spec["containers"]
    assert mlflow["image"] == "atelier-drift:0.1.0"
    assert mlflow["command"] == ["mlflow"] and mlflow["args"][0] == "server"
    args = mlflow["args"]
    assert args[args.index("--artifacts-destination") + 1] == "/mnt/artifacts"
    assert "--serve-artifacts" in args
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert {"atelier-tracking:5000", "atelier-tracking.atelier.svc:5000", "localhost:*"} <= set(
        hosts
    )
    e = env(mlflow)
    names = [x["name"] for x in mlflow["env"]]
    # The password: from the chart's Secret, into the URL by Kubernetes' $(VAR) expansion,
    # which needs the variable defined first; never on the command line.
    assert names.index("ATELIER_POSTGRESQL_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")
    assert e["ATELIER_POSTGRESQL_PASSWORD"]["secretKeyRef"] == {
        "name": "atelier-postgresql", "key": "password",
    }  # fmt: skip
    assert e["MLFLOW_BACKEND_STORE_URI"] == (
        "postgresql+psycopg://atelier:$(ATELIER_POSTGRESQL_PASSWORD)@atelier-postgresql:5432/mlflow"
    )
    assert not any("PASSWORD" in a or "postgresql" in a for a in args)
    assert e["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # no huey worker processes
    # The database is created when absent, under a lock, in the bundled PostgreSQL.
    create = container(spec, "create-database")
    assert (
        env(create)["ATELIER_DATABASE"] == "mlflow"
        and env(create)["PGHOST"] == "atelier-postgresql"
    )
    script = create["args"][0]
    assert "pg_advisory_lock" in script and "WHERE NOT EXISTS" in script and "\\gexec" in script
    # Probes on /health through the named port; locked down; sized.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert mlflow[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert mlflow["ports"] == [{"name": "http", "containerPort": 5000, "protocol": "TCP"}]
    for c in all_containers(spec):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"], c["name"]
        assert not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
    assert spec["automountServiceAccountToken"] is False
    assert mounts(mlflow) == {"/tmp": "tmp", "/mnt/artifacts": "artifacts"}
    claim = volumes(spec)["artifacts"]["persistentVolumeClaim"]["claimName"]
    pvc = named(objects, "PersistentVolumeClaim", claim)
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = named(objects, "Deployment", "atelier-tracking")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # one pod on a RWO claim
    service = named(objects, "Service", "atelier-tracking")
    assert service["spec"]["ports"][0]["port"] == 5000
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert selects(
        {"matchLabels": service["spec"]["selector"]}, pod_template(deployment)["metadata"]["labels"]
    )
    problems = [
        f"{o['kind']}/{o['metadata']['name']}: {p}"
        for o in [*component(objects, "tracking"), *component(objects, "tune")]
        for p in validate_object(o)
    ]
    assert not problems, problems


def test_external_database_and_bucket() -> None:
    objects = rendered(*EXTERNAL)
    spec = tracking_pod(objects)
    assert "initContainers" not in spec  # no database to create
    (mlflow,) = spec["containers"]
    e = env(mlflow)
    assert e["MLFLOW_BACKEND_STORE_URI"]["secretKeyRef"] == {"name": "mlflow-db", "key": "url"}
    assert "ATELIER_POSTGRESQL_PASSWORD" not in e
    assert e["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.minio.svc:9000"
    assert mlflow["envFrom"] == [{"secretRef": {"name": "mlflow-s3"}}]
    args = mlflow["args"]
    assert args[args.index("--artifacts-destination") + 1] == "s3://mlflow/artifacts"
    assert "artifacts" not in volumes(spec)
    assert not of_kind(tuple(component(objects, "tracking")), "PersistentVolumeClaim")
    tune = pod_template(tune_job(objects))["spec"]
    assert "create-database" not in [c["name"] for c in tune["initContainers"]]
    assert env(container(tune, "worker"))[STORAGE_ENV]["secretKeyRef"] == {
        "name": "optuna-db", "key": "url",
    }  # fmt: skip
    # Nothing keeps data in the bundled PostgreSQL: it is not rendered.
    assert not component(objects, "postgresql")


# --------------------------------------------------------------------------- the Jobs


def test_training_cron_and_tune_jobs_log_to_the_server() -> None:
    objects = rendered(*ON)
    service = named(objects, "Service", "atelier-tracking")
    assert f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}" == URI
    jobs = [o for o in objects if o["kind"] in ("Job", "CronJob")]
    assert len(jobs) == 3
    for job in jobs:
        spec = pod_template(job)["spec"]
        inits = [c["name"] for c in spec["initContainers"]]
        first = "train" if "train" in inits else "prepare"
        assert inits.index("wait-for-tracking") < inits.index(first), inits
        for c in all_containers(spec):
            if c["name"] in (
                "create-database",
                "fetch-store",
                "publish-version",
                "publish-current",
            ):
                continue
            assert env(c)["MLFLOW_TRACKING_URI"] == URI, (job["metadata"]["name"], c["name"])
    # A changed tracking setting is a new training Job (its pod template is immutable).
    names = {o["metadata"]["name"] for o in of_kind(rendered(), "Job")}
    assert not names & {o["metadata"]["name"] for o in of_kind(objects, "Job")}


def test_tune_job_is_indexed_prepare_worker_report() -> None:
    objects = rendered(*ON)
    job = tune_job(objects)
    s = job["spec"]
    assert s["completionMode"] == "Indexed"
    assert s["completions"] == s["parallelism"] == 2
    assert s["backoffLimitPerIndex"] == 1
    # Bad config or space (2), bad data (3), no trial completed (12): no retry changes them.
    assert s["podFailurePolicy"]["rules"][0] == {
        "action": "FailIndex", "onExitCodes": {"operator": "In", "values": [2, 3, 12]},
    }  # fmt: skip
    spec = s["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert [c["name"] for c in spec["initContainers"]] == [
        "create-database", "wait-for-tracking", "prepare", "worker",
    ]  # fmt: skip
    assert [c["name"] for c in spec["containers"]] == ["report"]
    assert env(container(spec, "create-database"))["ATELIER_DATABASE"] == "optuna"
    study = job["metadata"]["name"].removeprefix("atelier-tune-")
    out = f"/mnt/tune/fashion-mnist-{study}"
    prepare, worker, report = (container(spec, n) for n in ("prepare", "worker", "report"))
    assert prepare["args"][:2] == ["tune", "--prepare-only"]
    assert prepare["args"][prepare["args"].index("--trials") + 1] == "20"
    assert worker["args"][0] == "tune-worker" and report["args"][0] == "tune-report"
    for c in (prepare, worker, report):
        a = c["args"]
        assert a[a.index("--study") + 1] == f"fashion-mnist-{study}"
        assert a[a.index("--out") + 1] == out
        assert "--storage" not in a  # the CLI reads it from the environment
        assert env(c)[STORAGE_ENV].endswith("@atelier-postgresql:5432/optuna")
        assert mounts(c)["/mnt/tune"] == "results"
    assert worker["args"][worker["args"].index("--index") + 1] == "$(ATELIER_TUNE_INDEX)"
    assert env(worker)["ATELIER_TUNE_INDEX"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    claim = volumes(spec)["results"]["persistentVolumeClaim"]["claimName"]
    assert named(objects, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]
    config = named(objects, "ConfigMap", "atelier-tune-config")["data"]
    assert "name: fashion-mnist" in config["base.yaml"] and "space.yaml" not in config
    assert spec["serviceAccountName"] == "atelier-training"


def test_tune_values_reach_the_job() -> None:
    objects = rendered(
        "tune.enabled=true", "tune.workers=3", "tune.trials=9", "tune.folds=3",
        "tune.resources.limits.cpu=2500m", "tune.space.params.optim\\.lr.type=float",
        "tune.space.params.optim\\.lr.low=0.001", "tune.space.params.optim\\.lr.high=0.01",
    )  # fmt: skip
    job = tune_job(objects)
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    spec = pod_template(job)["spec"]
    # No tracking: said, and nothing waits for a server.
    assert [c["name"] for c in spec["initContainers"]] == ["create-database", "prepare", "worker"]
    prepare, worker = container(spec, "prepare"), container(spec, "worker")
    a = prepare["args"]
    assert a[a.index("--folds") + 1] == "3" and a[a.index("--trials") + 1] == "9"
    assert a[a.index("--space") + 1] == "/etc/atelier/space.yaml"
    assert worker["args"][worker["args"].index("--threads") + 1] == "2"
    assert env(worker)["OMP_NUM_THREADS"] == "2"
    assert env(worker)["ATELIER_TRACKING"] == "off" and "MLFLOW_TRACKING_URI" not in env(worker)
    assert "optim.lr" in named(objects, "ConfigMap", "atelier-tune-config")["data"]["space.yaml"]
    # Another search is another study and another Job.
    assert job["metadata"]["name"] != tune_job(rendered(*ON))["metadata"]["name"]


# --------------------------------------------------------------------------- NetworkPolicies


def test_network_policies() -> None:
    objects = rendered(*ON)
    policies = {p["metadata"]["name"]: p for p in of_kind(objects, "NetworkPolicy")}
    tracking = policies["atelier-tracking"]
    assert selects(
        tracking["spec"]["podSelector"],
        pod_template(named(objects, "Deployment", "atelier-tracking"))["metadata"]["labels"],
    )
    (rule,) = tracking["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5000, "protocol": "TCP"}]
    train, tune = (o["metadata"]["name"] for o in of_kind(objects, "Job"))
    cron = of_kind(objects, "CronJob")[0]["metadata"]["name"]
    assert admitted(tracking, objects) == {train, tune, cron}
    # PostgreSQL: the drift sidecars (serving), the tracking server and the tune pods.
    assert admitted(policies["atelier-postgresql"], objects) == {
        "atelier-serving", "atelier-tracking", tune,
    }  # fmt: skip
    # The tune pods serve nothing.
    deny = policies["atelier-deny-ingress"]["spec"]
    assert selects(deny["podSelector"], pods(objects)[tune]["metadata"]["labels"])
    assert "ingress" not in deny
    # PostgreSQL renders for the tracking server alone, and lets in only it.
    alone = rendered("tracking.enabled=true", "drift.enabled=false")
    pg = {p["metadata"]["name"]: p for p in of_kind(alone, "NetworkPolicy")}["atelier-postgresql"]
    assert admitted(pg, alone) == {"atelier-tracking"}


# --------------------------------------------------------------------------- refusals


def test_schema_refuses_bad_values_naming_each_path() -> None:
    bad = {
        "tracking.backendStore.type=sqlite": "/tracking/backendStore/type",
        "tracking.workers=0": "/tracking/workers",
        "tracking.port=70000": "/tracking/port",
        "tracking.artifacts.type=nfs": "/tracking/artifacts/type",
        "tracking.artifacts.objectStore.uri=gs://bucket": "/tracking/artifacts/objectStore/uri",
        "tracking.image.tag=latest": "/tracking/image/tag",
        "tracking.allowedHosts[0]=a\\,b": "/tracking/allowedHosts/0",
        "tracking.backendStore.database=Bad-Name": "/tracking/backendStore/database",
        "tune.workers=0": "/tune/workers",
        "tune.folds=1": "/tune/folds",
        "tune.trials=0": "/tune/trials",
        "tune.storage.type=sqlite": "/tune/storage/type",
        "tune.study=no spaces": "/tune/study",
        "tune.pvc.accessModes[0]=ReadWriteSometimes": "/tune/pvc/accessModes/0",
        "tracking.bogus=1": "/tracking': additional properties 'bogus",
    }
    # Helm checks the whole schema at once and names every violation.
    with pytest.raises(ConfigError) as err:
        helm_template(set_values=list(bad))
    message = str(err.value)
    for path in bad.values():
        assert f"at '{path}'" in message, path


@pytest.mark.parametrize(
    ("args", "value"),
    [
        (("tracking.enabled=true", "tracking.backendStore.type=external"),
         "tracking.backendStore.external.existingSecret"),
        (("tracking.enabled=true", "tracking.artifacts.type=objectStore"),
         "tracking.artifacts.objectStore.uri"),
        (("tune.enabled=true", "tune.storage.type=external"),
         "tune.storage.external.existingSecret"),
        (("tune.enabled=true", "tune.trials=2", "tune.workers=3"), "tune.workers"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)  # fmt: skip
def test_template_refuses_combinations_in_one_line(args: tuple[str, ...], value: str) -> None:
    with pytest.raises(ConfigError) as err:
        helm_template(set_values=list(args))
    (line,) = [x for x in str(err.value).splitlines() if value in x]
    assert "execution error at" in line and f": {value}: " in line, line
