"""A model's spec: what rebuilds the network and what it is fed, and where it is read from.

``model_config.json`` is written next to the weights by training and shipped in every .mar;
``MAR-INF/MANIFEST.json`` holds the version TorchServe registers. Only the standard library
is imported, so a process without torch (the OIP front, atelier.serving.oip_front) can read
a .mar's spec; this module ships inside the .mar.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

MODEL_CONFIG_FILE = "model_config.json"
MANIFEST_FILE = "MAR-INF/MANIFEST.json"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network and feed it: written next to the weights."""

    arch: str
    in_channels: int
    image_size: int
    num_classes: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    dropout: float = 0.25
    name: str = "model"
    version: str = "0"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> ModelSpec:
        return cls(**json.loads(path.read_text()))

    @classmethod
    def from_mar(cls, mar: Path) -> ModelSpec:
        """The spec a .mar serves, read from the archive without unpacking it: its
        ``model_config.json``, with the manifest's ``modelVersion`` (the version TorchServe
        registers, and the KServe runtime serves) when there is one. Raises ValueError
        naming the archive when it is not a readable model archive."""
        try:
            with zipfile.ZipFile(mar) as z:
                config: dict[str, Any] = json.loads(z.read(MODEL_CONFIG_FILE))
                names = set(z.namelist())
                manifest = json.loads(z.read(MANIFEST_FILE)) if MANIFEST_FILE in names else {}
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise ValueError(f"{mar} is not a readable model archive: {exc}") from exc
        known = {f.name for f in fields(cls)}
        try:
            spec = cls(**{k: v for k, v in config.items() if k in known})
        except TypeError as exc:
            raise ValueError(f"{mar}: {MODEL_CONFIG_FILE} is incomplete: {exc}") from exc
        version = manifest.get("model", {}).get("modelVersion") if manifest else None
        if version is not None and str(version) != spec.version:
            spec = cls(**{**asdict(spec), "version": str(version)})
        return spec
