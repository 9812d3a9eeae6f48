"""The per-request feature spool the drift sidecar reads.

Record format (JSON Lines, one object per image), version ``atelier.features/v1``:

    {"schema": "atelier.features/v1", "request_id": "...", "index": 0,
     "time": 1732262400.123, "model_name": "fashion-mnist", "model_version": "3",
     "protocol": "raw", "brightness": 0.28, "contrast": 0.35, "ink_fraction": 0.5,
     "edge_density": 0.07, "center_x": 0.5, "center_y": 0.49,
     "predicted_class": 9, "confidence": 0.86, "entropy": 0.52}

``index`` is the image's position within its request (v1/v2 carry several). For a sample
of requests (``ATELIER_SPOOL_INPUT_SAMPLE_PERCENT``, default 0) a record also carries
``"input"``: base64 of the preprocessed uint8 image (784 bytes for Fashion-MNIST), which the
drift sidecar stores in the inference log so labelled production images can be retrained on.

Each process writes its own file, ``<dir>/features-<pid>.jsonl``, rotated by size to
``.1``, ``.2``, ... (so several TorchServe workers never rotate one file). A rotated file
is complete: a batch's lines are never split across two files.

The folder, size and backup count come from ``atelier.runtime.settings.ServingSettings``
(ATELIER_SPOOL_DIR, ATELIER_SPOOL_MAX_BYTES, ATELIER_SPOOL_BACKUPS). Only the standard
library is imported.
"""

from __future__ import annotations

import atexit
import base64
import errno
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = "atelier.features/v1"

# A record's request_id is the request's id (X-Request-Id, v2's "id" or a generated UUID),
# checked by the serving protocols against this rule before any record is written; the
# drift sidecar refuses records that break it.
REQUEST_ID_PATTERN = r"[A-Za-z0-9._:/@+=-]+"
MAX_REQUEST_ID_LENGTH = 128
# A record's index is the image's position in its request: below the most images one request
# may carry (the upper bound of ATELIER_MAX_INSTANCES).
MAX_IMAGES_PER_REQUEST = 4096


def failure_reason(exc: OSError) -> str:
    """The label a spool failure is counted under."""
    return {
        errno.ENOSPC: "no_space",
        errno.EDQUOT: "no_space",
        errno.EROFS: "read_only",
        errno.EACCES: "permission",
        errno.EPERM: "permission",
        errno.ENOENT: "missing",
        errno.ENOTDIR: "missing",
        errno.EEXIST: "missing",  # a file where the folder should be
    }.get(exc.errno or 0, "other")


