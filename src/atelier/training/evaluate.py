"""Evaluation: accuracy, per-class precision/recall/F1, confusion matrix, robustness."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from atelier.runtime.inference import Classifier
from atelier.training.config import RobustnessConfig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_report(cm: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        name: {
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(actual[i]),
        }
        for i, name in enumerate(class_names)
    }


def weighted_means(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """Precision, recall and F1 averaged over the classes, weighted by their support."""
    total = sum(c["support"] for c in per_class.values())
    return {
        key: round(sum(c[key] * c["support"] for c in per_class.values()) / max(total, 1), 6)
        for key in ("precision", "recall", "f1")
    }


@torch.inference_mode()
def _accuracy_of(clf: Classifier, x: np.ndarray, y: np.ndarray, transform: Any, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, len(x), 1000):
        batch = torch.as_tensor(x[start : start + 1000]).float() / 255.0
        logits = clf.logits(transform(batch, gen))
        correct += int((logits.argmax(1).numpy() == y[start : start + 1000]).sum())
    return correct / max(1, len(y))


def robustness(
    clf: Classifier, x: np.ndarray, y: np.ndarray, cfg: RobustnessConfig, seed: int
) -> dict[str, Any]:
    """Accuracy under Gaussian noise (sigma on the normalised image) and a brightness shift."""
    std = torch.tensor(clf.spec.std).view(1, -1, 1, 1)

    def noisy(b: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # Noise of sigma on the normalised image is sigma * std on the [0, 1] image.
        return b + torch.randn(b.shape, generator=gen) * cfg.noise_sigma * std

    def brighter(b: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return (b + cfg.brightness_shift).clamp(0.0, 1.0)

    return {
        "gaussian_noise": {
            "sigma": cfg.noise_sigma,
            "accuracy": round(_accuracy_of(clf, x, y, noisy, seed), 6),
        },
        "brightness_shift": {
            "shift": cfg.brightness_shift,
            "accuracy": round(_accuracy_of(clf, x, y, brighter, seed), 6),
        },
    }
