"""The per-request feature spool the drift sidecar reads.

Record format (JSON Lines, one object per image), version ``atelier.features/v1``:

    {"schema": "atelier.features/v1", "request_id": "...", "index": 0,
     "time": 1732262400.123, "model_name": "fashion-mnist", "model_version": "3",
     "protocol": "raw", "brightness": 0.28, "contrast": 0.35, "ink_fraction": 0.5,
     "edge_density": 0.07, "center_x": 0.5, "center_y": 0.49,
     "predicted_class": 9, "confidence": 0.86, "entropy": 0.52}

``index`` is the image's position within its request (v1/v2 carry several). Each process
writes its own file, ``<dir>/features-<pid>.jsonl``, rotated by size to ``.1``, ``.2``, ...
(so several TorchServe workers never rotate one file). The response path only puts the
record on a queue; a background thread formats and writes it (logging's QueueHandler /
QueueListener / RotatingFileHandler).

Environment: ATELIER_SPOOL_DIR (unset: no spool), ATELIER_SPOOL_MAX_BYTES (default
50 MB), ATELIER_SPOOL_BACKUPS (default 5). Only the standard library is imported.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA = "atelier.features/v1"


class _JsonLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record.msg, separators=(",", ":"))


class _PassThrough(logging.handlers.QueueHandler):
    """Enqueue the record as it is: the dict is formatted on the writer thread, not here."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class FeatureSpool:
    def __init__(self, directory: Path, max_bytes: int = 50_000_000, backups: int = 5) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"features-{os.getpid()}.jsonl"
        handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        handler.setFormatter(_JsonLine())
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue(-1)
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._logger = logging.Logger(f"atelier.spool.{id(self)}")
        self._logger.addHandler(_PassThrough(self._queue))
        self._logger.propagate = False
        self._handler = handler
        self._listener.start()
        atexit.register(self.close)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> FeatureSpool | None:
        directory = env.get("ATELIER_SPOOL_DIR")
        if not directory:
            return None
        return cls(
            Path(directory),
            max_bytes=int(env.get("ATELIER_SPOOL_MAX_BYTES", "50000000")),
            backups=int(env.get("ATELIER_SPOOL_BACKUPS", "5")),
        )

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for rec in records:
            self._logger.info(rec)

    def close(self) -> None:
        if self._listener._thread is not None:  # idempotent
            self._listener.stop()
            self._handler.close()


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
