"""`atelier tune` refuses bad input before it writes anything: one line naming the problem,
a non-zero exit, no output folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atelier.tools.paths import project_file

pytestmark = pytest.mark.unit

GOOD_SPACE = "params:\n  optim.lr: {type: float, low: 0.001, high: 0.1, log: true}\n"


def tune(tmp_path: Path, *args: str, space: str = GOOD_SPACE) -> subprocess.CompletedProcess[str]:
    (tmp_path / "space.yaml").write_text(space)
    cmd = [sys.executable, "-m", "atelier", "tune", "--config", "training-job/configs/smoke.yaml"]
    cmd += ["--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "out"), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=project_file("."), check=False
    )


@pytest.mark.parametrize(
    ("args", "space", "names"),
    [
        ((), "params:\n  optim.lrate: {type: float, low: 0.001, high: 0.1}\n",
         "params.optim.lrate: optim.lrate is not a training config key"),
        ((), "params:\n  optim.lr: {type: float, low: fast, high: 0.1}\n",
         "params.optim.lr.float.low: Input should be a valid number"),
        ((), "params:\n  train.epochs: {type: float, low: 1, high: 3}\n",
         "params.train.epochs: type float does not fit the key's type (int)"),
        (("--folds", "1"), GOOD_SPACE, "--folds 1: k-fold cross-validation needs at least 2"),
        (("--workers", "0"), GOOD_SPACE, "--workers 0: start at least 1 worker"),
        (("--trials", "0"), GOOD_SPACE, "--trials 0: run at least 1 trial"),
        (("--storage", "nosuchdb://x/y"), GOOD_SPACE,
         "--storage nosuchdb://x/y: not a usable database URL"),
    ],
    ids=["space-key", "space-type", "space-key-type", "folds-1", "workers-0", "trials-0",
         "storage"],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, args: tuple[str, ...], space: str, names: str
) -> None:
    proc = tune(tmp_path, *args, space=space)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert names in lines[0]
    assert not (tmp_path / "out").exists()
