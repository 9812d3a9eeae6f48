"""The per-request feature spool the drift sidecar reads.

Record format (JSON Lines, one object per image), version ``atelier.features/v1``:

    {"schema": "atelier.features/v1", "request_id": "...", "index": 0,
     "time": 1732262400.123, "model_name": "fashion-mnist", "model_version": "3",
     "protocol": "raw", "brightness": 0.28, "contrast": 0.35, "ink_fraction": 0.5,
     "edge_density": 0.07, "center_x": 0.5, "center_y": 0.49,
     "predicted_class": 9, "confidence": 0.86, "entropy": 0.52}

``index`` is the image's position within its request (v1/v2 carry several). Each process
writes its own file, ``<dir>/features-<pid>.jsonl``, rotated by size to ``.1``, ``.2``, ...
(so several TorchServe workers never rotate one file). A rotated file is complete: a
batch's lines are never split across two files.

The folder, size and backup count come from ``atelier.runtime.settings.ServingSettings``
(ATELIER_SPOOL_DIR, ATELIER_SPOOL_MAX_BYTES, ATELIER_SPOOL_BACKUPS). Only the standard
library is imported.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

SCHEMA = "atelier.features/v1"


class FeatureSpool:
    """Appends records as JSON lines; one write and flush per batch, rotation by size.

    Writing happens on the calling thread: formatting a batch's lines and one buffered
    write cost tens of microseconds, less than handing them to another thread would cost
    in GIL contention. A flush per batch means an accepted record is in the OS's hands
    before the response goes out.
    """

    def __init__(self, directory: Path, max_bytes: int = 50_000_000, backups: int = 5) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"features-{os.getpid()}.jsonl"
        self.max_bytes = max_bytes
        self.backups = max(1, backups)
        self._lock = threading.Lock()
        self._fh: BinaryIO | None = self.path.open("ab")
        self._size = self.path.stat().st_size
        atexit.register(self.close)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        with self._lock:
            if self._fh is None:
                raise RuntimeError("feature spool is closed")
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            assert self._fh is not None
            self._fh.write(data)
            self._fh.flush()
            self._size += len(data)

    def _rotate(self) -> None:
        """features.jsonl -> .1 -> .2 ... (the oldest past ``backups`` is dropped)."""
        assert self._fh is not None
        self._fh.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def make_records(
    request_id: str,
    protocol: str,
    model_name: str,
    model_version: str,
    features: Mapping[str, Any],
    start: int,
    count: int,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Records for images [start, start+count) of a batch's feature arrays."""
    t = time.time() if now is None else now
    out = []
    for j in range(count):
        rec: dict[str, Any] = {
            "schema": SCHEMA, "request_id": request_id, "index": j, "time": round(t, 6),
            "model_name": model_name, "model_version": model_version, "protocol": protocol,
        }  # fmt: skip
        for name, values in features.items():
            v = float(values[start + j])
            rec[name] = int(v) if name == "predicted_class" else round(v, 6)
        out.append(rec)
    return out
