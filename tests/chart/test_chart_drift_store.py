"""drift.store: where the drift sidecars keep their shared inference log.

- sqlite: a file in the sidecar's state folder, so one serving pod only; the chart refuses more
  (autoscaling, or serving.replicas > 1) with a message naming the values to change.
- postgresql (the default): a StatefulSet running the official image, locked down, with a
  claim, a Service, a generated password kept in a Secret (reused through `lookup`), and a
  NetworkPolicy that lets only the serving pods in; the sidecar's URL and password point at them.
- external: the URL (and optionally the password) from an existing Secret, which is required.
- The schema has no field for a password, and refuses unknown keys.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from atelier.runtime.errors import ConfigError
from atelier.tools.chart import chart_dir, helm_binary, helm_template, rendered
from support.pod_spec import container, env, mounts, volumes

pytestmark = pytest.mark.chart

RAW = "serving.mode=raw"
ONE_POD = ("serving.autoscaling.enabled=false", "serving.replicas=1")
SQLITE = "drift.store.type=sqlite"
EXTERNAL = "drift.store.type=external"
LONG_RELEASE = "release-name-as-long-as-helm-allows-fifty-three-chars"
POSTGRESQL_KINDS = {"StatefulSet", "Secret", "Service", "ServiceAccount", "NetworkPolicy"}


def of_kind(objects: tuple[Any, ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def postgresql_objects(objects: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    """The bundled database's objects by kind (component label postgresql)."""
    out: dict[str, dict[str, Any]] = {}
    for o in objects:
        labels = o["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/component") == "postgresql":
            assert o["kind"] not in out, f"two {o['kind']} objects"
            out[o["kind"]] = o
    return out


