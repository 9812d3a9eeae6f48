"""Bad input on the command line: a non-zero exit and one line naming the problem and the fix."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.training.loop import RunResult

pytestmark = pytest.mark.unit

SMOKE = "training-job/configs/smoke.yaml"


# These tests are about other failures: untracked, so no MLflow store is made for each
# (tests/unit/training/test_tracking.py and tests/integration/test_mlflow.py cover tracking).
UNTRACKED = {"ATELIER_TRACKING": "off"}


def atelier(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atelier", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd or Path(__file__).resolve().parents[3],
        check=False,
        env={**os.environ, **UNTRACKED, **(env or {})},
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unknown_key_in_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    proc = atelier("train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "train.epoch: unknown key" in error_line(proc)
    assert not (tmp_path / "run").exists()


def test_wrong_type_in_set(tmp_path: Path) -> None:
    proc = atelier(
        "train", "--config", SMOKE, "--set", "train.epochs=many", "--out", str(tmp_path / "r")
    )
    assert proc.returncode == 2
    assert "train.epochs" in error_line(proc) and "many" in error_line(proc)


def test_missing_data_names_the_apt_command(tmp_path: Path) -> None:
    proc = atelier(
        "train",
        "--config",
        SMOKE,
        "--set",
        f"data.path={tmp_path / 'nothing'}",
        "--out",
        str(tmp_path / "r"),
    )
    assert proc.returncode == 3
    line = error_line(proc)
    assert "does not exist" in line and "fix: apt-get install -y dataset-fashion-mnist" in line


def test_corrupt_idx_file(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    data = tmp_path / "fmnist"
    shutil.copytree(fashion_mnist_dir, data)
    images = data / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:5000])  # truncated download
    proc = atelier(
        "train", "--config", SMOKE, "--set", f"data.path={data}", "--out", str(tmp_path / "r")
    )
    assert proc.returncode == 3
    assert "train-images-idx3-ubyte.gz: cannot be read" in error_line(proc)


def test_wrong_magic_number(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    data = tmp_path / "fmnist"
    shutil.copytree(fashion_mnist_dir, data)
    # Labels where images should be: a valid IDX file of the wrong kind.
    labels = gzip.decompress((data / "train-labels-idx1-ubyte.gz").read_bytes())
    (data / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(labels))
    proc = atelier(
        "train", "--config", SMOKE, "--set", f"data.path={data}", "--out", str(tmp_path / "r")
    )
    assert proc.returncode == 3
    assert "magic number 0x00000801, expected 0x00000803" in error_line(proc)


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((28, 28), value, dtype=np.uint8)).save(path)


def folder_args(root: Path) -> list[str]:
    return [
        "--set",
        "data.source=folder",
        "--set",
        f"data.path={root}",
        "--set",
        "data.train_limit=null",
    ]


def test_single_class_image_folder(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "images" / "only" / f"{i}.png", 10 * i)
    proc = atelier(
        "train", "--config", SMOKE, *folder_args(tmp_path / "images"), "--out", str(tmp_path / "r")
    )
    assert proc.returncode == 3
    assert "at least 2 are needed" in error_line(proc)


def test_empty_class_folder(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a" / "0.png", 10)
    (tmp_path / "images" / "b").mkdir()
    proc = atelier(
        "train", "--config", SMOKE, *folder_args(tmp_path / "images"), "--out", str(tmp_path / "r")
    )
    assert proc.returncode == 3
    line = error_line(proc)
    assert "images/b has no .png/.jpg images" in line and "fix:" in line


def test_gate_failure_exits_non_zero(tmp_path: Path) -> None:
    proc = atelier(
        "train", "--config", SMOKE, "--set", "data.train_limit=300", "--set", "data.test_limit=100",
        "--set", "train.epochs=1", "--set", "gate.min_accuracy=0.999", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert proc.returncode == 4
    assert "below gate.min_accuracy" in error_line(proc)
    proc = atelier("archive", str(tmp_path / "r"), "--store", str(tmp_path / "store"))
    assert proc.returncode == 5
    assert "did not pass its quality gate" in error_line(proc)
    assert not (tmp_path / "store" / "model-store").exists()


def test_archive_without_weights(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    proc = atelier("archive", str(tmp_path / "run"), "--store", str(tmp_path / "store"))
    assert proc.returncode == 5
    assert "has no weights.pt" in error_line(proc)


def test_archive_existing_version(smoke_run: RunResult, tmp_path: Path) -> None:
    store = tmp_path / "store"
    ok = atelier("archive", str(smoke_run.run_dir), "--store", str(store), "--version", "7")
    assert ok.returncode == 0, ok.stderr
    assert "archived fashion-mnist version 7" in ok.stdout
    proc = atelier("archive", str(smoke_run.run_dir), "--store", str(store), "--version", "7")
    assert proc.returncode == 5
    assert "version 7 already exists" in error_line(proc)
    assert [p.name for p in (store / "versions").iterdir()] == ["7"]


def test_usage_errors_exit_2() -> None:
    proc = atelier("train")
    assert proc.returncode == 2
    assert "--config" in proc.stderr


def test_serve_ports_come_from_flags_and_env(tmp_path: Path) -> None:
    proc = atelier("serve", "--store", str(tmp_path), "--grpc-inference-port", "8085")
    assert proc.returncode != 0
    assert "--grpc-inference-port and --port are both 8085" in error_line(proc)
    env_proc = atelier("serve", "--store", str(tmp_path), env={"ATELIER_MANAGEMENT_PORT": "8082"})
    assert env_proc.returncode != 0
    assert "--metrics-port and --management-port are both 8082" in error_line(env_proc)
    bad = atelier(
        "serve", "--store", str(tmp_path), env={"ATELIER_GRPC_MANAGEMENT_PORT": "seventy"}
    )
    assert bad.returncode == 2
    assert "ATELIER_GRPC_MANAGEMENT_PORT" in bad.stderr or "grpc-management-port" in bad.stderr
