"""A bad ATELIER_* serving setting stops a real server's model load, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.runtime.errors import MODEL_LOAD_FAILED, ServerError
from atelier.tools.kserve import KServeRuntime, KServeSettings
from atelier.tools.torchserve import TorchServe, TorchServeSettings
from atelier.training.archive import ArchiveResult

pytestmark = pytest.mark.integration

BAD = {"ATELIER_SPOOL_MAX_BYTES": "50MB"}
NAMED = "serving setting ATELIER_SPOOL_MAX_BYTES='50MB' is not a whole number"


def store_root(result: ArchiveResult) -> Path:
    return result.version_dir.parent.parent


def test_torchserve_worker_fails_the_load_and_the_launcher_says_why(
    smoke_store: ArchiveResult, tmp_path: Path
) -> None:
    ts = TorchServe(TorchServeSettings(store=store_root(smoke_store), run_dir=tmp_path,
                                       model_name="fashion-mnist", extra_env=BAD))  # fmt: skip
    with pytest.raises(ServerError) as info, ts:
        pass
    assert f"model fashion-mnist failed to load on TorchServe: {NAMED}" in info.value.message
    # TorchServe's own log has the worker's line with the same message, and its traceback.
    # (Not the traceback's last line: the frontend relays the worker's output line by line,
    # and the launcher stops TorchServe as soon as it has read the reason, so on a loaded
    # machine the final "ConfigError: ..." line may never reach the log.)
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.log"))
    logs += ts.log_path.read_text(errors="replace")
    assert f"{MODEL_LOAD_FAILED} {NAMED}" in logs
    assert "Traceback (most recent call last)" in logs


def test_kserve_runtime_exits_2_naming_the_variable(
    smoke_store: ArchiveResult, tmp_path: Path
) -> None:
    runtime = KServeRuntime(KServeSettings(store=store_root(smoke_store), run_dir=tmp_path,
                                           model_name="fashion-mnist", extra_env=BAD))  # fmt: skip
    with pytest.raises(ServerError, match="exited with 2"), runtime:
        pass
    assert f"error: {NAMED}" in runtime.log_path.read_text()