def serving_pod(mode: str, *args: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(pod spec, pod labels) of the serving pod: KServe's predictor or raw mode's Deployment."""
    if mode == "kserve":
        (isvc,) = of_kind(rendered(*args), "InferenceService")
        predictor: dict[str, Any] = isvc["spec"]["predictor"]
        return predictor, predictor["labels"]
    (dep,) = [
        d for d in of_kind(rendered(RAW, *args), "Deployment")
        if d["metadata"]["name"].endswith("-serving")
    ]  # fmt: skip
    return dep["spec"]["template"]["spec"], dep["spec"]["template"]["metadata"]["labels"]


def serving_pods(*args: str) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """(mode, pod spec, pod labels) of the serving pod in KServe and in raw mode."""
    for mode in ("kserve", "raw"):
        yield (mode, *serving_pod(mode, *args))


def pod_template_labels(obj: dict[str, Any]) -> dict[str, str]:
    """The labels of the pods an object runs (none for objects that run no pod)."""
    if obj["kind"] == "Pod":
        labels: dict[str, str] = obj["metadata"].get("labels", {})
        return labels
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob"):
        labels = spec["template"]["metadata"].get("labels", {})
        return labels
    return {}


def refused(*args: str) -> str:
    with pytest.raises(ConfigError) as info:
        helm_template(set_values=args)
    return str(info.value)


# --------------------------------------------------------------------------- sqlite


def test_sqlite_with_one_pod_is_a_file_in_the_state_folder() -> None:
    for mode, spec, _ in serving_pods(SQLITE, *ONE_POD):
        drift = container(spec, "drift")
        e = env(drift)
        url = e["ATELIER_DRIFT_DATABASE_URL"]
        assert url == "sqlite:////var/lib/atelier/drift/state/inference-log.db", mode
        path = Path(url.removeprefix("sqlite:///"))
        assert path.parent == Path(e["ATELIER_DRIFT_STATE_DIR"]), mode
        # The state folder lies on the sidecar's writable drift-data volume.
        (volume,) = [v for p, v in mounts(drift).items() if path.is_relative_to(p)]
        assert volume == "drift-data" and "emptyDir" in volumes(spec)[volume], mode
        assert "ATELIER_DRIFT_DATABASE_PASSWORD" not in e, mode
        assert e["ATELIER_DRIFT_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert not postgresql_objects(rendered(SQLITE, *ONE_POD))
    assert not postgresql_objects(rendered(RAW, SQLITE, *ONE_POD))


@pytest.mark.parametrize(
    ("args", "named", "not_named"),
    [
        ((), ["serving.autoscaling.enabled=false", "serving.replicas=1 (it is 2)"], []),
        (("serving.autoscaling.enabled=false",), ["serving.replicas=1 (it is 2)"],
         ["serving.autoscaling"]),
        (("serving.replicas=1",),
         ["serving.autoscaling.enabled=false", "2 to 6 replicas",
          "serving.autoscaling.minReplicas/maxReplicas"], ["serving.replicas"]),
        (("serving.replicas=1", "serving.autoscaling.minReplicas=1",
          "serving.autoscaling.maxReplicas=1"), ["serving.autoscaling.enabled=false"], []),
        ((RAW, "serving.autoscaling.enabled=false", "serving.replicas=3"),
         ["serving.replicas=1 (it is 3)"], []),
        ((RAW, "serving.autoscaling.raw.mode=keda", "serving.replicas=1"),
         ["serving.autoscaling.enabled=false"], []),
    ],
)  # fmt: skip
def test_sqlite_refuses_more_than_one_pod(
    args: tuple[str, ...], named: list[str], not_named: list[str]
) -> None:
    message = refused(SQLITE, *args)
    assert "drift.store.type: sqlite" in message, message
    assert "drift.store.type=postgresql" in message, message  # the way out
    for text in named:
        assert text in message, (text, message)
    for text in not_named:
        assert text not in message, (text, message)


def test_sqlite_without_the_sidecar_is_not_checked() -> None:
    assert rendered(SQLITE, "drift.enabled=false")


# --------------------------------------------------------------------------- postgresql


def test_postgresql_is_the_default_and_renders_its_objects() -> None:
    objects = rendered()
    pg = postgresql_objects(objects)
    assert set(pg) == POSTGRESQL_KINDS
    names = {o["metadata"]["name"] for o in pg.values()}
    assert names == {"atelier-postgresql"}
    sts = pg["StatefulSet"]["spec"]
    assert sts["replicas"] == 1
    assert sts["serviceName"] == "atelier-postgresql"
    assert sts["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain", "whenScaled": "Retain",
    }  # fmt: skip
    pod_labels = sts["template"]["metadata"]["labels"]
    assert sts["selector"]["matchLabels"].items() <= pod_labels.items()
    # The Service selects the pod and reaches its port 5432.
    svc = pg["Service"]["spec"]
    assert svc["type"] == "ClusterIP"
    assert svc["selector"].items() <= pod_labels.items()
    (port,) = svc["ports"]
    (pg_container,) = sts["template"]["spec"]["containers"]
    (container_port,) = pg_container["ports"]
    assert port["port"] == 5432 == container_port["containerPort"]
    assert port["targetPort"] == container_port["name"]


def test_postgresql_pod_is_locked_down() -> None:
    sts = postgresql_objects(rendered())["StatefulSet"]["spec"]
    pod = sts["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "atelier-postgresql"
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    c = container(pod, "postgresql")
    repository, tag = c["image"].rsplit(":", 1)
    assert repository == "docker.io/library/postgres"
    assert re.fullmatch(r"1[56]\.\d+(-bookworm)?", tag), tag
    assert c["securityContext"] == {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "privileged": False,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])
    # Writable places: the claim, and emptyDirs for the socket folder and /tmp.
    m = mounts(c)
    assert m["/var/lib/postgresql/data"] == "data"
    for path in ("/var/run/postgresql", "/tmp"):
        assert "emptyDir" in volumes(pod)[m[path]], path
    e = env(c)
    pgdata = Path(e["PGDATA"])
    assert pgdata.parent == Path("/var/lib/postgresql/data"), "PGDATA is a subfolder of the claim"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = c[probe]["exec"]["command"]
        assert command[0] == "pg_isready" and "5432" in command, probe
        assert command[command.index("-U") + 1] == e["POSTGRES_USER"], probe
    assert "POSTGRES_PASSWORD" not in e, "the password is read from a file, not the env"
    assert "pg_ctl" in c["lifecycle"]["preStop"]["exec"]["command"]


def test_postgresql_values_reach_the_objects() -> None:
    digest = "sha256:" + "c" * 64
    objects = rendered(
        "drift.store.postgresql.persistence.size=20Gi",
        "drift.store.postgresql.persistence.storageClassName=fast",
        "drift.store.postgresql.database=inference_log",
        "drift.store.postgresql.username=drift",
        "drift.store.postgresql.image.tag=15.14",
        f"drift.store.postgresql.image.digest={digest}",
        "drift.store.postgresql.resources.limits.memory=2Gi",
    )
    sts = postgresql_objects(objects)["StatefulSet"]["spec"]
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    c = container(sts["template"]["spec"], "postgresql")
    assert c["image"] == f"docker.io/library/postgres:15.14@{digest}"
    assert c["resources"]["limits"]["memory"] == "2Gi"
    assert (env(c)["POSTGRES_DB"], env(c)["POSTGRES_USER"]) == ("inference_log", "drift")
    for _, spec, _ in serving_pods(
        "drift.store.postgresql.database=inference_log", "drift.store.postgresql.username=drift"
    ):
        url = urlsplit(env(container(spec, "drift"))["ATELIER_DRIFT_DATABASE_URL"])
        assert (url.username, url.path) == ("drift", "/inference_log")
    (claim,) = postgresql_objects(rendered())["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class


def test_sidecar_points_at_the_bundled_database() -> None:
    for mode in ("kserve", "raw"):
        objects = rendered(RAW) if mode == "raw" else rendered()
        pg = postgresql_objects(objects)
        pg_pod = pg["StatefulSet"]["spec"]["template"]["spec"]
        pg_env = env(container(pg_pod, "postgresql"))
        spec, _ = serving_pod(mode)
        e = env(container(spec, "drift"))
        url = urlsplit(e["ATELIER_DRIFT_DATABASE_URL"])
        assert url.scheme == "postgresql+psycopg", mode
        assert url.password is None, "no password in the URL"
        assert url.hostname == pg["Service"]["metadata"]["name"], mode
        assert url.port == pg["Service"]["spec"]["ports"][0]["port"] == 5432, mode
        assert url.username == pg_env["POSTGRES_USER"], mode
        assert url.path == "/" + pg_env["POSTGRES_DB"], mode
        ref = e["ATELIER_DRIFT_DATABASE_PASSWORD"]["secretKeyRef"]
        assert ref["name"] == pg["Secret"]["metadata"]["name"], mode
        assert ref["key"] in pg["Secret"]["data"], mode
        # The database reads the same key of the same Secret as a file.
        file = Path(pg_env["POSTGRES_PASSWORD_FILE"])
        pg_mounts = mounts(container(pg_pod, "postgresql"))
        secret_volume = volumes(pg_pod)[pg_mounts[str(file.parent)]]["secret"]
        assert secret_volume["secretName"] == ref["name"], mode
        assert {"key": ref["key"], "path": file.name} in secret_volume["items"], mode
        assert e["ATELIER_DRIFT_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_network_policy_lets_only_the_serving_pods_in() -> None:
    for args in [(), (RAW,)]:
        objects = rendered(*args)
        pg = postgresql_objects(objects)
        policy = pg["NetworkPolicy"]["spec"]
        pod_labels = pg["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert policy["policyTypes"] == ["Ingress"]
        (rule,) = policy["ingress"]
        assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
        (peer,) = rule["from"]
        assert set(peer) == {"podSelector"}, "no namespaceSelector: this namespace only"
        selector = peer["podSelector"]["matchLabels"]
        _, serving_labels = serving_pod("raw" if args else "kserve")
        assert selector.items() <= serving_labels.items(), "the serving pods get in"
        # No other pod the chart runs (database, training, monitoring, helm test) matches.
        matched = [
            o["metadata"]["name"] for o in objects
            if selector.items() <= pod_template_labels(o).items()
        ]  # fmt: skip
        assert matched == (["atelier-serving"] if args else []), matched
    assert "NetworkPolicy" not in postgresql_objects(rendered("networkPolicy.enabled=false"))


def test_password_secret_is_generated_kept_and_looked_up() -> None:
    secret = postgresql_objects(rendered())["Secret"]
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) >= 24 and password.isalnum(), password
    # With no cluster (helm template) lookup finds nothing, so every render draws a new one:
    # only the lookup below keeps it across upgrades.
    again = helm_template()
    (other,) = [o for o in again if o["kind"] == "Secret"]
    assert other["data"]["password"] != secret["data"]["password"]
    template = (chart_dir() / "templates" / "drift-store.yaml").read_text()
    name = re.search(r'\$name := (include "atelier.postgresqlName" \.)', template)
    assert name, "the objects are named by atelier.postgresqlName"
    assert re.search(
        r'password: \{\{ include "atelier.postgresqlPassword" '
        r'\(lookup "v1" "Secret" \.Release\.Namespace \$name\) \| quote \}\}',
        template,
    ), "the Secret's password goes through lookup of the Secret the template names"


def test_password_helper_reuses_what_lookup_found(tmp_path: Path) -> None:
    """atelier.postgresqlPassword keeps an existing Secret's value and draws one otherwise.

    No API server runs here, so `lookup` itself always answers empty; the helper is given by
    hand what lookup returns on a cluster (the Secret object, or an empty map) in a probe
    template added to a copy of the chart, rendered by the real Helm.
    """
    chart = tmp_path / "atelier"
    shutil.copytree(chart_dir(), chart)
    existing = base64.b64encode(b"kept-from-the-first-install").decode()
    (chart / "templates" / "zz-password-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n"
        f'  kept: {{{{ include "atelier.postgresqlPassword" '
        f'(dict "kind" "Secret" "data" (dict "password" "{existing}")) | quote }}}}\n'
        '  noSecret: {{ include "atelier.postgresqlPassword" (dict) | quote }}\n'
        '  noKey: {{ include "atelier.postgresqlPassword" '
        '(dict "data" (dict "other" "eA==")) | quote }}\n'
    )
    proc = subprocess.run(
        [str(helm_binary()), "template", "atelier", str(chart), "--show-only",
         "templates/zz-password-probe.yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)["data"]
    assert data["kept"] == existing
    for key in ("noSecret", "noKey"):
        fresh = base64.b64decode(data[key]).decode()
        assert len(fresh) == 32 and fresh.isalnum(), (key, fresh)


def test_statefulset_name_leaves_room_for_the_revision_label() -> None:
    """The controller labels pods controller-revision-hash=<name>-<10 chars>: 63 at most."""
    objects = rendered(release=LONG_RELEASE)
    for kind, obj in postgresql_objects(objects).items():
        assert len(obj["metadata"]["name"]) <= 52, kind


# --------------------------------------------------------------------------- external


def test_external_needs_an_existing_secret() -> None:
    message = refused(EXTERNAL)
    assert "drift.store.external.existingSecret: required" in message, message


def test_external_wires_the_secret() -> None:
    args = (EXTERNAL, "drift.store.external.existingSecret=inference-db")
    for mode, spec, _ in serving_pods(*args, "drift.store.external.passwordKey=pw"):
        e = env(container(spec, "drift"))
        assert e["ATELIER_DRIFT_DATABASE_URL"] == {
            "secretKeyRef": {"name": "inference-db", "key": "url"}
        }, mode
        assert e["ATELIER_DRIFT_DATABASE_PASSWORD"] == {
            "secretKeyRef": {"name": "inference-db", "key": "pw"}
        }, mode
        assert e["ATELIER_DRIFT_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    for mode, spec, _ in serving_pods(*args, "drift.store.external.urlKey=dsn"):
        e = env(container(spec, "drift"))
        assert e["ATELIER_DRIFT_DATABASE_URL"]["secretKeyRef"]["key"] == "dsn", mode
        assert "ATELIER_DRIFT_DATABASE_PASSWORD" not in e, "no passwordKey, no password env"
    assert not postgresql_objects(rendered(*args))


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["drift.store.type=mysql"], "/drift/store/type"),
        (["drift.store.password=hunter2"], "additional properties 'password'"),
        (["drift.store.external.password=hunter2"], "additional properties 'password'"),
        (["drift.store.postgresql.password=hunter2"], "additional properties 'password'"),
        (["drift.store.url=sqlite://"], "additional properties 'url'"),
        (["drift.store.postgresql.persistence.bogus=1"], "additional properties 'bogus'"),
        (["drift.store.postgresql.username=Drift-User"], "/drift/store/postgresql/username"),
        (["drift.store.postgresql.persistence.size=big"],
         "/drift/store/postgresql/persistence/size"),
        (["drift.store.postgresql.image.tag=latest"], "/drift/store/postgresql/image/tag"),
        (["drift.store.external.existingSecret=Not_A_Name"],
         "/drift/store/external/existingSecret"),
        (["drift.store.external.urlKey="], "/drift/store/external/urlKey"),
    ],
)  # fmt: skip
def test_schema_refuses_bad_store_values(args: list[str], path: str) -> None:
    message = refused(*args)
    assert "values don't meet the specifications of the schema" in message, message
    assert path in message, message


def test_schema_has_no_field_for_a_password() -> None:
    schema = json.loads((chart_dir() / "values.schema.json").read_text())
    store = schema["properties"]["drift"]["properties"]["store"]

    def walk(node: Any, where: str) -> Iterator[str]:
        if isinstance(node, dict):
            if "properties" in node:  # the chart's own objects (not free-form Kubernetes maps)
                assert node.get("additionalProperties") is False, f"{where}: open object"
            for key, value in node.get("properties", {}).items():
                if key != "passwordKey" and "password" in key.lower():
                    yield f"{where}.{key}"
                yield from walk(value, f"{where}.{key}")

    assert not list(walk(store, "drift.store"))


def test_chart_set_env_is_not_taken_from_settings() -> None:
    for key in ("DATABASE_URL", "database_password", "POD_NAME"):
        message = refused(f"drift.settings.{key}=x")
        assert f"drift.settings.{key}" in message, message
