"""Load the configured data source into train / validation / test splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atelier.runtime.errors import ConfigError
from atelier.training.config import DataConfig
from atelier.training.data.folder import load_image_folder
from atelier.training.data.idx import FASHION_MNIST_CLASSES, FILES, load_fashion_mnist
from atelier.training.data.split import stratified_split, stratified_subset

TEST_SPLIT_SEED = 0


@dataclass
class Splits:
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    identity: dict[str, Any]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_fashion_mnist(cfg: DataConfig) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    if cfg.image_size != 28 or cfg.channels != 1:
        raise ConfigError(
            "data.image_size/data.channels: Fashion-MNIST is 28x28 grayscale",
            hint="use data.image_size=28 and data.channels=1 with source fashion-mnist",
        )
    arrays = load_fashion_mnist(cfg.path)
    identity = {
        "source": "fashion-mnist",
        "path": str(cfg.path),
        "files": {name: sha256_file(cfg.path / name) for name in FILES.values()},
    }
    return arrays, list(FASHION_MNIST_CLASSES), identity


def _load_folder(
    cfg: DataConfig,
) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    folder = load_image_folder(cfg.path, cfg.image_size, cfg.channels, cfg.on_unreadable)
    manifest = hashlib.sha256()
    for path in folder.files:
        rel = path.relative_to(cfg.path).as_posix()
        manifest.update(f"{rel}\t{sha256_file(path)}\n".encode())
    # The test split is fixed (seed 0) so runs with other training seeds score on the same images.
    rest, test = stratified_split(folder.y, cfg.test_fraction, TEST_SPLIT_SEED)
    arrays = {
        "train_x": folder.x[rest],
        "train_y": folder.y[rest],
        "test_x": folder.x[test],
        "test_y": folder.y[test],
    }
    identity = {
        "source": "folder",
        "path": str(cfg.path),
        "manifest_sha256": manifest.hexdigest(),
        "n_files": len(folder.files),
        "n_unreadable": len(folder.unreadable),
        "unreadable": folder.unreadable[:50],
    }
    return arrays, folder.class_names, identity


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Deterministic stratified train/validation(/test) splits of the configured source."""
    if cfg.source == "fashion-mnist":
        arrays, class_names, identity = _load_fashion_mnist(cfg)
    else:
        arrays, class_names, identity = _load_folder(cfg)
    train_x, train_y = arrays["train_x"], arrays["train_y"]
    test_x, test_y = arrays["test_x"], arrays["test_y"]
    if cfg.train_limit is not None:
        keep = stratified_subset(train_y, cfg.train_limit, seed)
        train_x, train_y = train_x[keep], train_y[keep]
    if cfg.test_limit is not None:
        keep = stratified_subset(test_y, cfg.test_limit, seed)
        test_x, test_y = test_x[keep], test_y[keep]
    fit, val = stratified_split(train_y, cfg.val_fraction, seed)
    identity["split"] = {
        "seed": seed,
        "val_fraction": cfg.val_fraction,
        "train_limit": cfg.train_limit,
        "test_limit": cfg.test_limit,
        "sizes": {"train": len(fit), "val": len(val), "test": len(test_y)},
    }
    return Splits(
        train_x=train_x[fit],
        train_y=train_y[fit],
        val_x=train_x[val],
        val_y=train_y[val],
        test_x=test_x,
        test_y=test_y,
        class_names=class_names,
        identity=identity,
    )
