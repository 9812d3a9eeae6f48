"""A folder of drift reports: ``<id>.html`` + ``<id>.json`` each, plus ``latest.*`` copies.

Layout (flat, so it works on any volume or object-store mount)::

    20260101T120000123456-1h.html   Evidently's HTML (when the report had one)
    20260101T120000123456-1h.json   our summary + Evidently's snapshot under "evidently"
    latest.html / latest.json       copies of the newest report

Every file is written to a temporary name and `os.replace`d into place, so a reader never
sees a half-written file. ``latest.*`` are copies, not symlinks: symlinks do not survive
object stores or some volume drivers. The ``<id>.json`` is written last; a report is
listed only once it exists. Reports past ``retention`` are pruned, oldest first, never the
one just written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from atelier.drift.report import DriftResult, json_safe
from atelier.runtime.errors import ReportNotFoundError, ReportWriteError

log = logging.getLogger(__name__)

WINDOW_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REPORT_ID_PATTERN = re.compile(r"^\d{8}T\d{12}-[A-Za-z0-9_-]{1,64}$")
LATEST = "latest"
EXTENSIONS = ("html", "json")


def make_report_id(created: datetime, window: str) -> str:
    """``<UTC yyyymmddTHHMMSSffffff>-<window>``: sorts chronologically as a string."""
    return f"{created.astimezone(UTC).strftime('%Y%m%dT%H%M%S%f')}-{window}"


class ReportStore:
    """Writes, lists, prunes and locates the drift reports of one folder."""

    def __init__(self, directory: Path, retention: int = 20) -> None:
        if retention < 1:
            raise ValueError("retention must be >= 1 (the latest report is always kept)")
        self.directory = Path(directory)
        self.retention = retention

    # --- writing ----------------------------------------------------------------------

    def write(self, result: DriftResult, window: str, model_version: str) -> str:
        """Store one report and make it the latest; returns its id.

        Raises `ReportWriteError` (with the OSError in the message) when the folder cannot
        be written; in that case the new report's files are removed and ``latest.*`` are
        left as they were (or, at worst, replaced whole; never half-written).
        """
        if not WINDOW_PATTERN.match(window):
            raise ValueError(f"window {window!r} must match {WINDOW_PATTERN.pattern}")
        created = datetime.now(UTC)
        report_id = make_report_id(created, window)
        while self._exists(report_id):  # same microsecond, same window
            created += timedelta(microseconds=1)
            report_id = make_report_id(created, window)

        files = [f"{report_id}.json"] + ([f"{report_id}.html"] if result.html is not None else [])
        summary = {
            "id": report_id,
            "created": created.isoformat(),
            "window": window,
            "model_version": model_version,
            "files": sorted(files),
            **result.summary(),
            "evidently": result.evidently_json,
        }
        json_bytes = json.dumps(json_safe(summary), allow_nan=False).encode()
        html_bytes = result.html.encode() if result.html is not None else None

        written: list[Path] = []
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if html_bytes is not None:
                written.append(self._atomic_write(f"{report_id}.html", html_bytes))
            written.append(self._atomic_write(f"{report_id}.json", json_bytes))
            # Both latest temporaries are written in full before either is renamed, so a
            # full disk fails before latest.* change at all.
            staged: list[tuple[Path, Path]] = []
            try:
                if html_bytes is not None:
                    staged.append(
                        (self._stage("latest.html", html_bytes), self._file("latest.html"))
                    )
                staged.append((self._stage("latest.json", json_bytes), self._file("latest.json")))
            except BaseException:
                for tmp, _ in staged:
                    _unlink_quietly(tmp)
                raise
            for tmp, final in staged:
                os.replace(tmp, final)
            if html_bytes is None:
                # latest.html would otherwise describe an older report than latest.json.
                _unlink_quietly(self._file("latest.html"))
        except OSError as exc:
            for path in written:
                _unlink_quietly(path)
            raise ReportWriteError(
                f"cannot write drift report {report_id} to {self.directory}: {exc}",
                hint="check the reports volume: free space, permissions, mount",
            ) from exc
        self._prune(keep=report_id)
        return report_id

    def _file(self, name: str) -> Path:
        return self.directory / name

    def _exists(self, report_id: str) -> bool:
        return any(self._file(f"{report_id}.{ext}").exists() for ext in EXTENSIONS)

    def _stage(self, name: str, data: bytes) -> Path:
        """Write `data` in full to a hidden temporary next to `name`; return its path."""
        tmp = self._file(f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _atomic_write(self, name: str, data: bytes) -> Path:
        tmp = self._stage(name, data)
        final = self._file(name)
        try:
            os.replace(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return final

    def _report_ids(self) -> list[str]:
        """Ids of complete reports (those with a .json), oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        ids = {n[: -len(".json")] for n in names if n.endswith(".json")}
        return sorted(i for i in ids if REPORT_ID_PATTERN.match(i))

    def _prune(self, keep: str) -> None:
        """Delete the oldest reports past `retention`, never `keep`. Failures only log."""
        ids = [i for i in self._report_ids() if i != keep]
        excess = len(ids) + 1 - self.retention
        for report_id in ids[: max(excess, 0)]:
            for ext in EXTENSIONS:
                path = self._file(f"{report_id}.{ext}")
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cannot prune drift report file %s: %s", path, exc)

    # --- reading ----------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Stored reports, newest first: id, created, window, severity, drift_share, files.

        Unreadable or corrupt summaries are skipped with a warning.
        """
        out: list[dict[str, Any]] = []
        for report_id in reversed(self._report_ids()):
            try:
                with open(self._file(f"{report_id}.json"), "rb") as fh:
                    data = json.load(fh)
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable drift report %s: %s", report_id, exc)
                continue
            files = [
                f"{report_id}.{ext}"
                for ext in EXTENSIONS
                if self._file(f"{report_id}.{ext}").exists()
            ]
            out.append(
                {
                    "id": report_id,
                    "created": data.get("created"),
                    "window": data.get("window"),
                    "severity": data.get("severity"),
                    "drift_share": data.get("drift_share"),
                    "files": files,
                }
            )
        return out

    def path(self, report_id: str, ext: str) -> Path:
        """The file of a report (``report_id`` may be ``"latest"``); refuses anything else.

        Raises `ReportNotFoundError` for an id that is not a report id (no path traversal:
        the id is matched against a strict pattern, never joined as given), an extension
        other than html/json, or a file that does not exist.
        """
        if ext not in EXTENSIONS:
            raise ReportNotFoundError(f"no drift report format {ext!r}; use html or json")
        if report_id != LATEST and not REPORT_ID_PATTERN.match(report_id):
            raise ReportNotFoundError(f"{report_id!r} is not a drift report id")
        path = self._file(f"{report_id}.{ext}")
        if not path.is_file():
            raise ReportNotFoundError(f"no drift report {report_id}.{ext}")
        return path


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
