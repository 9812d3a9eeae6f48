"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest

from atelier.training.tracking import local_store_uri


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One local MLflow store (SQLite) for the session: creating one runs MLflow's migrations
    (seconds), so the tracking tests of atelier train and atelier tune share it."""
    return local_store_uri(tmp_path_factory.mktemp("mlflow") / "run")
