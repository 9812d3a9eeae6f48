"""Tests for atelier.drift.ingest: following the feature spool across rotations and restarts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atelier.drift.ingest import IngestBatch, SpoolFollower
from atelier.drift.record_model import RecordGate
from atelier.drift.reference import VersionCatalog
from atelier.runtime.features import ALL_FEATURES
from atelier.runtime.records import SCHEMA, FeatureSpool, make_records
from support.drift_store import publish_version
from support.drift_store import records as store_records

pytestmark = pytest.mark.unit


def features(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {name: rng.random(n) for name in ALL_FEATURES}
    out["predicted_class"] = rng.integers(0, 10, n).astype(np.float64)
    return out


def recs(request_id: str, n: int = 1) -> list[dict[str, Any]]:
    return make_records(request_id, "raw", "fashion-mnist", "1", features(n), 0, n, now=1.0)


def gate(store: Path) -> RecordGate:
    return RecordGate(VersionCatalog(store))


def line(rec: dict[str, Any]) -> bytes:
    return (json.dumps(rec, separators=(",", ":")) + "\n").encode()


def keys(batch: IngestBatch) -> list[tuple[str, int]]:
    return [(r["request_id"], r["index"]) for r in batch.records]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


def test_reads_across_rotations_without_loss_or_repeat(spool_dir: Path, tmp_path: Path) -> None:
    spool = FeatureSpool(spool_dir, max_bytes=4_000, backups=50)
    follower = SpoolFollower(spool_dir, tmp_path / "state.json")
    got: list[tuple[str, int]] = []
    sent = 0
    for b in range(300):
        n = 1 + b % 3
        spool.write(recs(f"req-{b}", n))
        sent += n
        if b % 7 == 0:
            batch = follower.poll()
            assert batch.malformed == batch.duplicates == batch.unknown_schema == 0
            got += keys(batch)
    got += keys(follower.poll())
    spool.close()
    assert len(list(spool_dir.glob("*.jsonl.*"))) > 10  # it really rotated, many times
    assert len(got) == sent
    assert len(set(got)) == sent
    # Per writer, records come in the order they were written.
    assert got == sorted(got, key=lambda k: (int(k[0].split("-")[1]), k[1]))
    last = follower.poll()
    assert last.records == [] and last.lag_bytes == 0


def test_rotation_between_polls_reads_old_file_tail_first(spool_dir: Path, tmp_path: Path) -> None:
    spool = FeatureSpool(spool_dir, max_bytes=10_000_000)
    follower = SpoolFollower(spool_dir, tmp_path / "state.json")
    spool.write(recs("a"))
    assert keys(follower.poll()) == [("a", 0)]
    spool.write(recs("b"))  # lands in the live file, which then becomes .1
    spool.max_bytes = 1
    spool.write(recs("c"))  # rotates: a,b -> .1 ; c -> new live file
    batch = follower.poll()
    assert keys(batch) == [("b", 0), ("c", 0)]
    assert batch.files == 2


def test_partial_last_line_waits_until_complete(spool_dir: Path, tmp_path: Path) -> None:
    path = spool_dir / "features-1.jsonl"
    a, b = line(recs("a")[0]), line(recs("b")[0])
    path.write_bytes(a + b[:20])
    follower = SpoolFollower(spool_dir, tmp_path / "state.json")
    first = follower.poll()
    assert keys(first) == [("a", 0)]
    assert first.lag_bytes == 20 and first.malformed == 0
    with path.open("ab") as fh:
        fh.write(b[20:])
    second = follower.poll()
    assert keys(second) == [("b", 0)]
    assert second.lag_bytes == 0


def test_torn_tail_of_rotated_file_counts_as_malformed(spool_dir: Path, tmp_path: Path) -> None:
    (spool_dir / "features-1.jsonl.1").write_bytes(line(recs("a")[0]) + b'{"sch')
    batch = SpoolFollower(spool_dir, tmp_path / "state.json").poll()
    assert keys(batch) == [("a", 0)]
    assert batch.malformed == 1 and batch.lag_bytes == 0


def test_malformed_and_unknown_schema_are_counted_and_skipped(
    spool_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = recs("good", 2)
    missing = dict(good[0], request_id="m")
    del missing["entropy"]
    wrong_type = dict(good[0], request_id="w", brightness="bright")
    bool_index = dict(good[0], request_id="bi", index=True)
    v2 = dict(good[0], schema="atelier.features/v2", request_id="v2")
    lines = [
        line(good[0]),
        b"not json\n",
        b"[1, 2]\n",
        b'{"no_schema": 1}\n',
        line(missing),
        line(wrong_type),
        line(bool_index),
        b'{"schema":"atelier.features/v1","brightness":NaN}\n',
        line(v2),
        line(dict(v2, request_id="v2b")),
        line(good[1]),
        line(good[1]),  # written twice
    ]
    (spool_dir / "features-7.jsonl").write_bytes(b"".join(lines))
    with caplog.at_level(logging.ERROR, logger="atelier.drift.ingest"):
        batch = SpoolFollower(spool_dir, tmp_path / "state.json").poll()
    assert keys(batch) == [("good", 0), ("good", 1)]
    assert batch.records[0]["schema"] == SCHEMA
    assert isinstance(batch.records[0]["predicted_class"], int)
    assert batch.malformed == 7
    assert batch.unknown_schema == 2
    assert batch.duplicates == 1
    schema_logs = [r for r in caplog.records if "atelier.features/v2" in r.getMessage()]
    assert len(schema_logs) == 1  # once per schema value
    assert "features-7.jsonl" in schema_logs[0].getMessage()


def test_restart_from_committed_state_reads_only_new(spool_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    spool = FeatureSpool(spool_dir, max_bytes=3_000, backups=50)
    for i in range(20):
        spool.write(recs(f"old-{i}", 2))
    first = SpoolFollower(spool_dir, state)
    assert len(first.poll().records) == 40
    first.commit()
    for i in range(20):
        spool.write(recs(f"new-{i}", 2))
    spool.close()
    second = SpoolFollower(spool_dir, state)
    batch = second.poll()
    assert sorted(keys(batch)) == sorted((f"new-{i}", j) for i in range(20) for j in range(2))
    assert batch.duplicates == 0


def test_crash_between_poll_and_commit_counts_uncommitted_once(
    spool_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    spool = FeatureSpool(spool_dir, max_bytes=3_000, backups=50)
    counted: list[tuple[str, int]] = []
    sent = 0
    follower = SpoolFollower(spool_dir, state)
    for round_ in range(6):
        for i in range(15):
            spool.write(recs(f"r{round_}-{i}", 2))
            sent += 2
        batch = follower.poll(max_records=17)  # stop mid-file too
        if round_ % 2 == 0:
            counted += keys(batch)
            follower.commit()
        else:  # crash: the batch was not processed, the process restarts
            follower = SpoolFollower(spool_dir, state)
    while True:
        batch = follower.poll(max_records=17)
        if not batch.records:
            break
        counted += keys(batch)
        follower.commit()
    spool.close()
    assert len(counted) == sent
    assert len(set(counted)) == sent


def test_committed_state_survives_and_max_records_limits(spool_dir: Path, tmp_path: Path) -> None:
    spool = FeatureSpool(spool_dir)
    spool.write(recs("a", 10))
    spool.close()
    state = tmp_path / "state.json"
    follower = SpoolFollower(spool_dir, state)
    batch = follower.poll(max_records=4)
    assert [k[1] for k in keys(batch)] == [0, 1, 2, 3]
    assert batch.lag_bytes == sum(len(line(r)) for r in recs("a", 10)[4:])
    follower.commit()
    assert json.loads(state.read_text())["files"][0]["path"].endswith(
        f"features-{os.getpid()}.jsonl"
    )
    assert [k[1] for k in keys(SpoolFollower(spool_dir, state).poll())] == list(range(4, 10))


def test_lag_bytes_counts_unread_files(spool_dir: Path, tmp_path: Path) -> None:
    (spool_dir / "features-1.jsonl").write_bytes(line(recs("a")[0]))
    (spool_dir / "features-2.jsonl").write_bytes(line(recs("b")[0]))
    follower = SpoolFollower(spool_dir, tmp_path / "state.json")
    batch = follower.poll(max_records=1)
    assert len(batch.records) == 1
    assert batch.lag_bytes == len(line(recs("b")[0]))
    assert batch.files == 2
    assert follower.poll().lag_bytes == 0


def test_corrupt_state_starts_from_beginning(
    spool_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state.json"
    state.write_text("[1, 2]")  # valid JSON, wrong shape
    (spool_dir / "features-1.jsonl").write_bytes(line(recs("a")[0]))
    with caplog.at_level(logging.ERROR, logger="atelier.drift.ingest"):
        follower = SpoolFollower(spool_dir, state)
    assert "starting from the beginning" in caplog.text
    assert keys(follower.poll()) == [("a", 0)]


def test_vanished_files_dropped_and_replaced_file_read_from_start(
    spool_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    path = spool_dir / "features-1.jsonl"
    path.write_bytes(line(recs("a")[0]) + line(recs("b")[0]))
    follower = SpoolFollower(spool_dir, state)
    assert len(follower.poll().records) == 2
    follower.commit()
    # Same path, same size or smaller, different content: a new file (reused inode or not).
    path.unlink()
    path.write_bytes(line(recs("c")[0]))
    batch = SpoolFollower(spool_dir, state).poll()
    assert keys(batch) == [("c", 0)]
    path.unlink()
    empty = follower.poll()
    assert empty.files == 0 and empty.records == []
    follower.commit()
    assert json.loads(state.read_text())["files"] == []


def test_reused_inode_with_smaller_size_is_read_from_zero(spool_dir: Path, tmp_path: Path) -> None:
    path = spool_dir / "features-1.jsonl"
    path.write_bytes(line(recs("a")[0]) + line(recs("b")[0]))
    follower = SpoolFollower(spool_dir, tmp_path / "state.json")
    follower.poll()
    path.write_bytes(line(recs("c")[0]))  # truncate + rewrite: same inode, smaller
    assert keys(follower.poll()) == [("c", 0)]


def test_dedupe_keys_are_bounded(spool_dir: Path, tmp_path: Path) -> None:
    path = spool_dir / "features-1.jsonl"
    path.write_bytes(b"".join(line(recs(f"k{i}")[0]) for i in range(50)))
    follower = SpoolFollower(spool_dir, tmp_path / "state.json", dedupe_keys=10)
    assert len(follower.poll().records) == 50
    follower.commit()
    assert len(json.loads((tmp_path / "state.json").read_text())["seen"]) == 2 * 10
    with path.open("ab") as fh:
        fh.write(line(recs("k49")[0]) + line(recs("k0")[0]))  # recent dup, forgotten one
    batch = follower.poll()
    assert keys(batch) == [("k0", 0)] and batch.duplicates == 1


def test_missing_spool_dir_is_empty(tmp_path: Path) -> None:
    batch = SpoolFollower(tmp_path / "nope", tmp_path / "state.json").poll()
    assert batch == IngestBatch()


def test_rewritten_file_same_inode_not_smaller_is_read_from_zero(
    spool_dir: Path, tmp_path: Path
) -> None:
    path = spool_dir / "features-1.jsonl"
    path.write_bytes(line(recs("a")[0]))
    follower = SpoolFollower(spool_dir, tmp_path / "state.json")
    follower.poll()
    path.write_bytes(line(recs("zz")[0]) + line(recs("yy")[0]))  # same inode, larger
    assert keys(follower.poll()) == [("zz", 0), ("yy", 0)]


def test_commit_is_noop_when_nothing_changed(spool_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    (spool_dir / "features-1.jsonl").write_bytes(line(recs("a")[0]))
    follower = SpoolFollower(spool_dir, state)
    follower.poll()
    follower.commit()
    state.write_text(state.read_text())  # same content, new mtime we can compare against
    mtime = state.stat().st_mtime_ns
    follower.poll()
    follower.commit()
    assert state.stat().st_mtime_ns == mtime
    restarted = SpoolFollower(spool_dir, state)
    assert restarted.poll().records == []


# --- Records the store does not have: refused one by one, never the whole poll ----------


def test_one_bad_record_never_breaks_a_poll(spool_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_version(store, "1", 10)
    good = store_records(100)
    bad = [
        dict(good[0], request_id="huge", predicted_class=2**62),
        dict(good[0], request_id="big", predicted_class=10**7),
        dict(good[0], request_id="eleventh", predicted_class=10),  # the model has 10
        dict(good[0], request_id="up", model_version="../versions/1"),
        dict(good[0], request_id="abs", model_version="/srv/store/versions/1"),
        dict(good[0], request_id="empty", model_version=""),
        dict(good[0], request_id="unpublished", model_version="9"),
        dict(good[0], request_id="other", model_name="other-model"),
    ]
    lines = [line(r) for r in good[:50]] + [line(r) for r in bad] + [line(r) for r in good[50:]]
    (spool_dir / "features-1.jsonl").write_bytes(b"".join(lines))
    follower = SpoolFollower(spool_dir, tmp_path / "state.json", gate=gate(store))
    batch = follower.poll()
    assert keys(batch) == [(r["request_id"], r["index"]) for r in good]
    assert batch.malformed == 5  # the type refuses these: huge numbers, unsafe versions
    assert batch.refused == {"class_out_of_range": 1, "unknown_version": 1, "unknown_model": 1}
    assert batch.lag_bytes == 0 and batch.waiting is None


def test_a_version_published_later_is_taken(spool_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_version(store, "1", 10)
    path = spool_dir / "features-1.jsonl"
    path.write_bytes(line(store_records(1, version="2", prefix="early")[0]))
    follower = SpoolFollower(spool_dir, tmp_path / "state.json",
                             gate=RecordGate(VersionCatalog(store, miss_ttl_s=0.0)))  # fmt: skip
    assert follower.poll().refused == {"unknown_version": 1}
    publish_version(store, "2", 3)
    with path.open("ab") as fh:
        fh.write(line(store_records(1, version="2", prefix="late")[0]))
    assert keys(follower.poll()) == [("late-0", 0)]


def test_records_wait_while_the_store_cannot_judge_them(
    spool_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"  # nothing published yet (the store is being mounted, say)
    (spool_dir / "features-1.jsonl").write_bytes(b"".join(line(r) for r in store_records(40)))
    state = tmp_path / "state.json"
    follower = SpoolFollower(spool_dir, state, gate=gate(store))
    with caplog.at_level(logging.ERROR, logger="atelier.drift.ingest"):
        batch = follower.poll()
        follower.poll()
    assert batch.records == [] and batch.malformed == 0 and batch.refused == {}
    assert batch.waiting is not None and "CURRENT.json" in batch.waiting
    assert batch.lag_bytes == (spool_dir / "features-1.jsonl").stat().st_size
    assert caplog.text.count("wait until the model store") == 1  # logged once a minute
    follower.commit()
    publish_version(store, "1", 10)
    later = SpoolFollower(spool_dir, state, gate=gate(store)).poll()
    assert len(later.records) == 40 and later.lag_bytes == 0
