"""Podman for the image tests, always with atelier's private configuration.

`scripts/podman-env.sh` is the one source of that configuration (runtime, ulimits, the store
under ~/.cache/atelier/podman); this module reads its NAME=value lines and runs podman with
them, so the tests, `scripts/build-images.sh` and a developer's shell share one store and
one layer cache.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = ROOT / "scripts" / "podman-env.sh"
BUILD_SCRIPT = ROOT / "scripts" / "build-images.sh"


class PodmanMissingError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuiltImage:
    """One image built by scripts/build-images.sh (the ``built_images`` fixture)."""

    name: str  # training, serving or drift
    ref: str  # atelier-<name>:<tag>, the name the chart renders
    seconds: int  # this session's build, warm or cold
    size_mb: int


@functools.cache
def podman_env() -> dict[str, str]:
    """The process environment plus the private podman configuration."""
    if shutil.which("podman") is None:
        raise PodmanMissingError("podman is not installed: run scripts/setup.sh (make setup)")
    out = subprocess.run(
        ["bash", str(ENV_SCRIPT), "--print"], capture_output=True, text=True, check=True
    ).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            env[name] = value
    return env


def podman(
    *args: str, check: bool = True, timeout: float = 600, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` with the private configuration; output captured as text."""
    proc = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        env=podman_env(),
        timeout=timeout,
        input=input_text,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc
