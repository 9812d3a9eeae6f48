"""Tests for atelier.training.data.folder and load_splits on an image folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.runtime.errors import CorruptDataError, DataError, DataMissingError
from atelier.training.config import DataConfig
from atelier.training.data.dataset import load_splits
from atelier.training.data.folder import load_image_folder

pytestmark = pytest.mark.unit

# Created in this (unsorted) order; the loader must sort them.
CLASSES = ("coat", "apple", "boot")
# (file name, mode, size): mixed modes, sizes and formats.
SPECS = (
    ("a.png", "RGB", (20, 20)),
    ("b.png", "RGBA", (40, 30)),
    ("c.png", "L", (28, 28)),
    ("d.jpg", "RGB", (64, 48)),
    ("e.jpeg", "L", (17, 33)),
)


def _solid(mode: str, size: tuple[int, int], k: int) -> Image.Image:
    """A solid image whose colour is unique to k (spaced widely enough to survive JPEG)."""
    base = 8 + 16 * k
    if mode == "L":
        return Image.new("L", size, base)
    rgb = (base, 255 - base, (k * 53) % 256)
    if mode == "RGBA":
        return Image.new("RGBA", size, (*rgb, 255))
    return Image.new("RGB", size, rgb)


def make_folder(root: Path, classes: tuple[str, ...] = CLASSES) -> Path:
    k = 0
    for cls in classes:
        cdir = root / cls
        cdir.mkdir(parents=True)
        for name, mode, size in SPECS:
            _solid(mode, size, k).save(cdir / name)
            k += 1
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "images")


@pytest.mark.parametrize("channels", [1, 3])
def test_loads_all_images(folder: Path, channels: int) -> None:
    data = load_image_folder(folder, image_size=16, channels=channels)
    n = len(CLASSES) * len(SPECS)
    assert data.x.shape == (n, channels, 16, 16)
    assert data.x.dtype == np.uint8
    assert data.y.dtype == np.int64
    assert data.class_names == sorted(CLASSES)
    assert np.bincount(data.y).tolist() == [len(SPECS)] * len(CLASSES)
    assert data.unreadable == []
    assert len(data.files) == n
    for path, label in zip(data.files, data.y, strict=True):
        assert path.parent.name == data.class_names[label]
    if channels == 3:
        # Every image has its own colour, so all rows differ.
        assert len({row.tobytes() for row in data.x}) == n


def test_pixels_follow_the_file(folder: Path) -> None:
    data = load_image_folder(folder, image_size=16, channels=3)
    i = data.files.index(folder / "apple" / "a.png")
    # "apple" was the second class created: k = 5 for its first image.
    base = 8 + 16 * 5
    expected = np.array([base, 255 - base, (5 * 53) % 256], dtype=np.uint8)
    np.testing.assert_array_equal(data.x[i], np.broadcast_to(expected[:, None, None], (3, 16, 16)))


def test_unreadable_file_is_skipped(folder: Path) -> None:
    bad = folder / "boot" / "x.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    (folder / "boot" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    data = load_image_folder(folder, image_size=16, channels=1, on_unreadable="skip")
    assert data.unreadable == [str(bad)]
    assert bad not in data.files
    assert len(data.files) == len(CLASSES) * len(SPECS)
    assert data.x.shape[0] == len(data.y) == len(data.files)


def test_unreadable_file_errors_when_asked(folder: Path) -> None:
    bad = folder / "boot" / "x.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(CorruptDataError) as info:
        load_image_folder(folder, image_size=16, channels=1, on_unreadable="error")
    assert str(bad) in info.value.message


def test_class_with_only_unreadable_images(folder: Path) -> None:
    bad_dir = folder / "broken"
    bad_dir.mkdir()
    (bad_dir / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of its 1 images") as info:
        load_image_folder(folder, image_size=16, channels=1)
    assert str(bad_dir) in info.value.message


def test_one_class_is_not_enough(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", classes=("only",))
    (root / ".hidden").mkdir()  # hidden folders are not classes
    with pytest.raises(DataError, match="at least 2"):
        load_image_folder(root, image_size=16, channels=1)


def test_class_folder_without_images(folder: Path) -> None:
    empty = folder / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        load_image_folder(folder, image_size=16, channels=1)
    assert str(empty) in info.value.message


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError):
        load_image_folder(tmp_path / "missing", image_size=16, channels=1)


def _cfg(root: Path) -> DataConfig:
    return DataConfig(source="folder", path=root, image_size=16, channels=3)


def _pairs(x: np.ndarray, y: np.ndarray) -> Counter[tuple[bytes, int]]:
    return Counter((row.tobytes(), int(label)) for row, label in zip(x, y, strict=True))


def test_load_splits_covers_every_image_once(folder: Path) -> None:
    splits = load_splits(_cfg(folder), seed=0)
    whole = load_image_folder(folder, image_size=16, channels=3)
    parts = [
        _pairs(splits.train_x, splits.train_y),
        _pairs(splits.val_x, splits.val_y),
        _pairs(splits.test_x, splits.test_y),
    ]
    assert all(parts), "every split must be non-empty"
    assert sum(parts, Counter()) == _pairs(whole.x, whole.y)
    # Disjoint: no image is in two splits.
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not set(a) & set(b)
    assert splits.class_names == sorted(CLASSES)
    sizes = splits.sizes()
    assert sum(sizes.values()) == len(CLASSES) * len(SPECS)
    assert splits.identity["split"]["sizes"] == sizes
    assert splits.identity["source"] == "folder"
    assert splits.identity["n_files"] == len(CLASSES) * len(SPECS)
    # Stratified: each class appears in every split.
    for y in (splits.train_y, splits.val_y, splits.test_y):
        assert set(y.tolist()) == {0, 1, 2}


def test_load_splits_is_deterministic(folder: Path) -> None:
    a = load_splits(_cfg(folder), seed=3)
    b = load_splits(_cfg(folder), seed=3)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    assert a.identity == b.identity


def test_manifest_changes_when_an_image_changes(folder: Path) -> None:
    before = load_splits(_cfg(folder), seed=0).identity["manifest_sha256"]
    assert before == load_splits(_cfg(folder), seed=0).identity["manifest_sha256"]
    Image.new("RGB", (20, 20), (1, 2, 3)).save(folder / "coat" / "a.png")
    after = load_splits(_cfg(folder), seed=0).identity["manifest_sha256"]
    assert isinstance(before, str)
    assert len(before) == 64
    assert after != before
