"""POST /ingest of the drift sidecar's app: records checked at the door, one by one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from atelier.drift.app import create_app
from atelier.drift.record_model import MAX_INGEST_RECORDS
from atelier.drift.service import DriftService
from atelier.drift.settings import DriftSettings
from support.drift_store import publish_version, records

pytestmark = pytest.mark.unit

LIMIT = 64 * 1024


def settings(tmp_path: Path, store: Path, **more: Any) -> DriftSettings:
    paths = {"spool_dir": tmp_path / "spool", "state_dir": tmp_path / "state",
             "database_url": f"sqlite:///{tmp_path / 'log.db'}"}  # fmt: skip
    return DriftSettings(store=store, **{**paths, **more})


@pytest.fixture
def service(tmp_path: Path, model_store: Path) -> DriftService:
    service = DriftService(settings(tmp_path, model_store, ingest_max_bytes=LIMIT))
    assert service.migrate()
    return service


@pytest.fixture
def client(service: DriftService) -> Iterator[TestClient]:
    with TestClient(create_app(service)) as c:
        yield c


def post(client: TestClient, body: Any) -> Any:
    return client.post("/ingest", json=body)


def error(r: Any, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] == kind, body
    assert r.headers["X-Atelier-Error"] == kind
    return str(body["error"]["message"])


def refused(service: DriftService, reason: str) -> float:
    return float(service.metrics.refused.labels(reason)._value.get())


GOOD = records(1)[0]


def test_good_records_in_every_body_shape_reach_the_log(
    client: TestClient, service: DriftService
) -> None:
    recs = records(40)
    for body in (recs[0], recs[1:20], {"records": recs[20:]}):
        r = post(client, body)
        assert r.status_code == 200, r.text
        assert r.json()["refused"] == []
    assert service.ship_once() == 40
    assert service.log.count() == 40


def test_one_huge_class_among_100_good_records_costs_only_itself(
    client: TestClient, service: DriftService
) -> None:
    recs = records(100)
    r = post(client, [*recs, dict(GOOD, request_id="huge", predicted_class=2**62)])
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 100, "refused": [
        {"index": 100, "field": "predicted_class", "reason": "invalid",
         "message": r.json()["refused"][0]["message"]}]}  # fmt: skip
    assert "less than" in r.json()["refused"][0]["message"]
    assert service.ship_once() == 100
    assert service.metrics.ingested._value.get() == 100


@pytest.mark.parametrize("klass", [10, 10**7])
def test_a_class_the_model_does_not_have_is_refused(
    client: TestClient, service: DriftService, klass: int
) -> None:
    r = post(client, [GOOD, dict(GOOD, request_id="c", predicted_class=klass)])
    assert r.status_code == 200, r.text
    (item,) = r.json()["refused"]
    assert (item["index"], item["field"]) == (1, "predicted_class")
    assert r.json()["accepted"] == 1
    if klass == 10:  # within the type's bound: the model (10 classes) refuses it
        assert item["reason"] == "class_out_of_range" and "0 to 9" in item["message"]
        assert refused(service, "class_out_of_range") == 1
    assert service.ship_once() == 1


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("wrong type", {"brightness": "bright"}, "brightness"),
    ("bool index", {"index": True}, "index"),
    ("index -1", {"index": -1}, "index"),
    ("class -1", {"predicted_class": -1}, "predicted_class"),
    ("parent version", {"model_version": "../versions/1"}, "model_version"),
    ("absolute version", {"model_version": "/srv/store/versions/1"}, "model_version"),
    ("empty version", {"model_version": ""}, "model_version"),
    ("unpublished version", {"model_version": "9"}, "model_version"),
    ("other model", {"model_name": "other"}, "model_name"),
    ("padding", {"padding": "x" * 60_000}, "padding"),
    ("long request id", {"request_id": "r" * 5000}, "request_id"),
]


@pytest.mark.parametrize(("case", "change", "field"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_record_is_refused_naming_its_index_and_field(
    client: TestClient, service: DriftService, case: str, change: dict[str, Any], field: str
) -> None:
    bad = {**GOOD, "request_id": "bad", **change}
    # Among good ones: 200, the good kept, the bad listed.
    r = post(client, [GOOD, bad])
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    (item,) = r.json()["refused"]
    assert (item["index"], item["field"]) == (1, field), item
    # Alone: nothing to keep, 422 naming the record and the field.
    message = error(post(client, {"records": [bad]}), 422, "invalid_records")
    assert "records[0]" in message and field in message
    assert service.ship_once() == 1  # only the good one reached the spool
    assert service.log.count("fashion-mnist", "1") == service.log.count()  # no other version
    assert service.log.count() == 1


def test_nan_is_refused(client: TestClient, service: DriftService) -> None:
    text = json.dumps([GOOD, dict(GOOD, request_id="nan", confidence=float("nan"))])
    assert "NaN" in text
    r = client.post("/ingest", content=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    (item,) = r.json()["refused"]
    assert (item["index"], item["field"]) == (1, "confidence")
    assert "finite" in item["message"]
    assert refused(service, "invalid") == 1


def test_every_bad_record_is_named_when_none_is_good(client: TestClient) -> None:
    bad = [dict(GOOD, index=-1), dict(GOOD, model_version=".."), dict(GOOD, predicted_class=10)]
    message = error(post(client, bad), 422, "invalid_records")
    for i, field in enumerate(("index", "model_version", "predicted_class")):
        assert f"records[{i}]: {field}" in message, message
    many = [dict(GOOD, index=-1)] * 25
    assert "and 15 more" in error(post(client, many), 422, "invalid_records")


def test_the_body_is_limited_before_it_is_parsed(client: TestClient) -> None:
    padding = b'{"records": [' + b" " * (10 * 1024 * 1024) + b"]}"  # 10 MB of blanks
    r = client.post("/ingest", content=padding, headers={"Content-Type": "application/json"})
    message = error(r, 413, "payload_too_large")
    assert f"{len(padding):,} bytes" in message and f"{LIMIT:,}" in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it is read
        yield b'{"records": ['
        for _ in range(100):
            yield b" " * 1024
        yield b"]}"

    r = client.post("/ingest", content=chunks(), headers={"Content-Type": "application/json"})
    assert "more than" in error(r, 413, "payload_too_large")


def test_too_many_records_are_refused_before_each_is_checked(service: DriftService) -> None:
    big = service.s.model_copy(update={"ingest_max_bytes": 64 * 1024 * 1024})
    with TestClient(create_app(DriftService(big))) as c:
        r = c.post("/ingest", json=[{}] * (MAX_INGEST_RECORDS + 1))
    assert f"at most {MAX_INGEST_RECORDS:,}" in error(r, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"", "empty_body"),
        (b"{not json", "malformed_request"),
        (b"[" * 60_000, "malformed_request"),  # nesting past the parser's recursion limit
        (b"5", "malformed_request"),
        (b"[]", "malformed_request"),
        (b'{"records": []}', "malformed_request"),
        (b'{"records": 5}', "malformed_request"),
    ],
)
def test_a_body_that_is_not_records_is_a_typed_400(
    client: TestClient, content: bytes, kind: str
) -> None:
    r = client.post("/ingest", content=content, headers={"Content-Type": "application/json"})
    error(r, 400, kind)


def test_only_json_is_taken(client: TestClient) -> None:
    r = client.post("/ingest", content=json.dumps(GOOD), headers={"Content-Type": "text/plain"})
    assert "application/json" in error(r, 415, "unsupported_media_type")


def test_an_unwritable_spool_is_a_typed_503(tmp_path: Path, model_store: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    unwritable = settings(tmp_path, model_store, spool_dir=tmp_path / "not-a-folder")
    with TestClient(create_app(DriftService(unwritable))) as c:
        message = error(post(c, [GOOD]), 503, "spool_unavailable")
    assert "nothing was accepted" in message


def test_without_a_published_model_nothing_can_be_checked(tmp_path: Path) -> None:
    with TestClient(create_app(DriftService(settings(tmp_path, tmp_path / "empty")))) as c:
        message = error(post(c, [GOOD]), 503, "reference_unavailable")
    assert "nothing was accepted" in message


def test_a_version_published_after_start_is_taken(
    client: TestClient, service: DriftService, model_store: Path
) -> None:
    v2 = dict(GOOD, model_version="2", predicted_class=2)
    assert post(client, [v2]).status_code == 422
    publish_version(model_store, "2", 3)
    time.sleep(1.1)  # the app remembers a miss for a second (VersionCatalog's miss_ttl_s)
    r = post(client, [v2, dict(v2, request_id="c3", predicted_class=3)])
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert r.json()["refused"][0]["reason"] == "class_out_of_range"


def test_openapi_documents_the_record_and_the_answers(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/ingest"]["post"]
    schemas = doc["components"]["schemas"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/IngestBody")
    text = json.dumps(schemas["IngestBody"])
    assert "IngestEnvelope" in text and "FeatureRecord" in text
    record = schemas["FeatureRecord"]
    assert record["additionalProperties"] is False
    assert record["properties"]["index"]["exclusiveMaximum"] == 4096
    assert record["properties"]["confidence"]["maximum"] == 1.0
    assert record["properties"]["model_version"]["pattern"].startswith("^[A-Za-z0-9]")
    assert set(record["required"]) >= {"schema", "request_id", "predicted_class", "entropy"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/IngestAnswer"
    )
    for status in ("400", "413", "415", "422", "503"):
        ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorAnswer")
