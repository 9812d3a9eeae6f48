"""A model store holding a .mar with a spec and a manifest, and nothing else: enough for code
that reads a model's spec from its archive (atelier.runtime.spec) without a trained model."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from atelier.runtime.spec import MANIFEST_FILE, MODEL_CONFIG_FILE, ModelSpec

SPEC = ModelSpec(
    arch="compact",
    in_channels=1,
    image_size=28,
    num_classes=10,
    class_names=[f"c{i}" for i in range(10)],
    mean=[0.5],
    std=[0.5],
    name="m",
    version="3",
)


def write_mar(path: Path, spec: ModelSpec = SPEC, manifest_version: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"model": {"modelName": spec.name}}
    if manifest_version is not None:
        manifest["model"]["modelVersion"] = manifest_version
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MODEL_CONFIG_FILE, spec.to_json())
        z.writestr(MANIFEST_FILE, json.dumps(manifest))
    return path


def store_with_mar(
    root: Path, spec: ModelSpec = SPEC, config: str | None = None, manifest_version: str = "3"
) -> Path:
    """``root`` as a store: model-store/<name>.mar and, when given, config/config.properties."""
    write_mar(root / "model-store" / f"{spec.name}.mar", spec, manifest_version)
    if config is not None:
        (root / "config").mkdir(parents=True, exist_ok=True)
        (root / "config" / "config.properties").write_text(config)
    return root
