"""Reading rendered pod specs in chart tests: a container by name, its env, mounts, volumes."""

from __future__ import annotations

from typing import Any


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """The one container (or init container) called ``name``."""
    (found,) = [
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name
    ]
    return found


def env(c: dict[str, Any]) -> dict[str, Any]:
    """Env var name -> its value, or its valueFrom."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mounts(c: dict[str, Any]) -> dict[str, str]:
    """Mount path -> volume name."""
    return {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}


def volumes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in spec["volumes"]}
