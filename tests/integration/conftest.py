"""Real model servers on 127.0.0.1, started once per session and stopped by the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from atelier.tools.kserve import KServeRuntime, KServeSettings
from atelier.tools.torchserve import TorchServe, TorchServeSettings
from atelier.training.archive import ArchiveResult

MODEL = "fashion-mnist"


def store_root(result: ArchiveResult) -> Path:
    return result.version_dir.parent.parent


@pytest.fixture(scope="session")
def spool_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("spool")
    return {"torchserve": base / "torchserve", "kserve": base / "kserve"}


@pytest.fixture(scope="session")
def torchserve_server(
    smoke_store: ArchiveResult,
    tmp_path_factory: pytest.TempPathFactory,
    spool_dirs: dict[str, Path],
) -> Iterator[TorchServe]:
    ts = TorchServe(
        TorchServeSettings(
            store=store_root(smoke_store),
            run_dir=tmp_path_factory.mktemp("torchserve"),
            model_name=MODEL,
            extra_env={"ATELIER_SPOOL_DIR": str(spool_dirs["torchserve"])},
        )
    )
    with ts:
        yield ts


@pytest.fixture(scope="session")
def kserve_server(
    smoke_store: ArchiveResult,
    tmp_path_factory: pytest.TempPathFactory,
    spool_dirs: dict[str, Path],
) -> Iterator[KServeRuntime]:
    runtime = KServeRuntime(
        KServeSettings(
            store=store_root(smoke_store),
            run_dir=tmp_path_factory.mktemp("kserve"),
            model_name=MODEL,
            extra_env={"ATELIER_SPOOL_DIR": str(spool_dirs["kserve"])},
        )
    )
    with runtime:
        yield runtime


@pytest.fixture(scope="session", params=["torchserve", "kserve"])
def server(request: pytest.FixtureRequest):
    """Each protocol test runs against both runtimes."""
    return request.getfixturevalue(f"{request.param}_server")
