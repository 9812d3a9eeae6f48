"""The whole stack on a real cluster: install, train, serve, classify, load, monitor.

Skipped unless KUBECONFIG names a cluster. docs/kubernetes.md builds one from nothing (kind,
ingress-nginx, the three images loaded as tag 0.1.0, the chart's appVersion); with it:

    KUBECONFIG=~/.kube/config .venv/bin/pytest -m cluster tests/cluster -v

The suite installs the chart as release `atelier` in a fresh namespace, with the kind
scenario (charts/atelier/ci/raw-bundled-values.yaml: raw mode, bundled monitoring, the smoke
training config) plus the Ingress, or with KServe and kube-prometheus-stack when
ATELIER_CLUSTER_MODE=kserve. It waits for the training Job and the Deployment (or the
InferenceService), classifies real Fashion-MNIST test images over raw PNG, KServe v1 and v2
through a port-forward, runs `atelier loadtest` against the ingress for 30 s, and checks that
Prometheus scrapes every atelier target and answers a dashboard query with data. The
namespace is deleted at the end, pass or fail.

Environment: ATELIER_IMAGE_TAG (default: the chart's appVersion) and ATELIER_IMAGE_REGISTRY
(a prefix such as localhost:5001/, default none) name the images; ATELIER_INGRESS_URL
overrides the ingress address (default: the Ingress status, else a port-forward to the
ingress-nginx controller); ATELIER_KEEP_NAMESPACE=1 keeps the namespace for debugging.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from atelier.monitoring import dashboards
from atelier.tools.loadtest import Workload, load_settings

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".tools/bin/helm"
KUBECTL = ROOT / ".tools/bin/kubectl"
CHART = ROOT / "charts/atelier"
RELEASE = "atelier"
MODEL = "fashion-mnist"
MODE = os.environ.get("ATELIER_CLUSTER_MODE", "kind")
VALUES = {
    "kind": ["-f", str(CHART / "ci/raw-bundled-values.yaml"), "--set", "ingress.enabled=true"],
    "kserve": [
        "--set", "serving.mode=kserve", "--set", "monitoring.mode=operator",
        "--set", "ingress.enabled=true",
    ],
}  # fmt: skip

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"),
        reason="no KUBECONFIG: the cluster suite needs a real cluster (docs/kubernetes.md)",
    ),
]


def run(*cmd: str | Path, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))}: exit {proc.returncode}\n{proc.stderr}")
    return proc.stdout


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 5.0) -> Any:
    """Poll until probe() returns something truthy; AssertionError("... (last: ...)")."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # an API hiccup is one more failed poll
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@contextmanager
def port_forward(namespace: str, target: str, port: int) -> Iterator[str]:
    """`kubectl port-forward` to a free local port on 127.0.0.1; yields the base URL."""
    proc = subprocess.Popen(
        [str(KUBECTL), "port-forward", "-n", namespace, "--address", "127.0.0.1", target,
         f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+) ->", line)
        assert m, f"kubectl port-forward {target}: {line}{proc.stdout.read() if not m else ''}"
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def kube() -> dict[str, Any]:
    from kubernetes import client, config

    for tool in (HELM, KUBECTL):
        if not tool.is_file():
            pytest.fail(f"{tool} is missing: run make setup")
    config.load_kube_config()
    return {
        "core": client.CoreV1Api(),
        "apps": client.AppsV1Api(),
        "batch": client.BatchV1Api(),
        "custom": client.CustomObjectsApi(),
        "networking": client.NetworkingV1Api(),
    }


@pytest.fixture(scope="module")
def namespace(kube: dict[str, Any]) -> Iterator[str]:
    from kubernetes import client

    name = f"atelier-it-{uuid.uuid4().hex[:6]}"
    kube["core"].create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        if not os.environ.get("ATELIER_KEEP_NAMESPACE"):
            run(HELM, "uninstall", RELEASE, "-n", name, "--wait", timeout=600, check=False)
            kube["core"].delete_namespace(name)


def image_args() -> list[str]:
    args: list[str] = []
    registry = os.environ.get("ATELIER_IMAGE_REGISTRY", "")
    tag = os.environ.get("ATELIER_IMAGE_TAG", "")
    for component in ("training", "serving", "drift"):
        args += ["--set", f"{component}.image.repository={registry}atelier-{component}"]
        if tag:
            args += ["--set", f"{component}.image.tag={tag}"]
    return args


@pytest.fixture(scope="module")
def installed(kube: dict[str, Any], namespace: str) -> str:
    """helm install --wait: the training Job completes, serving becomes ready."""
    assert MODE in VALUES, f"ATELIER_CLUSTER_MODE={MODE}: kind or kserve"
    run(
        HELM, "install", RELEASE, CHART, "-n", namespace, *VALUES[MODE], *image_args(),
        "--wait=watcher", "--wait-for-jobs", "--timeout", "15m",
        timeout=16 * 60,
    )  # fmt: skip
    return namespace


def test_training_job_completes_and_publishes_a_version(
    kube: dict[str, Any], installed: str
) -> None:
    jobs = (
        kube["batch"]
        .list_namespaced_job(installed, label_selector="app.kubernetes.io/component=training")
        .items
    )
    assert jobs, "the chart made no training Job"

    def done() -> bool:
        job = kube["batch"].read_namespaced_job_status(jobs[0].metadata.name, installed)
        assert not (job.status.failed or 0) > training_backoff(job), "the training Job failed"
        return bool(job.status.succeeded)

    wait_for("the training Job", done, timeout=900)


def training_backoff(job: Any) -> int:
    return int(job.spec.backoff_limit or 0)


def test_serving_is_ready(kube: dict[str, Any], installed: str) -> None:
    if MODE == "kserve":

        def ready() -> bool:
            isvc = kube["custom"].get_namespaced_custom_object(
                "serving.kserve.io", "v1beta1", installed, "inferenceservices", RELEASE
            )
            conditions = isvc.get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_for("the InferenceService to be Ready", ready, timeout=600)
    else:

        def available() -> bool:
            d = kube["apps"].read_namespaced_deployment_status(f"{RELEASE}-serving", installed)
            return bool(d.status.available_replicas)

        wait_for("the serving Deployment", available, timeout=600)


def serving_target() -> tuple[str, int]:
    return (
        (f"svc/{RELEASE}-predictor", 80) if MODE == "kserve" else (f"svc/{RELEASE}-serving", 8080)
    )


@pytest.mark.parametrize("kind", ["raw", "v1", "v1_batch", "v2", "v2_batch"])
def test_classifies_fashion_mnist_over_every_protocol(
    kube: dict[str, Any], installed: str, kind: str
) -> None:
    target, port = serving_target()
    workload = Workload(load_settings(images=64, batch_size=8, seed=7))
    with port_forward(installed, target, port) as url:
        correct = total = 0
        for _ in range(4):
            req = workload.request(kind)
            r = requests.post(url + req.path, data=req.body, headers=req.headers, timeout=30)
            problem = workload.check(req, r.status_code, r.content)
            assert problem is None, f"{kind}: {problem}"
            for label, truth in zip(labels_of(kind, r.json()), req.labels, strict=True):
                total += 1
                correct += int(label == truth)
    # The smoke model is right on about 85% of test images; 8 of 20+ wrong is a broken model.
    assert correct / total >= 0.6, f"{kind}: {correct}/{total} right"


def labels_of(kind: str, answer: dict[str, Any]) -> list[int]:
    from atelier.training.data.idx import FASHION_MNIST_CLASSES

    names = list(FASHION_MNIST_CLASSES)
    if kind == "raw":
        return [int(answer["class_id"])]
    if kind.startswith("v1"):
        return [int(p["class_id"]) for p in answer["predictions"]]
    (label,) = [o for o in answer["outputs"] if o["name"] == "label"]
    return [names.index(x) if isinstance(x, str) else int(x) for x in label["data"]]


@contextmanager
def ingress_url(kube: dict[str, Any], namespace: str) -> Iterator[str]:
    """The ingress: ATELIER_INGRESS_URL, the Ingress status address, or a port-forward to the
    ingress-nginx controller (kind has no load balancer)."""
    explicit = os.environ.get("ATELIER_INGRESS_URL")
    if explicit:
        yield explicit.rstrip("/")
        return
    ingress = kube["networking"].read_namespaced_ingress(f"{RELEASE}-serving", namespace)
    lb = (ingress.status.load_balancer.ingress or []) if ingress.status.load_balancer else []
    address = next((x.ip or x.hostname for x in lb if x.ip or x.hostname), None)
    if address and address not in {"localhost", "127.0.0.1"}:
        yield f"http://{address}"
        return
    with port_forward("ingress-nginx", "svc/ingress-nginx-controller", 80) as url:
        yield url


def test_locust_against_the_ingress_for_30_seconds(
    kube: dict[str, Any], installed: str, tmp_path: Path
) -> None:
    report = tmp_path / "loadtest"
    with (
        ingress_url(kube, installed) as url,
        port_forward(installed, f"svc/{RELEASE}-drift", 8095) as drift,
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "atelier", "loadtest", url, "--duration", "30",
             "--users", "4", "--drift-url", drift, "--report-dir", str(report)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    summary_path = report / "summary.json"
    assert summary_path.is_file(), f"atelier loadtest wrote no summary:\n{proc.stdout}{proc.stderr}"
    summary = json.loads(summary_path.read_text())
    total = summary["total"]
    assert total["requests"] > 30, summary
    assert total["failures"] / total["requests"] <= 0.01, summary
    # A slow laptop may break the p99 objective (exit 8); anything else is a failure.
    assert proc.returncode in (0, 8), f"exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"


@contextmanager
def prometheus(namespace: str) -> Iterator[str]:
    if MODE == "kserve":
        with port_forward("monitoring", "svc/kube-prometheus-stack-prometheus", 9090) as url:
            yield url
    else:
        with port_forward(namespace, f"svc/{RELEASE}-prometheus", 9090) as url:
            yield url


def query(url: str, expr: str) -> list[dict[str, Any]]:
    r = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_every_atelier_target_and_a_dashboard_has_data(
    installed: str,
) -> None:
    with prometheus(installed) as url:
        up_expr = f'up{{job=~"atelier-.*", namespace="{installed}"}}'

        def all_up() -> list[dict[str, Any]] | None:
            series = query(url, up_expr)
            jobs = {s["metric"]["job"] for s in series}
            ok = series and all(s["value"][1] == "1" for s in series)
            return series if ok and {"atelier-torchserve", "atelier-drift"} <= jobs else None

        wait_for(f"{up_expr} == 1 for the serving and drift jobs", all_up, timeout=180)
        # A panel of the serving dashboard, as Grafana sends it, after the load test's traffic.
        serving = dashboards.build_all()["atelier-serving"]
        queries = dashboards.panel_queries(serving)
        assert queries
        # "Requests/s by status code": a recording rule over atelier_requests_total.
        expr = next(
            (q.expr for q in queries if q.panel_title.startswith("Requests/s")), queries[0].expr
        )
        expanded = dashboards.expand(expr, model=MODEL, rate_interval="5m", range_="30m")
        wait_for(f"data for {expanded}", lambda: query(url, expanded), timeout=180)
