"""Reader for the IDX format of (Fashion-)MNIST, gzipped or plain, with its checks."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from atelier.runtime.errors import CorruptDataError, DataMissingError

# Magic numbers: two zero bytes, a type code (0x08 = unsigned byte) and the number of dims.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
EXPECTED_COUNTS = {"train": 60_000, "test": 10_000}
APT_HINT = (
    "apt-get install -y dataset-fashion-mnist, or set data.path to a folder with the IDX files"
)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptDataError(
            f"{path}: cannot be read ({exc.__class__.__name__}: {exc})",
            hint="the file is damaged or truncated; reinstall it",
        ) from exc


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file into a uint8 array, checking magic number, dims and length."""
    if not path.is_file():
        raise DataMissingError(f"{path} does not exist", hint=APT_HINT)
    data = _read_bytes(path)
    if len(data) < 4:
        raise CorruptDataError(f"{path}: {len(data)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise CorruptDataError(
            f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x}",
            hint="this is not the IDX file it is named as",
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    actual = len(data) - header
    if actual != expected:
        raise CorruptDataError(
            f"{path}: header promises {expected} bytes for shape {dims}, file has {actual}",
            hint="the file is truncated or padded; reinstall it",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_fashion_mnist(root: Path) -> dict[str, np.ndarray]:
    """Return train/test images (N, 1, 28, 28) uint8 and labels (N,) int64."""
    if not root.is_dir():
        raise DataMissingError(f"Fashion-MNIST folder {root} does not exist", hint=APT_HINT)
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images = read_idx(root / FILES[f"{split}_images"], IMAGES_MAGIC)
        labels = read_idx(root / FILES[f"{split}_labels"], LABELS_MAGIC)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise CorruptDataError(
                f"{split} images have shape {images.shape}, expected (N, 28, 28)"
            )
        if len(images) != len(labels):
            raise CorruptDataError(
                f"{split}: {len(images)} images in {root / FILES[f'{split}_images']} but "
                f"{len(labels)} labels in {root / FILES[f'{split}_labels']}",
                hint="the image and label files do not belong together",
            )
        if len(images) != EXPECTED_COUNTS[split]:
            raise CorruptDataError(
                f"{split}: {len(images)} images, Fashion-MNIST has {EXPECTED_COUNTS[split]}"
            )
        if labels.max() >= len(FASHION_MNIST_CLASSES):
            raise CorruptDataError(f"{split} labels: value {labels.max()} is not a class id 0-9")
        out[f"{split}_x"] = images[:, None, :, :]
        out[f"{split}_y"] = labels.astype(np.int64)
    return out
