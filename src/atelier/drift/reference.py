"""The reference a window is compared with: the profile saved with the served model version."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from atelier.runtime.errors import ReferenceUnavailableError
from atelier.runtime.features import ALL_FEATURES


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


def load_reference(store: Path, version: str | None = None) -> Reference:
    """Read the reference profile, class names and accuracy from a version's .mar."""
    name, current = current_version(store)
    version = version or current
    mar = store / "versions" / version / "model-store" / f"{name}.mar"
    if not mar.is_file():
        raise ReferenceUnavailableError(f"no archive for model version {version}: {mar} is missing")
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
