"""atelier.drift.record_model: the feature record type, and the store checks of RecordGate."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from atelier.drift.record_model import (
    MAX_CLASSES,
    MAX_INPUT_BASE64,
    RECORD,
    FeatureRecord,
    RecordGate,
    parse_line,
)
from atelier.drift.reference import VersionCatalog, load_reference
from atelier.runtime.errors import ReferenceUnavailableError
from atelier.runtime.features import ALL_FEATURES
from atelier.runtime.records import MAX_REQUEST_ID_LENGTH, SCHEMA
from support.drift_store import MODEL, publish_version, records

pytestmark = pytest.mark.unit

GOOD = records(1)[0]


def line(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec).encode()


def test_the_type_is_the_record_format() -> None:
    fields = typing.get_type_hints(FeatureRecord)
    assert set(fields) == {"schema", "request_id", "index", "time", "model_name",
                           "model_version", "protocol", *ALL_FEATURES, "input"}  # fmt: skip
    sampled = dict(GOOD, input="AAEC")  # only sampled records carry their input
    assert RECORD.validate_python(sampled) == sampled
    assert typing.get_args(fields["schema"]) == (SCHEMA,)
    assert parse_line(line(GOOD)) == GOOD
    assert RECORD.validate_python(GOOD) == GOOD


BAD: list[tuple[str, Any, str]] = [
    ("input", "not base64!", "input"),
    ("input", "A" * (MAX_INPUT_BASE64 + 4), "input"),  # bounded: no padding through it
    ("brightness", "bright", "brightness"),
    ("index", True, "index"),  # a bool is not an int
    ("predicted_class", False, "predicted_class"),
    ("predicted_class", 3.0, "predicted_class"),  # strict: a class id is an int
    ("index", -1, "index"),
    ("index", 4096, "index"),  # at most ATELIER_MAX_INSTANCES' bound of images
    ("predicted_class", -1, "predicted_class"),
    ("predicted_class", 2**62, "predicted_class"),
    ("predicted_class", MAX_CLASSES, "predicted_class"),
    ("confidence", 1.5, "confidence"),
    ("entropy", -0.1, "entropy"),
    ("time", "yesterday", "time"),
    ("request_id", "", "request_id"),
    ("request_id", "a b", "request_id"),
    ("request_id", "x" * (MAX_REQUEST_ID_LENGTH + 1), "request_id"),
    ("model_version", "../versions/1", "model_version"),
    ("model_version", "/etc/atelier", "model_version"),
    ("model_version", "", "model_version"),
    ("model_version", ".", "model_version"),
    ("model_version", "..", "model_version"),
    ("model_version", 1, "model_version"),
    ("model_name", "../other", "model_name"),
    ("protocol", "x" * 100, "protocol"),
    ("schema", "atelier.features/v2", "schema"),
    ("padding", "x" * 1_000_000, "padding"),  # no field beyond the format's
]


@pytest.mark.parametrize(
    ("key", "value", "field"), BAD, ids=[f"{k}={str(v)[:12]}" for k, v, _ in BAD]
)
def test_bad_fields_are_refused_by_name(key: str, value: Any, field: str) -> None:
    rec = {**GOOD, key: value}
    for validate in (lambda: RECORD.validate_python(rec), lambda: parse_line(line(rec))):
        with pytest.raises(ValidationError) as info:
            validate()
        assert info.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(token: str) -> None:
    text = line({**GOOD, "confidence": 0.123454321}).replace(b"0.123454321", token.encode())
    assert token.encode() in text
    with pytest.raises(ValidationError) as info:
        parse_line(text)
    assert info.value.errors()[0]["loc"] == ("confidence",)
    with pytest.raises(ValidationError):
        RECORD.validate_python(json.loads(text))


def test_missing_fields_are_refused() -> None:
    rec = dict(GOOD)
    del rec["entropy"]
    with pytest.raises(ValidationError) as info:
        parse_line(line(rec))
    assert info.value.errors()[0]["loc"] == ("entropy",)


def test_an_int_is_a_float_and_the_record_stays_a_dict() -> None:
    rec = parse_line(line({**GOOD, "brightness": 0, "time": 5}))
    assert rec["brightness"] == 0.0 and isinstance(rec["brightness"], float)
    assert type(rec) is dict


# --- VersionCatalog and RecordGate -----------------------------------------------------


def test_catalog_finds_published_versions_with_their_class_count(tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_version(store, "1", 3)
    catalog = VersionCatalog(store, miss_ttl_s=0.0)
    found = catalog.lookup(MODEL, "1")
    assert found is not None and found.num_classes == 3
    assert catalog.lookup(MODEL, "2") is None
    assert catalog.lookup("other-model", "1") is None
    for unsafe in ("../1", "/1", "", ".", ".."):
        assert catalog.lookup(MODEL, unsafe) is None
    # A version published later is found; a known one stays known (versions are immutable).
    publish_version(store, "2", 12, current=False)
    found = catalog.lookup(MODEL, "2")
    assert found is not None and found.num_classes == 12
    (store / "CURRENT.json").unlink()
    assert catalog.lookup(MODEL, "1") is not None


def test_catalog_remembers_a_miss_for_its_ttl(tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_version(store, "1", 3)
    catalog = VersionCatalog(store, miss_ttl_s=3600)
    assert catalog.lookup(MODEL, "2") is None
    publish_version(store, "2", 3, current=False)
    assert catalog.lookup(MODEL, "2") is None  # within the TTL: not looked at again
    assert VersionCatalog(store).lookup(MODEL, "2") is not None


def test_catalog_without_a_store_cannot_say(tmp_path: Path) -> None:
    catalog = VersionCatalog(tmp_path / "nothing")
    with pytest.raises(ReferenceUnavailableError):
        catalog.lookup(MODEL, "1")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "CURRENT.json").write_text("{not json")
    with pytest.raises(ReferenceUnavailableError, match="unreadable"):
        catalog.lookup(MODEL, "1")


def test_the_reference_of_an_unsafe_version_is_never_read(tmp_path: Path) -> None:
    store = tmp_path / "m" / "store"
    publish_version(store, "1", 3)
    # A version folder outside versions/ that a traversal would reach.
    publish_version(tmp_path / "m", "evil", 3, current=False)
    with pytest.raises(ReferenceUnavailableError, match="not a name"):
        load_reference(store, "../../versions/evil")
    assert load_reference(store, "1").num_classes == 3


@pytest.mark.parametrize("k", [3, 12])
def test_gate_refuses_what_the_store_does_not_have(tmp_path: Path, k: int) -> None:
    store = tmp_path / "store"
    publish_version(store, "1", k)
    gate = RecordGate(VersionCatalog(store))
    rec = records(1, num_classes=k)[0]
    assert gate.problem(RECORD.validate_python(rec)) is None
    last = RECORD.validate_python({**rec, "predicted_class": k - 1})
    assert gate.problem(last) is None
    beyond = gate.problem(RECORD.validate_python({**rec, "predicted_class": k}))
    assert beyond is not None and beyond.reason == "class_out_of_range"
    assert beyond.field == "predicted_class" and f"has {k}" in beyond.message
    unpublished = gate.problem(RECORD.validate_python({**rec, "model_version": "9"}))
    assert unpublished is not None and unpublished.reason == "unknown_version"
    assert unpublished.field == "model_version"
    other = gate.problem(RECORD.validate_python({**rec, "model_name": "other"}))
    assert other is not None and other.reason == "unknown_model"
