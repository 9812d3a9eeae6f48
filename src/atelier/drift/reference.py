"""The reference a window is compared with: the profile saved with the served model version.

Also which versions the model store has published (`VersionCatalog`): a record is judged
only against a version that exists, and only for a class that version has.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from atelier.runtime.errors import ReferenceUnavailableError
from atelier.runtime.features import ALL_FEATURES

if TYPE_CHECKING:
    import pandas as pd
# What a model name or version may be: it becomes a folder and a file name in the store, so
# no separators, no "." or "..", bounded. `atelier archive` only writes names like these.
SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN)
# The archive's copy of the model's spec (atelier.runtime.inference.MODEL_CONFIG_FILE; that
# module imports torch, which the sidecar does not install).
MODEL_CONFIG_FILE = "model_config.json"


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
    try:
        cur = json.loads(path.read_text())
        return str(cur["name"]), str(cur["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReferenceUnavailableError(f"{path} is unreadable: {exc}") from exc


def archive_path(store: Path, name: str, version: str) -> Path:
    """Where a published version's .mar lives: ``<store>/versions/<version>/model-store/``."""
    if not (_SAFE_NAME.fullmatch(name) and _SAFE_NAME.fullmatch(version)):
        raise ReferenceUnavailableError(
            f"model {name[:70]!r} version {version[:70]!r} is not a name the store can hold"
        )
    return store / "versions" / version / "model-store" / f"{name}.mar"


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
    mar = archive_path(store, name, version)
    if not mar.is_file():
        raise ReferenceUnavailableError(f"no archive for model version {version}: {mar} is missing")
    return name, version, mar


def model_spec(store: Path, version: str | None = None) -> ModelSpec:
    """Class names and test accuracy of a published version (None: the current one)."""
    name, version, mar = _mar(store, version)
    try:
        with zipfile.ZipFile(mar) as z:
            metrics = json.loads(z.read("metrics.json"))
            spec = json.loads(z.read(MODEL_CONFIG_FILE))
    except (KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise ReferenceUnavailableError(f"{mar}: no usable model config ({exc})") from exc
    return ModelSpec(name, version, list(spec["class_names"]), float(metrics["test_accuracy"]))


def load_reference(store: Path, version: str | None = None) -> Reference:
    """Read the reference profile, class names and accuracy from a version's .mar."""
    import pandas as pd

    spec = model_spec(store, version)
    _, _, mar = _mar(store, spec.version)
    try:
        with zipfile.ZipFile(mar) as z:
            profile = pd.read_csv(io.BytesIO(z.read("reference_profile.csv")))
    except (KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise ReferenceUnavailableError(f"{mar}: no usable reference profile ({exc})") from exc
    missing = [c for c in ALL_FEATURES if c not in profile.columns]
    if missing:
        raise ReferenceUnavailableError(f"{mar}: reference profile lacks {', '.join(missing)}")
    return Reference(spec.model_name, spec.version, profile, spec.class_names, spec.accuracy)


@dataclass(frozen=True)
class PublishedVersion:
    model_name: str
    version: str
    num_classes: int  # len(class_names) of the version's model_config.json


class VersionCatalog:
    """The versions the store has published, each with its class count, looked up by name.

    A version is published when its .mar exists (`archive_path`) under the model name of
    CURRENT.json. Versions are immutable, so a version found is remembered for good; a miss
    is remembered for ``miss_ttl_s`` only (a flood of records naming an unknown version costs
    one look at the store per second, and a version published later is found). Safe to
    share between threads.
    """

    def __init__(self, store: Path, miss_ttl_s: float = 1.0, max_misses: int = 1024) -> None:
        self.store = Path(store)
        self.miss_ttl_s = miss_ttl_s
        self.max_misses = max_misses
        self._found: dict[tuple[str, str], PublishedVersion] = {}
        self._missed: dict[tuple[str, str], float] = {}  # -> when the miss expires
        self._name: tuple[str, float] | None = None  # CURRENT.json's name, until when
        self._lock = threading.Lock()

    def model_name(self) -> str:
        """The store's model name (CURRENT.json, re-read after ``miss_ttl_s``); raises
        `ReferenceUnavailableError` when the store has published nothing readable."""
        now = time.monotonic()
        with self._lock:
            if self._name is not None and self._name[1] > now:
                return self._name[0]
        name, _ = current_version(self.store)
        with self._lock:
            self._name = (name, now + self.miss_ttl_s)
        return name

    def lookup(self, model_name: str, version: str) -> PublishedVersion | None:
        """The published version, or None when the store has no such model or version.

        Raises `ReferenceUnavailableError` when the store cannot say (no CURRENT.json)."""
        key = (model_name, version)
        found = self._found.get(key)  # the hot path: one dict read (atomic), no lock
        if found is not None:
            return found
        now = time.monotonic()
        with self._lock:
            if self._missed.get(key, 0.0) > now:
                return None
        found = self._read(model_name, version)
        with self._lock:
            if found is not None:
                self._found[key] = found
                self._missed.pop(key, None)
            else:
                if len(self._missed) >= self.max_misses:
                    self._missed = {k: t for k, t in self._missed.items() if t > now}
                    if len(self._missed) >= self.max_misses:
                        self._missed.clear()
                self._missed[key] = now + self.miss_ttl_s
        return found

    def _read(self, model_name: str, version: str) -> PublishedVersion | None:
        if model_name != self.model_name():
            return None
        if not (_SAFE_NAME.fullmatch(model_name) and _SAFE_NAME.fullmatch(version)):
            return None
        mar = archive_path(self.store, model_name, version)
        try:
            with zipfile.ZipFile(mar) as z:
                class_names = json.loads(z.read(MODEL_CONFIG_FILE))["class_names"]
        except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
            return None  # no archive, or one without a usable spec: nothing to judge against
        if not isinstance(class_names, list) or not class_names:
            return None
        return PublishedVersion(model_name, version, len(class_names))
