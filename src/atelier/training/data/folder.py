"""A labelled image folder: ``root/<class_name>/*.png|jpg``, read with Pillow."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atelier.runtime.errors import CorruptDataError, DataError, DataMissingError
from atelier.runtime.preprocess import ImageDecodeError, bytes_to_array

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class FolderData:
    x: np.ndarray  # uint8 (N, C, H, W)
    y: np.ndarray  # int64 (N,)
    class_names: list[str]
    files: list[Path]
    unreadable: list[str] = field(default_factory=list)


def load_image_folder(
    root: Path, image_size: int, channels: int, on_unreadable: str = "skip"
) -> FolderData:
    if not root.is_dir():
        raise DataMissingError(
            f"image folder {root} does not exist",
            hint="set data.path to a folder laid out root/<class_name>/*.png",
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(
            f"image folder {root} has {len(class_dirs)} class folder(s); at least 2 are needed",
            hint="lay it out as root/<class_name>/*.png with one folder per class",
        )
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    files: list[Path] = []
    unreadable: list[str] = []
    for label, cdir in enumerate(class_dirs):
        candidates = sorted(
            p for p in cdir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not candidates:
            raise DataError(
                f"class folder {cdir} has no .png/.jpg images",
                hint="remove the folder or add images to it",
            )
        readable = 0
        for path in candidates:
            try:
                arrays.append(bytes_to_array(path.read_bytes(), image_size, channels))
            except (ImageDecodeError, OSError) as exc:
                if on_unreadable == "error":
                    raise CorruptDataError(
                        f"{path}: {exc}",
                        hint="fix or remove the file, or set data.on_unreadable=skip",
                    ) from exc
                unreadable.append(str(path))
                continue
            labels.append(label)
            files.append(path)
            readable += 1
        if readable == 0:
            raise DataError(
                f"class folder {cdir}: none of its {len(candidates)} images is readable"
            )
    if unreadable:
        log.warning("skipped %d unreadable image(s) under %s", len(unreadable), root)
    return FolderData(
        x=np.stack(arrays),
        y=np.asarray(labels, dtype=np.int64),
        class_names=[c.name for c in class_dirs],
        files=files,
        unreadable=unreadable,
    )
