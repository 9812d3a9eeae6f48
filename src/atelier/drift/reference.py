"""The reference a window is compared with: the profile saved with the served model version."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from atelier.runtime.errors import ReferenceUnavailableError
from atelier.runtime.features import ALL_FEATURES

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Reference:
    model_name: str
    version: str
    profile: pd.DataFrame  # columns ALL_FEATURES (+ label)
    class_names: list[str]
    accuracy: float  # test accuracy from the version's metrics.json

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def current_version(store: Path) -> tuple[str, str]:
    path = store / "CURRENT.json"
    if not path.is_file():
        raise ReferenceUnavailableError(f"{path} does not exist: no model published in {store}")
    cur = json.loads(path.read_text())
    return str(cur["name"]), str(cur["version"])


@dataclass(frozen=True)
class ModelSpec:
    """What feedback needs of a version: no profile, so no pandas (every sidecar loads it)."""

    model_name: str
    version: str
    class_names: list[str]
    accuracy: float


def _mar(store: Path, version: str | None) -> tuple[str, str, Path]:
    name, current = current_version(store)
    version = version or current
    mar = store / "versions" / version / "model-store" / f"{name}.mar"
    if not mar.is_file():
        raise ReferenceUnavailableError(f"no archive for model version {version}: {mar} is missing")
    return name, version, mar


def model_spec(store: Path, version: str | None = None) -> ModelSpec:
    """Class names and test accuracy of a published version (None: the current one)."""
    name, version, mar = _mar(store, version)
    try:
        with zipfile.ZipFile(mar) as z:
            metrics = json.loads(z.read("metrics.json"))
            spec = json.loads(z.read("model_config.json"))
    except (KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise ReferenceUnavailableError(f"{mar}: no usable model config ({exc})") from exc
    return ModelSpec(name, version, list(spec["class_names"]), float(metrics["test_accuracy"]))


def load_reference(store: Path, version: str | None = None) -> Reference:
    """Read the reference profile, class names and accuracy from a version's .mar."""
    import pandas as pd

    name, version, mar = _mar(store, version)
    try:
        with zipfile.ZipFile(mar) as z:
            profile = pd.read_csv(io.BytesIO(z.read("reference_profile.csv")))
            metrics = json.loads(z.read("metrics.json"))
            spec = json.loads(z.read("model_config.json"))
    except (KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise ReferenceUnavailableError(f"{mar}: no usable reference profile ({exc})") from exc
    missing = [c for c in ALL_FEATURES if c not in profile.columns]
    if missing:
        raise ReferenceUnavailableError(f"{mar}: reference profile lacks {', '.join(missing)}")
    return Reference(
        name, version, profile, list(spec["class_names"]), float(metrics["test_accuracy"])
    )
