"""Load a trained model from a folder and classify images.

Used by evaluation at training time and by every serving runtime, so all of them run the
same preprocessing and forward pass. Only numpy, Pillow and torch are imported (plus the
sibling modules): this module ships inside the .mar. The model's spec (``ModelSpec``, its
``model_config.json``) lives in atelier.runtime.spec, which imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atelier.runtime.model import build_model
from atelier.runtime.preprocess import bytes_to_array, normalize
from atelier.runtime.spec import MODEL_CONFIG_FILE, ModelSpec

WEIGHTS_FILE = "weights.pt"


class Classifier:
    def __init__(self, spec: ModelSpec, model: torch.nn.Module) -> None:
        self.spec = spec
        self.model = model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @classmethod
    def from_dir(cls, directory: Path, version: str | None = None) -> Classifier:
        spec = ModelSpec.from_file(directory / MODEL_CONFIG_FILE)
        if version is not None and version != spec.version:
            spec = ModelSpec(**{**asdict(spec), "version": version})
        model = build_model(spec.arch, spec.in_channels, spec.num_classes, spec.dropout)
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return cls(spec, model)

    def to_input(self, data: bytes) -> np.ndarray:
        """Encoded image bytes -> uint8 (C, H, W) in the model's input size."""
        return bytes_to_array(data, self.spec.image_size, self.spec.in_channels)

    @torch.inference_mode()
    def logits(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(batch)
        x = normalize(t, self.spec.mean, self.spec.std).contiguous(
            memory_format=torch.channels_last
        )
        return self.model(x)

    def predict_proba(self, batch: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """uint8 (N, C, H, W) -> float32 (N, classes) probabilities."""
        out = []
        for start in range(0, len(batch), batch_size):
            logits = self.logits(batch[start : start + batch_size])
            out.append(torch.softmax(logits, dim=1).numpy())
        if not out:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return np.concatenate(out)

    def predict_images(self, images: Sequence[bytes]) -> np.ndarray:
        return self.predict_proba(np.stack([self.to_input(b) for b in images]))

    def describe(self, probs: np.ndarray, request_id: str, top_k: int = 5) -> dict[str, Any]:
        """The response body for one image: label, class id, confidence and the top k."""
        order = np.argsort(-probs)[: max(1, min(top_k, len(probs)))]
        best = int(order[0])
        return {
            "label": self.spec.class_names[best],
            "class_id": best,
            "confidence": float(probs[best]),
            "top_k": [
                {
                    "label": self.spec.class_names[int(i)],
                    "class_id": int(i),
                    "probability": float(probs[i]),
                }
                for i in order
            ],
            "model_version": self.spec.version,
            "request_id": request_id,
        }
