"""Tests for atelier.training.data.idx: the IDX reader and the Fashion-MNIST loader."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from atelier.runtime.errors import CorruptDataError, DataMissingError
from atelier.training.data import idx
from atelier.training.data.idx import (
    FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    load_fashion_mnist,
    read_idx,
)

pytestmark = pytest.mark.unit

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_images(path: Path, n: int, size: int = 28, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    data = idx_bytes(IMAGES_MAGIC, (n, size, size), arr.tobytes())
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return arr


def write_labels(path: Path, labels: list[int]) -> None:
    data = idx_bytes(LABELS_MAGIC, (len(labels),), bytes(labels))
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.fixture(scope="module")
def real() -> dict[str, np.ndarray]:
    if not REAL_DIR.is_dir():
        pytest.fail(f"{REAL_DIR} is missing: apt-get install -y dataset-fashion-mnist")
    return load_fashion_mnist(REAL_DIR)


def test_real_fashion_mnist_loads(real: dict[str, np.ndarray]) -> None:
    assert real["train_x"].shape == (60_000, 1, 28, 28)
    assert real["test_x"].shape == (10_000, 1, 28, 28)
    assert real["train_y"].shape == (60_000,)
    assert real["test_y"].shape == (10_000,)
    assert real["train_x"].dtype == np.uint8
    assert real["test_x"].dtype == np.uint8
    assert real["train_y"].dtype == np.int64
    for key in ("train_y", "test_y"):
        assert set(np.unique(real[key]).tolist()) == set(range(10))
    # Fashion-MNIST is balanced: 6,000 train and 1,000 test images per class.
    assert np.bincount(real["train_y"]).tolist() == [6000] * 10
    assert np.bincount(real["test_y"]).tolist() == [1000] * 10
    # Real images, not blank buffers.
    assert 0 < real["train_x"].mean() < 255
    assert real["train_x"].max() == 255


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_plain_and_gzipped(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"images-idx3-ubyte{suffix}"
    arr = write_images(path, n=3, size=5)
    out = read_idx(path, IMAGES_MAGIC)
    assert out.dtype == np.uint8
    assert out.shape == (3, 5, 5)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] ^= 0xFF  # the result must be writable (a copy, not a view of bytes)


def test_missing_folder_raises_data_missing_with_apt_hint(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataMissingError) as info:
        load_fashion_mnist(missing)
    line = info.value.one_line()
    assert "apt-get install -y dataset-fashion-mnist" in line
    assert str(missing) in line


def test_missing_file_in_existing_folder_raises_data_missing(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        load_fashion_mnist(tmp_path)
    assert FILES["train_images"] in info.value.message
    assert "apt-get install -y dataset-fashion-mnist" in info.value.one_line()


def test_wrong_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "labels-as-images"
    write_labels(path, [1, 2, 3])
    with pytest.raises(CorruptDataError) as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in info.value.message
    assert "magic number 0x00000801" in info.value.message


def test_header_promising_more_bytes_than_present(tmp_path: Path) -> None:
    path = tmp_path / "short-idx3-ubyte"
    # The header says 10 images of 28x28, the body has 5.
    path.write_bytes(idx_bytes(IMAGES_MAGIC, (10, 28, 28), bytes(5 * 28 * 28)))
    with pytest.raises(CorruptDataError) as info:
        read_idx(path, IMAGES_MAGIC)
    msg = info.value.message
    assert str(path) in msg
    assert str(10 * 28 * 28) in msg
    assert str(5 * 28 * 28) in msg


def test_padded_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "padded-idx1-ubyte"
    path.write_bytes(idx_bytes(LABELS_MAGIC, (3,), bytes([1, 2, 3, 4])))
    with pytest.raises(CorruptDataError, match="header promises 3 bytes") as info:
        read_idx(path, LABELS_MAGIC)
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x00", idx_bytes(IMAGES_MAGIC, (1, 2, 2), b"")[:9]],
    ids=["empty", "two-bytes", "header-cut"],
)
def test_too_short_for_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tiny-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(CorruptDataError) as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in info.value.message


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / FILES["train_images"]
    with (REAL_DIR / FILES["train_images"]).open("rb") as fh:
        path.write_bytes(fh.read(1000))
    with pytest.raises(CorruptDataError) as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in info.value.message
    assert "cannot be read" in info.value.message


def test_not_gzip_despite_suffix(tmp_path: Path) -> None:
    path = tmp_path / "fake.gz"
    path.write_bytes(idx_bytes(LABELS_MAGIC, (2,), b"\x01\x02"))
    with pytest.raises(CorruptDataError) as info:
        read_idx(path, LABELS_MAGIC)
    assert str(path) in info.value.message


def _write_split(root: Path, split: str, n_images: int, labels: list[int], size: int = 28) -> None:
    write_images(root / FILES[f"{split}_images"], n=n_images, size=size)
    write_labels(root / FILES[f"{split}_labels"], labels)


def test_image_and_label_count_mismatch(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", n_images=5, labels=[0, 1, 2, 3])
    with pytest.raises(CorruptDataError) as info:
        load_fashion_mnist(tmp_path)
    msg = info.value.message
    assert "train" in msg
    assert "5 images" in msg
    assert "4 labels" in msg


def test_wrong_image_shape(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", n_images=4, labels=[0, 1, 2, 3], size=32)
    with pytest.raises(CorruptDataError, match=r"\(4, 32, 32\)"):
        load_fashion_mnist(tmp_path)


def test_count_differs_from_fashion_mnist(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", n_images=4, labels=[0, 1, 2, 3])
    with pytest.raises(CorruptDataError, match="Fashion-MNIST has 60000"):
        load_fashion_mnist(tmp_path)


def test_label_out_of_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Shrink the expected counts so small files reach the label check.
    monkeypatch.setitem(idx.EXPECTED_COUNTS, "train", 4)
    monkeypatch.setitem(idx.EXPECTED_COUNTS, "test", 2)
    _write_split(tmp_path, "train", n_images=4, labels=[0, 1, 12, 3])
    _write_split(tmp_path, "test", n_images=2, labels=[0, 1])
    with pytest.raises(CorruptDataError, match="value 12 is not a class id"):
        load_fashion_mnist(tmp_path)


def test_small_valid_set_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(idx.EXPECTED_COUNTS, "train", 4)
    monkeypatch.setitem(idx.EXPECTED_COUNTS, "test", 2)
    _write_split(tmp_path, "train", n_images=4, labels=[0, 9, 2, 3])
    _write_split(tmp_path, "test", n_images=2, labels=[5, 1])
    out = load_fashion_mnist(tmp_path)
    assert out["train_x"].shape == (4, 1, 28, 28)
    assert out["test_x"].shape == (2, 1, 28, 28)
    assert out["train_y"].tolist() == [0, 9, 2, 3]
    assert out["test_y"].tolist() == [5, 1]
    assert out["train_y"].dtype == np.int64
