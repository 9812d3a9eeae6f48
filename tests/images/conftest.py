"""Fixtures of the image tests: the four images, built once per session with podman.

`scripts/build-images.sh --local-base` builds them exactly as a developer would on this
machine (a debootstrap base, since no registry is reachable; the layer cache under
~/.cache/atelier/podman is reused between sessions). `make test` starts that build in the
background and names its log in ATELIER_IMAGES_BUILD_LOG; pytest run alone builds here.
Only the tests marked ``podman`` ask for them; the static Dockerfile tests need no engine.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from support.podman import BUILD_SCRIPT, ROOT, BuiltImage, podman_env

IMAGES = ("training", "serving", "drift", "kserve")
BUILT = re.compile(r"^build-images: (atelier-(\w+):(\S+)) in (\d+) s, (\d+) MB$", re.M)
EXITED = re.compile(r"^build-images: exit (\d+)$", re.M)
# Set by `make test`, which starts the build in the background (Makefile).
BUILD_LOG_ENV = "ATELIER_IMAGES_BUILD_LOG"


def build_log_of_make(timeout: float = 3600) -> tuple[int, str]:
    """Wait for the background build `make test` started: (exit code, its log)."""
    log = Path(os.environ[BUILD_LOG_ENV])
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.is_file() else ""
        found = EXITED.search(text)
        if found:
            return int(found.group(1)), text
        if time.monotonic() > deadline:
            pytest.fail(f"the background image build ({log}) did not end in {timeout:.0f} s")
        time.sleep(2)


def build_here(log: Path) -> tuple[int, str]:
    """Build the four images now (pytest run without make): (exit code, its log)."""
    with log.open("w") as out:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--local-base", *IMAGES],
            cwd=ROOT, env=podman_env(), stdout=out, stderr=subprocess.STDOUT, timeout=3600,
            check=False,
        )  # fmt: skip
    return proc.returncode, log.read_text(errors="replace")


@pytest.fixture(scope="session")
def built_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltImage]:
    """The four images (cached layers reused); fails with the build's log."""
    podman_env()  # fails naming scripts/setup.sh when podman is missing
    start = time.monotonic()
    if os.environ.get(BUILD_LOG_ENV):
        code, text = build_log_of_make()
        where = os.environ[BUILD_LOG_ENV]
    else:
        code, text = build_here(tmp_path_factory.mktemp("build") / "build-images.log")
        where = "this session"
    if code != 0:
        pytest.fail(f"scripts/build-images.sh exited {code} ({where}):\n{text[-6000:]}")
    built = {
        m.group(2): BuiltImage(m.group(2), m.group(1), int(m.group(4)), int(m.group(5)))
        for m in BUILT.finditer(text)
    }
    assert sorted(built) == sorted(IMAGES), text[-3000:]
    print(f"\nimages built ({where}; waited {time.monotonic() - start:.0f} s): " + ", ".join(
        f"{b.ref} {b.size_mb} MB ({b.seconds} s)" for b in built.values()
    ))  # fmt: skip
    return built
