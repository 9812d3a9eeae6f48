"""Fixtures of the image tests: the three images, built once per session with podman.

`scripts/build-images.sh --local-base` builds them exactly as a developer would on this
machine (a debootstrap base, since no registry is reachable; the layer cache under
~/.cache/atelier/podman is reused between sessions). Only the tests marked ``podman`` ask
for them; the static Dockerfile tests need no engine.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from support.podman import BUILD_SCRIPT, ROOT, BuiltImage, podman_env

IMAGES = ("training", "serving", "drift")
BUILT = re.compile(r"^build-images: (atelier-(\w+):(\S+)) in (\d+) s, (\d+) MB$", re.M)


@pytest.fixture(scope="session")
def built_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltImage]:
    """Build the three images (cached layers are reused); fails with the build's log."""
    env = podman_env()  # fails naming scripts/setup.sh when podman is missing
    log = tmp_path_factory.mktemp("build") / "build-images.log"
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--local-base", *IMAGES],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=3600, check=False,
        )  # fmt: skip
    text = log.read_text()
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-images.sh exited {proc.returncode}:\n{text[-6000:]}")
    built = {
        m.group(2): BuiltImage(m.group(2), m.group(1), int(m.group(4)), int(m.group(5)))
        for m in BUILT.finditer(text)
    }
    assert sorted(built) == sorted(IMAGES), text[-3000:]
    print(f"\nimages built in {time.monotonic() - start:.0f} s: " + ", ".join(
        f"{b.ref} {b.size_mb} MB ({b.seconds} s)" for b in built.values()
    ))  # fmt: skip
    return built
