"""Everything the project installs is pinned by name and version, and nothing points at a
developer's machine.

A constraints line such as ``pkg @ file:///tmp/x.whl`` installs on the machine that wrote it
and fails on every other one; CI runs on that same machine, so only a test that reads the
files catches it. The same goes for any absolute path of a developer's machine committed in
a text file.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# name==version (an optional [extra]); versions may carry an epoch ("1769699379!11.6.0").
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.!+_-]+$")
# A pyproject requirement: a name, optional extras, an optional version range. No URL
# ("name @ ..."), no path, no environment-specific tricks.
RANGE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?"
    r"(\s*(==|>=|<=|~=|!=|<|>)\s*[A-Za-z0-9.!+*_-]+(\s*,\s*(==|>=|<=|~=|!=|<|>)\s*[A-Za-z0-9.!+*_-]+)*)?$"
)
# A file a Dockerfile hands to pip with -r/-c/--requirement/--constraint.
PIP_FILE_FLAG = re.compile(r"(?:^|\s)(?:-r|-c|--requirement|--constraint)[\s=]+(\S+\.txt)\b")


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / p for p in out.split("\0") if p]


def requirement_files() -> list[Path]:
    """constraints*.txt / requirements*.txt anywhere, plus any file a Dockerfile gives pip."""
    files = {
        p
        for p in tracked_files()
        if re.fullmatch(r"(constraints|requirements)[\w.-]*\.txt", p.name)
    }
    for dockerfile in (p for p in tracked_files() if p.name == "Dockerfile"):
        for match in PIP_FILE_FLAG.finditer(dockerfile.read_text()):
            name = Path(match.group(1)).name
            candidates = [p for p in tracked_files() if p.name == name]
            assert candidates, (
                f"{dockerfile.relative_to(ROOT)}: pip reads {match.group(1)}, "
                "which is not a file of the repository"
            )
            files.update(candidates)
    return sorted(files)


def pin_problems(path: Path, text: str) -> Iterator[str]:
    """Every line of a requirements/constraints file that is not a plain name==version."""
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            yield f"{rel}:{number}: pip option {line!r} (no -e, -r, --find-links, --index-url...)"
        elif not PIN.match(line):
            yield f"{rel}:{number}: {line!r} is not a plain name==version pin"


def pyproject_problems(path: Path, data: dict) -> Iterator[str]:
    """Every pyproject dependency that is not a plain name with an optional version range."""
    lists: dict[str, list[str]] = {
        "build-system.requires": data.get("build-system", {}).get("requires", []),
        "project.dependencies": data.get("project", {}).get("dependencies", []),
    }
    for extra, deps in data.get("project", {}).get("optional-dependencies", {}).items():
        lists[f"project.optional-dependencies.{extra}"] = deps
    for where, deps in lists.items():
        for dep in deps:
            if not RANGE.match(dep.strip()):
                yield f"{path.name} {where}: {dep!r} is not a plain name (with a version range)"


def test_every_install_file_holds_plain_pins_only() -> None:
    files = requirement_files()
    assert {p.name for p in files} >= {"constraints.txt", "constraints-tools.txt"}
    problems = [msg for path in files for msg in pin_problems(path, path.read_text())]
    assert not problems, "\n".join(problems)


def test_pyproject_dependencies_are_plain_requirements() -> None:
    path = ROOT / "pyproject.toml"
    problems = list(pyproject_problems(path, tomllib.loads(path.read_text())))
    assert not problems, "\n".join(problems)


def test_torch_is_pinned_to_the_local_cpu_build() -> None:
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    all_deps = [*project["dependencies"]]
    for deps in project.get("optional-dependencies", {}).values():
        all_deps += deps
    torch = [d for d in all_deps if re.match(r"^torch\b(?![-_])", d)]
    assert torch and all(d == "torch==2.13.0" for d in torch), torch


@pytest.mark.parametrize(
    "line",
    [
        "types-PyYAML @ file:///tmp/tp/types_pyyaml-6.0.12.20261113-py3-none-any.whl#sha256=00",
        "pkg @ https://example.org/pkg-1.0.tar.gz",
        "/opt/wheels/torch-2.13.0-cp311-cp311-linux_x86_64.whl",
        "./vendor/pkg-1.0.whl",
        "-e .",
        "--find-links /opt/wheels",
        "--index-url https://example.org/simple",
        "--extra-index-url=https://example.org/simple",
        "requests",
        "requests>=2",
        "git+https://example.org/pkg.git",
    ],
)
def test_the_check_refuses_what_breaks_a_fresh_machine(line: str, tmp_path: Path) -> None:
    path = tmp_path / "constraints.txt"
    problems = list(pin_problems(path, f"numpy==2.4.6\n{line}\n"))
    assert len(problems) == 1 and ":2:" in problems[0], problems


@pytest.mark.parametrize(
    "dep", ["pkg @ file:///tmp/pkg.whl", "pkg @ https://example.org/p.whl", "/abs/path/pkg"]
)
def test_the_pyproject_check_refuses_urls_and_paths(dep: str) -> None:
    data = {"project": {"dependencies": ["numpy==2.4.6", dep]}}
    assert len(list(pyproject_problems(Path("pyproject.toml"), data))) == 1


# --- Paths of a developer's machine ------------------------------------------------------

MACHINE_PATH = re.compile(r"(?<![\w.$-])/(?:tmp|root|home)/[^\s\"'`)\]}>,;:]*")
# Paths that exist inside our images and pods, not on anybody's machine: each is created
# or named by a Dockerfile, the chart, or the kustomize copies of its renders.
CONTAINER_PATHS = (
    "/tmp/logs",  # TorchServe's LOG_LOCATION/METRICS_LOCATION in the serving container
    "/tmp/matplotlib",  # MPLCONFIGDIR in the training and drift containers
    "/tmp/rclone.conf",  # the model store's object-store init container
    "/tmp/rclone-cache",
    "/tmp/probe",  # tests/images: the file the image tests try to write inside a container
    "/home/atelier",  # the training and drift images' user (uid 10001)
    "/home/model-server",  # the serving image's user (uid 10001)
)
# Documentation may show an example path when the same line says so.
EXAMPLE_MARKER = "example path"
TEXT_SUFFIXES = {
    ".py", ".sh", ".md", ".txt", ".toml", ".yaml", ".yml", ".json", ".tpl", ".cfg", ".ini",
    ".properties", ".template", ".example", ".env", "",
}  # fmt: skip
THIS_FILE = Path(__file__).resolve()


def machine_paths(path: Path, text: str) -> Iterator[str]:
    for number, line in enumerate(text.splitlines(), start=1):
        if EXAMPLE_MARKER in line:
            continue
        for match in MACHINE_PATH.finditer(line):
            found = match.group(0)
            if any(found == p or found.startswith(p + "/") for p in CONTAINER_PATHS):
                continue
            yield f"{path.relative_to(ROOT)}:{number}: {found}"


def test_no_path_of_a_developers_machine_is_committed() -> None:
    problems: list[str] = []
    for path in tracked_files():
        if path.resolve() == THIS_FILE or path.suffix not in TEXT_SUFFIXES:
            continue
        if path.suffix == "" and path.name not in {"Dockerfile", "Makefile", "run"}:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        problems.extend(machine_paths(path, text))
    assert not problems, "paths of a developer's machine:\n" + "\n".join(problems)


def test_the_path_check_finds_a_machine_path(tmp_path: Path) -> None:
    fake = ROOT / "README.md"
    text = "report: /tmp/lt-work/readme/ (report.html)\nlogs in /tmp/logs/ts.log\n"
    found = list(machine_paths(fake, text))
    assert found == ["README.md:1: /tmp/lt-work/readme/"]
    assert not list(machine_paths(fake, f"e.g. /home/me/data ({EXAMPLE_MARKER})\n"))
