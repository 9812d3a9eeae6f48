"""Per-image features for drift monitoring.

The same function computes the reference profile at training time (on the validation
split) and the per-request records at serving time. Only numpy is imported: this module
ships inside the .mar.
"""

from __future__ import annotations

import numpy as np

# Bump when a feature is added, removed or computed differently.
FEATURE_SCHEMA_VERSION = 1

IMAGE_FEATURES = (
    "brightness",  # mean intensity, 0-1
    "contrast",  # standard deviation of intensity, 0-1
    "ink_fraction",  # share of pixels above 10% intensity
    "edge_density",  # mean absolute gradient, 0-1
    "center_x",  # intensity-weighted centroid, 0 (left) - 1 (right)
    "center_y",  # intensity-weighted centroid, 0 (top) - 1 (bottom)
)
PREDICTION_FEATURES = ("predicted_class", "confidence", "entropy")
ALL_FEATURES = IMAGE_FEATURES + PREDICTION_FEATURES

# The values each real-valued feature can take (inclusive); the drift sidecar refuses a
# record outside them. predicted_class is a class id, bounded by the model's class count.
FEATURE_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(IMAGE_FEATURES, (0.0, 1.0)),
    "confidence": (0.0, 1.0),
    "entropy": (0.0, 100.0),  # nats, at most ln(classes): 100 bounds any classifier
}


def image_features(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Features of a uint8 (N, C, H, W) batch, each an (N,) float64 array."""
    x = np.asarray(batch, dtype=np.float32)
    gray = (x[:, 0] if x.shape[1] == 1 else x.mean(axis=1)) * np.float32(1 / 255)  # (N, H, W)
    n, h, w = gray.shape
    flat = gray.reshape(n, -1)
    col_sums = gray.sum(axis=1)  # (N, W)
    row_sums = gray.sum(axis=2)  # (N, H)
    mass = col_sums.sum(axis=1)
    safe = np.where(mass > 0, mass, 1.0)
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    gx = np.abs(np.diff(gray, axis=2)).mean(axis=(1, 2))
    gy = np.abs(np.diff(gray, axis=1)).mean(axis=(1, 2))
    return {
        "brightness": flat.mean(axis=1, dtype=np.float64),
        "contrast": flat.std(axis=1, dtype=np.float64),
        "ink_fraction": (flat > 0.1).mean(axis=1, dtype=np.float64),
        "edge_density": ((gx + gy) / 2.0).astype(np.float64),
        "center_x": np.where(mass > 0, (col_sums @ xs) / safe, 0.5).astype(np.float64),
        "center_y": np.where(mass > 0, (row_sums @ ys) / safe, 0.5).astype(np.float64),
    }


def prediction_features(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted class, its probability and the entropy (nats) of each (N, K) row."""
    p = np.asarray(probabilities, dtype=np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)
    return {
        "predicted_class": p.argmax(axis=1).astype(np.float64),
        "confidence": p.max(axis=1),
        "entropy": entropy,
    }


def all_features(batch: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    return {**image_features(batch), **prediction_features(probabilities)}