class FeatureSpool:
    """Appends records as JSON lines: best effort for serving, exact for the sidecar.

    - **Never fails a request.** ``write`` returns False instead of raising: a full disk, a
      read-only or missing folder is counted by reason (``take_errors``, exported as
      ``atelier_spool_errors_total{reason}``) and logged at most once per ``log_every_s``.
      A folder that cannot be opened at start is retried every ``retry_s`` seconds, so the
      model loads and serves without its spool.
    - **Whole lines or nothing.** One batch is one ``os.write`` loop on an O_APPEND file
      descriptor (no user-space buffer that could flush half a batch later). If a write
      fails part way, the file is truncated back to where the batch began. If even that
      fails, the file is marked torn and the next batch starts with a newline, so the
      fragment stands on a line of its own, which the sidecar's reader counts as malformed
      and skips; the records after it are whole. A file that ends without a newline when it
      is opened (a crash mid-write) is treated the same way.
    - Writing happens on the calling thread: formatting a batch's lines and one write cost
      tens of microseconds; after ``os.write`` returns, the lines are in the OS's hands.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int = 50_000_000,
        backups: int = 5,
        *,
        retry_s: float = 10.0,
        log_every_s: float = 60.0,
    ) -> None:
        self.directory = directory
        self.path = directory / f"features-{os.getpid()}.jsonl"
        self.max_bytes = max_bytes
        self.backups = max(1, backups)
        self.retry_s = retry_s
        self.log_every_s = log_every_s
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._torn = False
        self._closed = False
        self._next_open = 0.0
        self._last_reason = "other"
        self._logged: dict[str, float] = {}
        self._errors: dict[str, int] = {}
        self._open()
        atexit.register(self.close)

    @property
    def writable(self) -> bool:
        """Whether the spool file is open (False after a failed open, until a retry works)."""
        return self._fd is not None

    def take_errors(self) -> dict[str, int]:
        """Failed writes by reason since the last call (for the metrics)."""
        with self._lock:
            errors, self._errors = self._errors, {}
        return errors

    def _open(self) -> bool:
        """Open (or create) the spool file; on failure count it and wait ``retry_s``."""
        fd: int | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            self._fail(exc, "open")
            self._next_open = time.monotonic() + self.retry_s
            return False
        self._fd, self._size, self._torn = fd, size, torn
        return True

    def _count(self, reason: str) -> None:
        self._errors[reason] = self._errors.get(reason, 0) + 1

    def _fail(self, exc: OSError, what: str) -> None:
        reason = failure_reason(exc)
        self._last_reason = reason
        self._count(reason)
        now = time.monotonic()
        if now - self._logged.get(reason, -math.inf) >= self.log_every_s:
            self._logged[reason] = now
            log.warning(
                "feature spool %s: %s failed (%s); serving goes on, failures are counted in "
                "atelier_spool_errors_total{reason=%r} and logged at most every %.0f s",
                self.path, what, exc, reason, self.log_every_s,
            )  # fmt: skip

    def write(self, records: Sequence[Mapping[str, Any]]) -> bool:
        """Append the records as whole lines; False (counted, never raised) when they could
        not be written."""
        if not records:
            return True
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        with self._lock:
            if self._closed:
                return False
            if self._fd is None:
                if time.monotonic() < self._next_open:
                    self._count(self._last_reason)  # still failing: counted, not logged again
                    return False
                if not self._open():
                    return False
            if self._size and self._size + len(data) > self.max_bytes:
                try:
                    self._rotate()
                except OSError as exc:
                    self._fail(exc, "rotation")
                    return False
                if self._fd is None:  # the new file could not be opened: counted by _open
                    return False
            if self._torn:  # after rotation: a fresh file has no torn tail to close
                data = b"\n" + data
            assert self._fd is not None
            start, written = self._size, 0
            try:
                view = memoryview(data)
                while written < len(data):
                    written += os.write(self._fd, view[written:])
            except OSError as exc:
                self._cut_back(start, start + written)
                self._fail(exc, "write")
                return False
            self._size += len(data)
            self._torn = False
            return True

    def _cut_back(self, start: int, guess: int) -> None:
        """After a failed write, remove whatever part of the batch reached the file; if that
        fails, remember the file ends in a torn line."""
        assert self._fd is not None
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            size = guess
        if size == start:
            return
        try:
            os.ftruncate(self._fd, start)
        except OSError:
            self._size, self._torn = size, True

    def _rotate(self) -> None:
        """features.jsonl -> .1 -> .2 ... (the oldest past ``backups`` is dropped)."""
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        self._open()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def make_records(
    request_id: str,
    protocol: str,
    model_name: str,
    model_version: str,
    features: Mapping[str, Any],
    start: int,
    count: int,
    now: float | None = None,
    inputs: Any = None,
) -> list[dict[str, Any]]:
    """Records for images [start, start+count) of a batch's feature arrays.

    With ``inputs`` (the batch's preprocessed uint8 array), each record also carries its
    image as ``input``: base64 of its bytes (for a sample of requests: retraining material).
    """
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
        if inputs is not None:
            rec["input"] = base64.b64encode(inputs[start + j].tobytes()).decode("ascii")
        out.append(rec)
    return out
