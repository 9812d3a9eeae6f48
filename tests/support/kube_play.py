"""`podman kube play` for the pod tests: play, inspect, wait, exec, tear down.

Every command goes through support.podman.podman (atelier's private configuration, read from
scripts/podman-env.sh). What kube play 4.3.1 does that these helpers rely on (checked on this
machine):
- it blocks until a pod's init containers have run, and removes them once they exited 0;
- an emptyDir becomes a volume named after the emptyDir (shared by every pod that names one
  the same way), removed with its pod; a ConfigMap volume becomes a named volume called after
  the ConfigMap, which `kube down` leaves behind;
- a persistentVolumeClaim mounts the named volume called after the claim;
- pods join the network ``podman-default-kube-network`` (created on first use, its definition
  written to /etc/containers/networks/), whose addresses the host reaches directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.podman import podman

KUBE_NETWORK = "podman-default-kube-network"


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def volume_exists(name: str) -> bool:
    return podman("volume", "exists", name, check=False).returncode == 0


def create_bind_volume(name: str, folder: Path) -> None:
    """A named volume that is ``folder`` (what a PersistentVolumeClaim of that name mounts)."""
    podman("volume", "create", "-o", "type=none", "-o", "o=bind", "-o", f"device={folder}", name)


def remove_volume(name: str) -> bool:
    """Remove a volume if it exists; True when one was removed."""
    if not volume_exists(name):
        return False
    podman("volume", "rm", name)
    return True


def network_exists(name: str) -> bool:
    return podman("network", "exists", name, check=False).returncode == 0


def network_in_use(name: str) -> bool:
    """Does any container (of any pod, running or not) use the network?"""
    out = podman("ps", "-a", "--filter", f"network={name}", "--format", "{{.ID}}").stdout
    return bool(out.strip())


@dataclass(frozen=True)
class Played:
    """What one ``podman kube play`` did."""

    returncode: int
    pod_ids: list[str]
    seconds: float
    output: str


def kube_play(path: Path, timeout: float = 600) -> Played:
    """``podman kube play FILE``: returns once the pods started (their init containers ran).

    A failed init container makes it exit non-zero; the pod and that container are kept
    (their logs tell why), so the caller decides what to report.
    """
    started = time.monotonic()
    result = podman("kube", "play", str(path), timeout=timeout, check=False)
    pods: list[str] = []
    lines = result.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Pod:" and i + 1 < len(lines):
            pods.append(lines[i + 1].strip())
    output = (result.stdout + result.stderr).strip()
    return Played(result.returncode, pods, time.monotonic() - started, output)


def kube_down(path: Path) -> None:
    """``podman kube down FILE``; a pod that is already gone (or never started) is no error."""
    result = podman("kube", "down", str(path), timeout=180, check=False)
    if result.returncode != 0 and "no such pod" not in result.stderr:
        raise AssertionError(f"podman kube down {path.name} failed: {result.stderr.strip()}")


def pods_named(prefix: str) -> list[str]:
    """Names of the pods whose name starts with ``prefix``."""
    out = podman("pod", "ps", "--format", "{{.Name}}").stdout
    return [n for n in out.split() if n.startswith(prefix)]


def volumes_named(prefix: str) -> list[str]:
    out = podman("volume", "ls", "--format", "{{.Name}}").stdout
    return [n for n in out.split() if n.startswith(prefix)]


def containers_named(prefix: str) -> list[str]:
    out = podman("ps", "-a", "--format", "{{.Names}}").stdout
    return [n for n in out.split() if n.startswith(prefix)]


def inspect(kind: str, ref: str) -> dict[str, Any]:
    """``podman <kind> inspect REF`` as one JSON object."""
    data = json.loads(podman(kind, "inspect", ref).stdout)
    return data[0] if isinstance(data, list) else data


@dataclass(frozen=True)
class PodInfo:
    name: str
    infra_id: str
    containers: dict[str, str]  # container name in the spec -> podman container id


def pod_info(pod: str) -> PodInfo:
    """A pod's name, infra container and containers (named as in the spec, without the
    ``<pod>-`` prefix kube play gives them)."""
    data = inspect("pod", pod)
    name = data["Name"]
    containers = {}
    for c in data.get("Containers", []):
        if c["Id"] == data["InfraContainerID"]:
            continue
        containers[c["Name"].removeprefix(f"{name}-")] = c["Id"]
    return PodInfo(name, data["InfraContainerID"], containers)


def pod_ip(pod: PodInfo) -> str:
    """The pod's address on its (kube play) network, read from its infra container."""
    networks = inspect("container", pod.infra_id)["NetworkSettings"].get("Networks") or {}
    addresses = [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]
    if len(addresses) != 1:
        raise AssertionError(f"pod {pod.name}: expected one address, found {addresses}")
    return addresses[0]


def wait_exited(container: str, timeout: float) -> int:
    """Wait for a container to exit; its exit code."""
    out = podman("wait", "--condition", "exited", container, timeout=timeout).stdout
    return int(out.strip().splitlines()[-1])


def container_state(container: str) -> dict[str, Any]:
    return inspect("container", container)["State"]


def logs(container: str, tail: int = 60) -> str:
    """The last ``tail`` lines a container wrote (podman 4.3.1's ``logs --tail`` can print
    nothing, so the whole log is read and cut here)."""
    result = podman("logs", container, check=False)
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-tail:])
