"""Tests for atelier.tools.torchserve: a worker's load failure ends the wait at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.runtime.errors import MODEL_LOAD_FAILED, ServerError
from atelier.tools.torchserve import TorchServe, TorchServeSettings

pytestmark = pytest.mark.unit

WORKER_LINE = (
    "2026-12-01T11:00:00,000 [INFO ] W-9000-m_1-stdout MODEL_LOG - "
    f"{MODEL_LOAD_FAILED} serving setting ATELIER_SPOOL_BACKUPS='x' is not a whole number: ..."
)


def server(tmp_path: Path) -> TorchServe:
    run = tmp_path / "run"
    run.mkdir()
    return TorchServe(TorchServeSettings(store=tmp_path / "store", run_dir=run, model_name="m"))


def test_no_log_or_no_failure_is_no_failure(tmp_path: Path) -> None:
    ts = server(tmp_path)
    assert ts.load_failure() is None
    ts.log_path.write_text("starting\nmodel loading\n")
    assert ts.load_failure() is None


def test_the_failure_line_is_found_once_complete(tmp_path: Path) -> None:
    ts = server(tmp_path)
    ts.log_path.write_text("starting\n" + WORKER_LINE)  # the line is still being written
    assert ts.load_failure() is None
    with ts.log_path.open("a") as fh:
        fh.write("\n")
    found = ts.load_failure()
    assert found is not None
    assert found.startswith("serving setting ATELIER_SPOOL_BACKUPS='x'")


def test_is_ready_raises_the_reason(tmp_path: Path) -> None:
    ts = server(tmp_path)
    ts.log_path.write_text(WORKER_LINE + "\n")
    with pytest.raises(ServerError, match=r"model m failed to load on TorchServe: .*SPOOL_BACKU"):
        ts.is_ready()
