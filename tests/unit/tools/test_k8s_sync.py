"""atelier.tools.k8s_sync without Helm: JSON patches, normalisation and the conflict check."""

from __future__ import annotations

from typing import Any

import pytest

from atelier.tools import k8s_sync
from atelier.tools.k8s_sync import Key, apply_json_patch, json_patch, normalize, plan

pytestmark = pytest.mark.unit


def test_json_patch_round_trips_keys_with_slashes_and_tildes() -> None:
    old = {"metadata": {"labels": {"app.kubernetes.io/name": "a", "x~y": "1"}}, "spec": [1]}
    new = {"metadata": {"labels": {"app.kubernetes.io/name": "b", "z": "2"}}, "spec": [1, 2]}
    ops = json_patch(old, new)
    assert {
        "op": "replace",
        "path": "/metadata/labels/app.kubernetes.io~1name",
        "value": "b",
    } in ops
    assert {"op": "remove", "path": "/metadata/labels/x~0y"} in ops
    assert {"op": "replace", "path": "/spec", "value": [1, 2]} in ops  # lists go whole
    assert apply_json_patch(old, ops) == new
    assert json_patch(new, new) == []


def test_normalize_takes_out_helm_and_the_namespace() -> None:
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "x",
            "namespace": "atelier",
            "labels": {"helm.sh/chart": "atelier-0.1.0", "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"helm.sh/resource-policy": "keep", "keep": "me"},
        },
        "spec": {"template": {"metadata": {"labels": {"helm.sh/chart": "c", "app": "x"}}}},
    }
    out = normalize(obj)
    assert "namespace" not in out["metadata"] and "labels" not in out["metadata"]
    assert out["metadata"]["annotations"] == {"keep": "me"}
    assert out["spec"]["template"]["metadata"]["labels"] == {"app": "x"}
    assert obj["metadata"]["namespace"] == "atelier", "the input is not changed"
    hook = {"metadata": {"annotations": {"helm.sh/hook": "test"}}}
    assert k8s_sync.is_hook(hook) and not k8s_sync.is_hook(obj)
    # Secrets stay out of k8s/: the chart generates the database password on every render.
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x-postgresql"}}
    assert k8s_sync.is_left_out(secret) and k8s_sync.is_left_out(hook)
    assert not k8s_sync.is_left_out(obj)


def cm(name: str, data: str) -> tuple[Key, dict[str, Any]]:
    return ("v1", "ConfigMap", name), {"metadata": {"name": name}, "data": {"d": data}}


def test_plan_reproduces_every_context_or_reports_a_conflict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        k8s_sync,
        "FEATURE_BY_NAME",
        {"a": k8s_sync.Feature("a", (), "a"), "b": k8s_sync.Feature("b", (), "b")},
    )
    base = dict([cm("shared", "0")])
    renders = {
        frozenset(): base,
        # a adds a ConfigMap and changes the shared one
        frozenset({"a"}): dict([cm("shared", "a"), cm("only-a", "a")]),
        frozenset({"b"}): dict([cm("shared", "0"), cm("only-b", "b")]),
        # with a, b also drops a's ConfigMap: a patch-free delete that is a no-op without a
        frozenset({"a", "b"}): dict([cm("shared", "a"), cm("only-b", "b")]),
    }
    (pa, pb) = plan(("a", "b"), renders)
    assert not pa.conflicts and not pb.conflicts
    assert set(pa.adds) == {("v1", "ConfigMap", "only-a")}
    assert set(pb.deletes) == {("v1", "ConfigMap", "only-a")}
    # b adds a ConfigMap only when a is absent: a static resource cannot do that.
    renders[frozenset({"a", "b"})] = dict([cm("shared", "a"), cm("only-a", "a")])
    (_, pb) = plan(("a", "b"), renders)
    assert pb.conflicts
