"""Tests for atelier.runtime.records: the JSON Lines feature spool and its rotation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atelier.runtime.features import ALL_FEATURES, all_features
from atelier.runtime.records import SCHEMA, FeatureSpool, make_records
from atelier.runtime.settings import ServingSettings

pytestmark = pytest.mark.unit

META_KEYS = ("schema", "request_id", "index", "time", "model_name", "model_version", "protocol")
RECORD_KEYS = set(META_KEYS) | set(ALL_FEATURES)


def batch_features(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    probs = rng.random((n, 10))
    return all_features(images, probs / probs.sum(axis=1, keepdims=True))


def constant_features(n: int) -> dict[str, np.ndarray]:
    """Features whose records all format to the same length."""
    return {name: np.full(n, 1.0 if name == "predicted_class" else 0.25) for name in ALL_FEATURES}


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("features-*.jsonl*"))


def read_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    out = []
    for line in text.splitlines():
        rec = json.loads(line)
        assert isinstance(rec, dict)
        out.append(rec)
    return out


def line_length(record: dict[str, Any]) -> int:
    return len(json.dumps(record, separators=(",", ":"))) + 1


# --- make_records


def test_make_records_keys_and_types() -> None:
    feats = batch_features(4)
    recs = make_records("req-1", "v1", "fashion-mnist", "3", feats, 0, 4, now=1732262400.1234567)
    assert [r["index"] for r in recs] == [0, 1, 2, 3]
    for j, rec in enumerate(recs):
        assert set(rec) == RECORD_KEYS
        assert rec["schema"] == SCHEMA == "atelier.features/v1"
        assert rec["request_id"] == "req-1"
        assert rec["protocol"] == "v1"
        assert rec["model_name"] == "fashion-mnist"
        assert rec["model_version"] == "3"
        assert rec["time"] == pytest.approx(1732262400.123457)
        assert type(rec["predicted_class"]) is int
        assert rec["predicted_class"] == int(feats["predicted_class"][j])
        for name in ALL_FEATURES:
            if name != "predicted_class":
                assert type(rec[name]) is float
                assert rec[name] == pytest.approx(feats[name][j], abs=1e-6)


def test_make_records_slices_from_start() -> None:
    feats = batch_features(6, seed=1)
    recs = make_records("req-2", "v2", "m", "1", feats, 2, 3, now=0.0)
    assert [r["index"] for r in recs] == [0, 1, 2]
    for j, rec in enumerate(recs):
        assert rec["brightness"] == round(float(feats["brightness"][2 + j]), 6)
        assert rec["predicted_class"] == int(feats["predicted_class"][2 + j])


def test_make_records_without_now_uses_the_clock() -> None:
    (rec,) = make_records("r", "raw", "m", "1", batch_features(1), 0, 1)
    assert isinstance(rec["time"], float) and rec["time"] > 0


def test_make_records_count_zero() -> None:
    assert make_records("r", "raw", "m", "1", batch_features(2), 0, 0) == []


# --- the spool file


def test_spool_writes_one_json_object_per_line(tmp_path: Path) -> None:
    spool = FeatureSpool(tmp_path)
    assert spool.path == tmp_path / f"features-{os.getpid()}.jsonl"
    feats = batch_features(5)
    first = make_records("a", "raw", "m", "3", feats, 0, 1, now=1.0)
    second = make_records("b", "v1", "m", "3", feats, 1, 4, now=2.0)
    spool.write(first)
    spool.write(second)
    spool.close()
    assert spool_files(tmp_path) == [spool.path]
    recs = read_lines(spool.path)
    assert recs == first + second  # order kept, values round-trip through JSON
    for rec in recs:
        assert set(rec) == RECORD_KEYS
        assert rec["schema"] == SCHEMA
    assert [(r["request_id"], r["index"]) for r in recs] == [
        ("a", 0),
        ("b", 0),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    # Compact separators, one record per line.
    for line in spool.path.read_text().splitlines():
        assert ", " not in line and ": " not in line


def test_spool_creates_its_directory(tmp_path: Path) -> None:
    spool = FeatureSpool(tmp_path / "a" / "b")
    spool.close()
    assert spool.path.parent.is_dir()


def test_close_is_idempotent_and_flushes(tmp_path: Path) -> None:
    spool = FeatureSpool(tmp_path)
    recs = make_records("r", "raw", "m", "3", batch_features(50), 0, 50, now=0.0)
    spool.write(recs)
    spool.close()
    spool.close()
    assert len(read_lines(spool.path)) == 50


def test_close_without_writes(tmp_path: Path) -> None:
    spool = FeatureSpool(tmp_path)
    spool.close()
    spool.close()
    assert read_lines(spool.path) == []


# --- rotation


def _sequence(n: int) -> list[dict[str, Any]]:
    """n records of identical length, told apart by a fixed-width request id."""
    feats = constant_features(1)
    return [make_records(f"r{i:05d}", "raw", "m", "3", feats, 0, 1, now=1.5)[0] for i in range(n)]


def _max_bytes_for(lines_per_file: int) -> int:
    """A size limit that holds exactly lines_per_file records of _sequence per file.

    Half a line of slack, so rolling over at ">= limit" and at "> limit" agree.
    """
    length = line_length(_sequence(1)[0])
    return lines_per_file * length + length // 2


def _files_oldest_first(base: Path, backups: int) -> list[Path]:
    return [Path(f"{base}.{k}") for k in range(backups, 0, -1)] + [base]


def test_rotation_keeps_every_record_until_backups_run_out(tmp_path: Path) -> None:
    per_file, backups = 5, 3
    max_bytes = _max_bytes_for(per_file)
    assert 1500 < max_bytes < 2500
    n = backups * per_file + 1  # fills .1, .2 and .3, one record in the live file
    spool = FeatureSpool(tmp_path, max_bytes=max_bytes, backups=backups)
    written = _sequence(n)
    for rec in written:
        spool.write([rec])
    spool.close()

    base = spool.path
    names = [p.name for p in spool_files(tmp_path)]
    assert names == sorted([base.name, f"{base.name}.1", f"{base.name}.2", f"{base.name}.3"])
    per = [read_lines(p) for p in _files_oldest_first(base, backups)]
    assert [len(x) for x in per] == [per_file, per_file, per_file, 1]
    for p in _files_oldest_first(base, backups):
        assert p.stat().st_size <= max_bytes
    assert sum(len(x) for x in per) == n
    assert [r["request_id"] for lines in per for r in lines] == [r["request_id"] for r in written]


def test_rotation_drops_only_the_oldest(tmp_path: Path) -> None:
    backups = 3
    spool = FeatureSpool(tmp_path, max_bytes=_max_bytes_for(5), backups=backups)
    written = _sequence(60)
    for rec in written:
        spool.write([rec])
    spool.close()

    base = spool.path
    assert [p.name for p in spool_files(tmp_path)] == sorted(
        [base.name, f"{base.name}.1", f"{base.name}.2", f"{base.name}.3"]
    )
    kept = [r for p in _files_oldest_first(base, backups) for r in read_lines(p)]
    ids = [r["request_id"] for r in kept]
    expected = [r["request_id"] for r in written]
    assert 0 < len(ids) < len(expected)
    assert ids == expected[-len(ids) :]  # a contiguous tail, newest last


def test_rotation_with_real_features_keeps_valid_lines(tmp_path: Path) -> None:
    spool = FeatureSpool(tmp_path, max_bytes=2000, backups=50)
    feats = batch_features(40, seed=3)
    for i in range(10):
        spool.write(make_records(f"req-{i}", "v1", "m", "3", feats, 4 * i, 4))
    spool.close()
    files = spool_files(tmp_path)
    assert len(files) > 3
    recs = [r for p in files for r in read_lines(p)]
    assert len(recs) == 40
    assert all(set(r) == RECORD_KEYS for r in recs)
    counts: dict[str, list[int]] = {}
    for r in recs:
        counts.setdefault(r["request_id"], []).append(r["index"])
    expected = {f"req-{i}": [0, 1, 2, 3] for i in range(10)}
    assert {k: sorted(v) for k, v in counts.items()} == expected


# --- environment (ServingSettings opens the spool)


@pytest.mark.parametrize("env", [{}, {"ATELIER_SPOOL_DIR": ""}, {"OTHER": "x"}])
def test_from_env_without_dir_is_none(env: dict[str, str]) -> None:
    assert ServingSettings.from_env(env).open_spool() is None


def test_from_env_reads_sizes(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    env = {
        "ATELIER_SPOOL_DIR": str(directory),
        "ATELIER_SPOOL_MAX_BYTES": str(_max_bytes_for(4)),
        "ATELIER_SPOOL_BACKUPS": "2",
    }
    spool = ServingSettings.from_env(env).open_spool()
    assert spool is not None
    assert spool.path.parent == directory
    written = _sequence(30)
    for rec in written:
        spool.write([rec])
    spool.close()
    base = spool.path
    # The env's size limit (4 records a file) and backup count (2) are the ones in force.
    assert [p.name for p in spool_files(directory)] == sorted(
        [base.name, f"{base.name}.1", f"{base.name}.2"]
    )
    per = [read_lines(p) for p in _files_oldest_first(base, 2)]
    assert [len(x) for x in per] == [4, 4, 30 % 4]
    assert [r["request_id"] for x in per for r in x] == [r["request_id"] for r in written[-10:]]


def test_from_env_defaults(tmp_path: Path) -> None:
    spool = ServingSettings.from_env({"ATELIER_SPOOL_DIR": str(tmp_path)}).open_spool()
    assert spool is not None
    try:
        assert spool.max_bytes == 50_000_000
        assert spool.backups == 5
    finally:
        spool.close()


def test_from_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATELIER_SPOOL_DIR", raising=False)
    assert ServingSettings.from_env().open_spool() is None
    monkeypatch.setenv("ATELIER_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("ATELIER_SPOOL_MAX_BYTES", "1234")
    monkeypatch.setenv("ATELIER_SPOOL_BACKUPS", "7")
    spool = ServingSettings.from_env().open_spool()
    assert spool is not None
    try:
        assert spool.path.parent == tmp_path
        assert spool.max_bytes == 1234
        assert spool.backups == 7
    finally:
        spool.close()


# --- best effort for serving, exact for the sidecar


def records(request_id: str, n: int = 3) -> list[dict[str, Any]]:
    return make_records(request_id, "v2", "m", "1", constant_features(n), 0, n, now=1.0)


def failing_write(monkeypatch: pytest.MonkeyPatch, after_bytes: int, err: int) -> None:
    """os.write writes `after_bytes` of the next call, then fails with `err` once."""
    real = os.write
    state = {"armed": True}

    def write(fd: int, data: Any) -> int:
        if state["armed"]:
            state["armed"] = False
            if after_bytes:
                real(fd, bytes(data[:after_bytes]))
            raise OSError(err, os.strerror(err))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_failed_write_is_counted_cut_back_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = FeatureSpool(tmp_path)
    assert spool.write(records("a")) is True
    before = spool.path.read_bytes()
    failing_write(monkeypatch, after_bytes=50, err=28)  # ENOSPC after half a line
    assert spool.write(records("b")) is False
    assert spool.path.read_bytes() == before  # the half line was truncated away
    assert spool.take_errors() == {"no_space": 1}
    assert spool.take_errors() == {}
    assert spool.write(records("c")) is True
    assert [r["request_id"] for r in read_lines(spool.path)] == ["a"] * 3 + ["c"] * 3


def test_a_torn_line_that_cannot_be_cut_stands_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = FeatureSpool(tmp_path)
    spool.write(records("a", 1))
    failing_write(monkeypatch, after_bytes=40, err=28)

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    assert spool.write(records("b", 2)) is False
    assert spool.write(records("c", 2)) is True
    lines = spool.path.read_text().splitlines()
    assert len(lines) == 4  # a, the fragment of b on a line of its own, c, c
    assert json.loads(lines[0])["request_id"] == "a"
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[1])
    assert [json.loads(x)["request_id"] for x in lines[2:]] == ["c", "c"]


def test_a_file_left_torn_by_a_crash_is_continued_on_a_new_line(tmp_path: Path) -> None:
    spool = FeatureSpool(tmp_path)
    spool.write(records("a", 1))
    spool.close()
    with spool.path.open("ab") as fh:
        fh.write(b'{"schema":"atelier.feat')  # a crash mid-line
    again = FeatureSpool(tmp_path)
    assert again.write(records("b", 1))
    lines = again.path.read_text().splitlines()
    assert json.loads(lines[-1])["request_id"] == "b" and len(lines) == 3


def test_an_unwritable_folder_at_start_serves_and_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "spool"
    blocker.write_text("a file where the folder should be")
    spool = FeatureSpool(blocker, retry_s=0.0)
    assert not spool.writable
    assert spool.write(records("a")) is False
    errors = spool.take_errors()
    assert set(errors) == {"missing"} and errors["missing"] >= 2
    blocker.unlink()  # the folder can be made now
    assert spool.write(records("b")) is True and spool.writable
    assert [r["request_id"] for r in read_lines(spool.path)] == ["b"] * 3


def test_failures_are_logged_at_most_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "spool"
    blocker.write_text("")
    spool = FeatureSpool(blocker, retry_s=0.0, log_every_s=3600)
    for _ in range(5):
        spool.write(records("a"))
    warnings = [r for r in caplog.records if "feature spool" in r.getMessage()]
    assert len(warnings) == 1
    assert "atelier_spool_errors_total" in warnings[0].getMessage()
    assert spool.take_errors() == {"missing": 6}


def test_a_torn_file_that_rotates_leaves_the_new_file_clean(tmp_path: Path) -> None:
    """The fragment goes with the rotated file (its reader skips it as malformed); the new
    file starts with a whole record, not an empty line."""
    spool = FeatureSpool(tmp_path, max_bytes=_max_bytes_for(2))
    spool.write(records("a", 1))
    spool.close()
    with spool.path.open("ab") as fh:
        fh.write(b'{"schema":"atelier.feat')
    again = FeatureSpool(tmp_path, max_bytes=_max_bytes_for(2))
    assert again.write(records("b", 2))
    assert [r["request_id"] for r in read_lines(again.path)] == ["b", "b"]
    rotated = again.path.with_name(f"{again.path.name}.1").read_bytes()
    assert rotated.endswith(b'{"schema":"atelier.feat')
