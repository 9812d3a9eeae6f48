"""Data sources (Fashion-MNIST IDX files, labelled image folders), splits and augmentation."""

from atelier.training.data.dataset import Splits, load_splits

__all__ = ["Splits", "load_splits"]
