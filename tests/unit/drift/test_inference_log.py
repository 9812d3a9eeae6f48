"""The inference log's schema: the Alembic migrations build exactly `atelier.drift.schema`."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from atelier.drift.inference_log import InferenceLog
from atelier.drift.schema import metadata

pytestmark = pytest.mark.unit


def test_the_migrations_build_the_schema_the_code_uses(tmp_path: Path) -> None:
    log = InferenceLog(f"sqlite:///{tmp_path / 'log.db'}")
    head = log.migrate()
    assert log.migrate() == head  # a second start migrates nothing
    with log.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    log.close()
    assert diff == [], diff
