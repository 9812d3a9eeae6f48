"""Shared fixtures: one smoke training run and one model store per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from atelier.tools.paths import project_file
from atelier.training.archive import ArchiveResult, archive_run
from atelier.training.config import load_config
from atelier.training.data.idx import load_fashion_mnist
from atelier.training.loop import RunResult, train

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SMOKE_CONFIG = project_file("training-job/configs/smoke.yaml")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """The smoke config trained once per session (about 15 s on 2 cores)."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    return train(load_config(SMOKE_CONFIG), out)


@pytest.fixture(scope="session")
def smoke_store(smoke_run: RunResult, tmp_path_factory: pytest.TempPathFactory) -> ArchiveResult:
    store = tmp_path_factory.mktemp("store")
    return archive_run(smoke_run.run_dir, store)


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    return FASHION_MNIST


@pytest.fixture(scope="session")
def tiny_overrides() -> Callable[..., list[str]]:
    """--set overrides for a few-second run on a small stratified subset."""

    def make(**overrides: object) -> list[str]:
        base: dict[str, object] = {
            "data.train_limit": 600,
            "data.test_limit": 200,
            "model.arch": "compact",
            "train.epochs": 1,
            "train.batch_size": 64,
            "augment.enabled": False,
            "gate.min_accuracy": 0.0,
        }
        base.update({k.replace("__", "."): v for k, v in overrides.items()})
        return [f"{k}={v}" for k, v in base.items()]

    return make


@pytest.fixture(scope="session")
def test_images(fashion_mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's 10,000 test images (N, 1, 28, 28 uint8) and labels, read once."""
    data = load_fashion_mnist(fashion_mnist_dir)
    return data["test_x"], data["test_y"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The image tests (marker podman) run last: `make test` builds their images in the
    background (Makefile), and the rest of the suite is time the build needs not be waited
    for. The sort is stable: every other test keeps its order."""
    items.sort(key=lambda item: item.get_closest_marker("podman") is not None)
