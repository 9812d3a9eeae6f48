"""A drift sidecar's model store without training: versions of a model with any number of
classes, and feature records for them."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atelier.runtime.features import IMAGE_FEATURES
from atelier.runtime.records import make_records

MODEL = "fashion-mnist"


def features(n: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Feature arrays like the handler's, with predicted classes 0..num_classes-1."""
    rng = np.random.default_rng(seed)
    out = {name: rng.uniform(0.2, 0.6, n) for name in IMAGE_FEATURES}
    probs = rng.dirichlet(np.ones(num_classes), n)
    out["predicted_class"] = (np.arange(n) % num_classes).astype(np.float64)
    out["confidence"] = probs.max(1)
    out["entropy"] = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
    return out


def records(
    n: int, num_classes: int = 10, version: str = "1", prefix: str = "r", seed: int = 0
) -> list[dict[str, Any]]:
    """n records of ``version`` in requests of up to 32 images, as the handler writes them."""
    feats = features(n, num_classes, seed)
    out: list[dict[str, Any]] = []
    for start in range(0, n, 32):
        out += make_records(f"{prefix}-{start}", "v2", MODEL, version, feats, start,
                            min(32, n - start), now=1_700_000_000.0)  # fmt: skip
    return out


def publish_version(store: Path, version: str, num_classes: int, *, current: bool = True) -> Path:
    """A version's .mar as `atelier archive` lays it out, with what the sidecar reads from it
    (reference profile, metrics, model_config.json), and CURRENT.json pointing at it."""
    mar = store / "versions" / version / "model-store" / f"{MODEL}.mar"
    mar.parent.mkdir(parents=True, exist_ok=True)
    profile = pd.DataFrame(features(600, num_classes, seed=99))
    profile["label"] = profile["predicted_class"].astype(int)
    spec = {"name": MODEL, "version": version, "num_classes": num_classes,
            "class_names": [f"class-{i}" for i in range(num_classes)]}  # fmt: skip
    with zipfile.ZipFile(mar, "w") as z:
        z.writestr("reference_profile.csv", profile.to_csv(index=False))
        z.writestr("metrics.json", json.dumps({"test_accuracy": 0.9}))
        z.writestr("model_config.json", json.dumps(spec))
    if current:
        (store / "CURRENT.json").write_text(json.dumps({"name": MODEL, "version": version}))
    return mar
