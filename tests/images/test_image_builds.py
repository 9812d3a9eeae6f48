"""The four images, built for real with podman (scripts/build-images.sh --local-base).

What each image must be, checked inside it: it runs as uid/gid 10001; with the read-only root
filesystem the chart asks for it cannot write anywhere but its mounted /tmp, and even with a
writable one the app user cannot change the installed software; it carries what its job needs
(serving: torch 2.13.0, TorchServe and Java; training: Fashion-MNIST and the configs; drift:
the sidecar and the MLflow server, and no torch; kserve: torch 2.13.0, kserve and the KServe
runtime, no TorchServe and no Java) and lists the Debian package versions it was built with.
The ``built_images`` fixture prints each image's size and build time.
"""

from __future__ import annotations

import pytest

from support.podman import BuiltImage, podman

pytestmark = pytest.mark.podman

APP_UID = "10001"
# What each image must import or hold, checked with its own Python.
CONTENT = {
    "serving": "import torch, ts, atelier.runtime.service; "
    "assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__",
    "training": "import torch, atelier.cli; from pathlib import Path; "
    "assert Path('/usr/share/datasets/fashion-mnist').is_dir(); "
    "assert Path('/opt/atelier/configs/smoke.yaml').is_file()",
    # The drift image also runs the chart's MLflow tracking server (tracking.enabled): the
    # full mlflow with its server, psycopg for PostgreSQL, boto3 for S3 artifacts.
    "drift": "import importlib.util as u, atelier.drift.server, mlflow.server, psycopg, boto3; "
    "assert u.find_spec('torch') is None, 'torch is installed'",
    "kserve": "import importlib.util as u, shutil, torch, kserve, atelier.serving.kserve_runtime; "
    "assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__; "
    "assert u.find_spec('ts') is None, 'TorchServe is installed'; "
    "assert shutil.which('java') is None, 'Java is installed'",
}
APT_PACKAGES = {
    "serving": {"openjdk-17-jre-headless", "tini"},
    "training": {"dataset-fashion-mnist"},
    "drift": set(),
    "kserve": {"tini"},
}
IMAGE_NAMES = ["training", "serving", "drift", "kserve"]


def run_in(image: BuiltImage, *command: str, read_only: bool = False) -> tuple[int, str]:
    """``command`` in a throwaway container of ``image`` (entrypoint replaced); (rc, output)."""
    flags = ["--read-only", "--tmpfs", "/tmp"] if read_only else []
    proc = podman(
        "run", "--rm", "--network", "none", *flags, "--entrypoint", command[0], image.ref,
        *command[1:], check=False, timeout=300,
    )  # fmt: skip
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_image_runs_as_the_app_user(built_images: dict[str, BuiltImage], name: str) -> None:
    image = built_images[name]
    assert run_in(image, "id", "-u") == (0, APP_UID)
    assert run_in(image, "id", "-g") == (0, APP_UID)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_root_filesystem_cannot_be_written(built_images: dict[str, BuiltImage], name: str) -> None:
    image = built_images[name]
    # As the chart runs it (readOnlyRootFilesystem, an emptyDir on /tmp): only /tmp is writable.
    for path in ("/opt/venv/probe", "/etc/probe", "/probe"):
        rc, out = run_in(image, "touch", path, read_only=True)
        assert rc != 0 and "Read-only file system" in out, (path, rc, out)
    rc, out = run_in(image, "sh", "-c", "cd && touch probe", read_only=True)
    assert rc != 0 and "Read-only file system" in out, ("home", rc, out)
    assert run_in(image, "touch", "/tmp/probe", read_only=True) == (0, "")
    # Even on a writable root the app user cannot change what is installed.
    for path in ("/opt/venv/bin/probe", "/usr/local/probe", "/etc/probe"):
        rc, out = run_in(image, "touch", path)
        assert rc != 0 and "Permission denied" in out, (path, rc, out)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_image_holds_what_its_job_needs(built_images: dict[str, BuiltImage], name: str) -> None:
    image = built_images[name]
    assert run_in(image, "python", "-c", CONTENT[name]) == (0, "")
    if name == "serving":
        rc, out = run_in(image, "java", "-version")
        assert rc == 0 and 'version "17.' in out, out
    if APT_PACKAGES[name]:
        rc, out = run_in(image, "cat", "/usr/share/atelier/apt-packages.txt")
        assert rc == 0, out
        listed = dict(line.split("=", 1) for line in out.splitlines())
        assert set(listed) == APT_PACKAGES[name] and all(listed.values()), listed
