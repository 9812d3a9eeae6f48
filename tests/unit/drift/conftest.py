"""Fixtures of the drift tests: a model store made without training."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.drift_store import publish_version


@pytest.fixture
def model_store(tmp_path: Path) -> Path:
    """A store whose current version "1" of the model has 10 classes."""
    path = tmp_path / "store"
    publish_version(path, "1", 10)
    return path
