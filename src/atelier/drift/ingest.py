"""Follow the feature spool: new complete lines from every writer's files, across rotations.

The writer (`atelier.runtime.records.FeatureSpool`) appends to ``features-<pid>.jsonl`` and
rotates by renaming it to ``.1`` (``.1`` to ``.2``, ...), so a file keeps its inode when
it changes name. The follower therefore tracks files by ``(st_dev, st_ino)`` with a byte
offset, never by name: a live file that became ``.1`` is read on from where it was left,
and the new live file from 0. Nothing is lost unless a file is rotated out (deleted) before
the follower reaches it.

Durability contract: the caller processes the records of `SpoolFollower.poll` and then calls
`SpoolFollower.commit`, which writes the offsets and the recent dedupe keys atomically. After
a crash between the two, the next process starts from the last commit and re-reads the
uncommitted lines once: committed records are never counted again (their offsets are
persisted) and uncommitted ones are counted exactly once (they were never committed).
The persisted dedupe keys additionally drop records the writer really wrote twice.

Every line is validated with `atelier.drift.record_model.FeatureRecord` (the type ``/ingest``
uses) and, given a `RecordGate`, against the model store: a record of an unknown model or
version, or of a class its version does not have, is refused and counted by reason; the
other records of the poll are kept. While the store cannot say (no CURRENT.json yet), the
follower stops at the first record it cannot judge and reads it again at the next poll.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from atelier.drift.record_model import FeatureRecord, RecordGate, parse_line
from atelier.runtime.errors import ReferenceUnavailableError
from atelier.runtime.records import SCHEMA

log = logging.getLogger(__name__)

STATE_FORMAT = "atelier.spool-follower/v1"

# features-<pid>.jsonl (live) or features-<pid>.jsonl.<n> (rotated, larger n = older).
_NAME = re.compile(r"^features-(?P<writer>.+?)\.jsonl(?:\.(?P<n>\d+))?$")

# How much of a file's head identifies it (to notice a reused inode number).
_HEAD_BYTES = 256

RecordKey = tuple[str, int]


@dataclass
class IngestBatch:
    """What one poll read: valid new records and counts of what was skipped and why."""

    records: list[FeatureRecord] = field(default_factory=list)
    malformed: int = 0  # not JSON, not an object, not a FeatureRecord (types, bounds, keys)
    unknown_schema: int = 0  # a JSON object whose "schema" is not atelier.features/v1
    duplicates: int = 0  # (request_id, index) seen recently
    refused: dict[str, int] = field(default_factory=dict)  # by RecordGate, per reason
    waiting: str | None = None  # why the poll stopped at a record it cannot judge yet
    lag_bytes: int = 0  # bytes in followed files not consumed yet, after this poll
    files: int = 0  # files followed after this poll


@dataclass
class _FileState:
    path: str
    offset: int = 0
    head_len: int = 0  # bytes covered by head_hash (0: none yet)
    head_hash: str = ""


class _Skip(Exception):
    """A line that is not a valid v1 record; ``reason`` is "malformed" or "unknown_schema"."""

    def __init__(self, reason: str, schema: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.schema = schema


def parse_record(line: bytes) -> FeatureRecord:
    """A v1 record from one line (`atelier.drift.record_model.FeatureRecord`), or `_Skip`."""
    try:
        return parse_line(line)
    except ValidationError:
        pass
    # Not a valid v1 record: a record of another format version, or a malformed line?
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Skip("malformed") from None
    if isinstance(obj, dict) and "schema" in obj and obj["schema"] != SCHEMA:
        raise _Skip("unknown_schema", schema=str(obj["schema"]))
    raise _Skip("malformed")


def _head_hash(fh: BinaryIO, length: int) -> str:
    fh.seek(0)
    return hashlib.sha1(fh.read(length), usedforsecurity=False).hexdigest()


class SpoolFollower:
    """Reads new complete records from ``spool_dir``; `commit` makes the position durable."""

    def __init__(
        self,
        spool_dir: Path,
        state_path: Path,
        dedupe_keys: int = 200_000,
        gate: RecordGate | None = None,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.state_path = Path(state_path)
        self.dedupe_keys = max(0, dedupe_keys)
        self.gate = gate
        self._waiting_logged = float("-inf")
        self._files: dict[tuple[int, int], _FileState] = {}
        self._seen: OrderedDict[RecordKey, None] = OrderedDict()
        self._logged_schemas: set[str] = set()
        self._dirty = True  # state differs from what state_path holds
        self._load()

    # --- state -------------------------------------------------------------------------

    def _load(self) -> None:
        if not self.state_path.exists():
            return
        try:
            data = json.loads(self.state_path.read_text())
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {STATE_FORMAT!r}")
            files: dict[tuple[int, int], _FileState] = {}
            for f in data["files"]:
                files[(int(f["dev"]), int(f["ino"]))] = _FileState(
                    path=str(f["path"]),
                    offset=int(f["offset"]),
                    head_len=int(f.get("head_len", 0)),
                    head_hash=str(f.get("head_hash", "")),
                )
            flat = data["seen"]
            if len(flat) % 2 or not all(isinstance(x, str) for x in flat[::2]):
                raise ValueError("dedupe keys are not [request_id, index] pairs")
            if not all(isinstance(x, int) for x in flat[1::2]):
                raise ValueError("dedupe keys are not [request_id, index] pairs")
            it = iter(flat)
            seen: OrderedDict[RecordKey, None] = OrderedDict.fromkeys(zip(it, it, strict=False))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error(
                "spool follower state %s is unreadable (%s): starting from the beginning of "
                "every spool file; records already processed before will be counted again",
                self.state_path,
                exc,
            )
            return
        self._files = files
        self._seen = seen
        self._trim_seen()
        self._dirty = False

    def commit(self) -> None:
        """Write offsets and recent dedupe keys to ``state_path`` atomically (tmp + replace).

        A no-op when nothing changed since the last commit (the state with 200k keys is a
        few MB, so an idle sidecar polling every second should not rewrite it).
        """
        if not self._dirty and self.state_path.exists():
            return
        data = {
            "format": STATE_FORMAT,
            "files": [
                {
                    "dev": dev,
                    "ino": ino,
                    "path": st.path,
                    "offset": st.offset,
                    "head_len": st.head_len,
                    "head_hash": st.head_hash,
                }
                for (dev, ino), st in self._files.items()
            ],
            # Flat [id0, index0, id1, index1, ...]: built and parsed at C speed.
            "seen": list(chain.from_iterable(self._seen)),
        }
        text = json.dumps(data, separators=(",", ":"))  # one string: far faster than dump()
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)
        self._dirty = False

    def _trim_seen(self) -> None:
        while len(self._seen) > self.dedupe_keys:
            self._seen.popitem(last=False)

    # --- reading -----------------------------------------------------------------------

    def _open_files(self) -> list[tuple[tuple[int, int], Path, BinaryIO]]:
        """Open every spool file, oldest rotation first per writer; one handle per inode.

        Opening first and reading afterwards means a rotation during the poll cannot make a
        file vanish under us: an open handle keeps reading the inode whatever its name.
        """
        try:
            names = os.listdir(self.spool_dir)
        except FileNotFoundError:
            return []
        candidates = []
        for name in names:
            m = _NAME.match(name)
            if m:
                n = int(m.group("n")) if m.group("n") else 0
                candidates.append((m.group("writer"), -n, name))
        candidates.sort()
        opened: list[tuple[tuple[int, int], Path, BinaryIO]] = []
        keys: set[tuple[int, int]] = set()
        for _, _, name in candidates:
            path = self.spool_dir / name
            try:
                fh = path.open("rb")
            except FileNotFoundError:  # rotated out between listdir and open
                continue
            st = os.fstat(fh.fileno())
            key = (st.st_dev, st.st_ino)
            if key in keys:  # renamed during the listing: already open under another name
                fh.close()
                continue
            keys.add(key)
            opened.append((key, path, fh))
        return opened

    def _present_keys(self) -> set[tuple[int, int]]:
        """Inodes of the spool files that exist now (to drop only files really gone)."""
        keys: set[tuple[int, int]] = set()
        try:
            names = os.listdir(self.spool_dir)
        except FileNotFoundError:
            return keys
        for name in names:
            if _NAME.match(name):
                try:
                    st = os.stat(self.spool_dir / name)
                except FileNotFoundError:
                    continue
                keys.add((st.st_dev, st.st_ino))
        return keys

    def poll(self, max_records: int = 50_000) -> IngestBatch:
        """New complete lines from every spool file, parsed, validated and deduplicated.

        Stops once ``max_records`` valid records are collected (the rest stays for the next
        poll, visible in ``lag_bytes``). A partial last line of a live file is left for later;
        one at the end of a rotated file can never be completed and counts as malformed.
        """
        batch = IngestBatch()
        before = self._position()
        opened = self._open_files()
        try:
            for key, path, fh in opened:
                if len(batch.records) >= max_records or batch.waiting:
                    break
                self._read_file(key, path, fh, batch, max_records)
            present = self._present_keys() | {key for key, _, _ in opened}
            for key in list(self._files):
                if key not in present:
                    del self._files[key]
            lag = 0
            for key, _, fh in opened:
                st_ = self._files.get(key)
                if st_ is None:  # opened but not reached (max_records): nothing consumed yet
                    lag += os.fstat(fh.fileno()).st_size
                else:
                    lag += max(0, os.fstat(fh.fileno()).st_size - st_.offset)
            batch.lag_bytes = lag
            batch.files = len(present)
        finally:
            for _, _, fh in opened:
                fh.close()
        self._trim_seen()
        if self._position() != before:
            self._dirty = True
        return batch

    def _position(self) -> tuple[object, ...]:
        """A cheap fingerprint of the state, to know whether commit has anything to write."""
        files = tuple(sorted((k, st.offset, st.path, st.head_len) for k, st in self._files.items()))
        return (files, len(self._seen), next(reversed(self._seen), None))

    def _read_file(
        self,
        key: tuple[int, int],
        path: Path,
        fh: BinaryIO,
        batch: IngestBatch,
        max_records: int,
    ) -> None:
        size = os.fstat(fh.fileno()).st_size
        state = self._files.get(key)
        if state is None:
            state = _FileState(path=str(path))
            self._files[key] = state
        elif size < state.offset or (
            state.head_len and _head_hash(fh, state.head_len) != state.head_hash
        ):
            log.warning(
                "spool file %s (inode %d) is not the file last read at offset %d: "
                "reading it from the start",
                path,
                key[1],
                state.offset,
            )
            state.offset = state.head_len = 0
            state.head_hash = ""
        state.path = str(path)
        rotated = _NAME.match(path.name) is not None and not path.name.endswith(".jsonl")

        fh.seek(state.offset)
        offset = state.offset
        while len(batch.records) < max_records:
            line = fh.readline()
            if not line:
                break
            if not line.endswith(b"\n"):
                if rotated:  # the writer never appends to a rotated file: a torn tail
                    batch.malformed += 1
                    offset += len(line)
                break
            if not self._take(line, path, batch):
                break  # cannot be judged yet: read again from this line at the next poll
            offset += len(line)
        state.offset = offset
        want = min(offset, _HEAD_BYTES)
        if want > state.head_len:
            state.head_len = want
            state.head_hash = _head_hash(fh, want)

    def _take(self, line: bytes, path: Path, batch: IngestBatch) -> bool:
        """Count or keep one line; False (nothing counted) when the store cannot judge it."""
        if not line.strip():
            return True
        try:
            rec = parse_record(line)
        except _Skip as skip:
            if skip.reason == "unknown_schema":
                batch.unknown_schema += 1
                schema = skip.schema or ""
                if schema not in self._logged_schemas:
                    self._logged_schemas.add(schema)
                    log.error(
                        "spool file %s has records with unknown schema %r (expected %r): "
                        "skipping them; is the sidecar older than the handler?",
                        path,
                        schema,
                        SCHEMA,
                    )
            else:
                batch.malformed += 1
            return True
        rkey = (rec["request_id"], rec["index"])
        if rkey in self._seen:
            batch.duplicates += 1
            self._seen.move_to_end(rkey)
            return True
        if self.gate is not None:
            try:
                problem = self.gate.problem(rec)
            except ReferenceUnavailableError as exc:
                batch.waiting = exc.message
                self._log_waiting(exc.message)
                return False
            if problem is not None:
                batch.refused[problem.reason] = batch.refused.get(problem.reason, 0) + 1
                return True
        self._seen[rkey] = None
        if len(self._seen) > self.dedupe_keys:
            self._seen.popitem(last=False)
        batch.records.append(rec)
        return True

    def _log_waiting(self, why: str) -> None:
        now = time.monotonic()
        if now - self._waiting_logged >= 60.0:
            self._waiting_logged = now
            log.error("spool records wait until the model store can judge them: %s", why)
