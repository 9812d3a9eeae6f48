"""Tests for atelier.runtime.service: one mixed batch in, one answer per request out."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.runtime.records import SCHEMA, FeatureSpool
from atelier.runtime.service import STEPS, BatchStats, InferenceService, Item, Outcome, encode
from atelier.training.loop import RunResult

pytestmark = pytest.mark.unit

ATOL = 1e-5


@pytest.fixture(scope="module")
def classifier(smoke_run: RunResult) -> Classifier:
    return Classifier.from_dir(smoke_run.run_dir)


def image(seed: int) -> np.ndarray:
    """A blob on black, roughly the look of a Fashion-MNIST item."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    cy, cx = rng.uniform(9, 19, 2)
    ry, rx = rng.uniform(4, 11, 2)
    blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = rng.integers(0, 60, (28, 28))
    return np.where(blob, 120 + noise * 2, noise // 4).astype(np.uint8)


def png(seed: int) -> bytes:
    return encode_png(image(seed))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expected_probs(classifier: Classifier, seeds: list[int]) -> np.ndarray:
    return classifier.predict_proba(np.stack([image(s)[None] for s in seeds]))


def top_k_probs(answer: dict[str, Any]) -> dict[int, float]:
    return {e["class_id"]: e["probability"] for e in answer["top_k"]}


def check_answer(answer: dict[str, Any], probs: np.ndarray) -> None:
    """A describe()-style answer agrees with the classifier's probabilities for one image."""
    assert answer["class_id"] == int(probs.argmax())
    assert answer["confidence"] == pytest.approx(float(probs.max()), abs=ATOL)
    for class_id, p in top_k_probs(answer).items():
        assert p == pytest.approx(float(probs[class_id]), abs=ATOL)


def read_spool(spool: FeatureSpool) -> list[dict[str, Any]]:
    files = sorted(spool.path.parent.glob("features-*.jsonl*"))
    return [json.loads(line) for p in files for line in p.read_text().splitlines()]


def mixed_items() -> list[Item]:
    v2_images = np.stack([image(3), image(4)])
    return [
        Item(png(0), content_type="image/png", request_id="req-raw", top_k="3"),
        Item(
            {"instances": [{"b64": b64(png(1))}, image(2).tolist()]},
            content_type="application/json",
            request_id="req-v1",
        ),
        Item(
            {
                "id": "req-v2",
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": [2, 28, 28],
                        "datatype": "UINT8",
                        "data": v2_images.reshape(-1).tolist(),
                    }
                ],
            },
            request_id="hdr-v2",  # the body's id wins
        ),
        Item(b"\x89PNG\r\n\x1a\nnot really", content_type="image/png", request_id="req-bad"),
        Item({"file": png(5)}, multipart=True, request_id="req-mp"),
        Item(png(6), content_type="image/png", request_id="req-wrong-route", expect="v1"),
    ]


@pytest.fixture(scope="module")
def mixed(
    classifier: Classifier, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[Outcome], BatchStats, list[dict[str, Any]]]:
    spool = FeatureSpool(tmp_path_factory.mktemp("spool"))
    service = InferenceService(classifier, spool=spool)
    outcomes, stats = service.handle(mixed_items())
    spool.close()
    return outcomes, stats, read_spool(spool)


def test_statuses_and_protocols(mixed: tuple[list[Outcome], BatchStats, Any]) -> None:
    outcomes, _, _ = mixed
    assert [o.status for o in outcomes] == [200, 200, 200, 400, 200, 400]
    assert [o.protocol for o in outcomes] == ["raw", "v1", "v2", "raw", "raw", "v1"]
    assert [o.error for o in outcomes] == [
        None,
        None,
        None,
        "invalid_image",
        None,
        "malformed_request",
    ]


def test_error_bodies(mixed: tuple[list[Outcome], BatchStats, Any]) -> None:
    outcomes, _, _ = mixed
    bad, wrong_route = outcomes[3], outcomes[5]
    assert set(bad.body) == {"error"}
    assert bad.body["error"]["type"] == "invalid_image"
    assert bad.body["error"]["message"]
    err = wrong_route.body["error"]
    assert err["type"] == "malformed_request"
    assert "endpoint" in err["message"]
    assert "KServe v1" in err["message"]
    assert "an image" in err["message"]


def test_raw_answers_match_classifier(
    mixed: tuple[list[Outcome], BatchStats, Any], classifier: Classifier
) -> None:
    outcomes, _, _ = mixed
    raw, multipart = outcomes[0].body, outcomes[4].body
    expected = expected_probs(classifier, [0, 5])
    assert raw["request_id"] == "req-raw"
    assert raw["model_version"] == classifier.spec.version
    assert len(raw["top_k"]) == 3  # X-Top-K
    check_answer(raw, expected[0])
    assert multipart["request_id"] == "req-mp"
    assert len(multipart["top_k"]) == 5
    check_answer(multipart, expected[1])


def test_v1_answers_match_classifier(
    mixed: tuple[list[Outcome], BatchStats, Any], classifier: Classifier
) -> None:
    outcomes, _, _ = mixed
    preds = outcomes[1].body["predictions"]
    expected = expected_probs(classifier, [1, 2])
    assert len(preds) == 2
    for pred, probs in zip(preds, expected, strict=True):
        check_answer(pred, probs)


def test_v2_answers_match_classifier(
    mixed: tuple[list[Outcome], BatchStats, Any], classifier: Classifier
) -> None:
    outcomes, _, _ = mixed
    body = outcomes[2].body
    expected = expected_probs(classifier, [3, 4])
    assert body["id"] == "req-v2"
    assert body["model_name"] == classifier.spec.name
    probs, label = body["outputs"]
    assert probs["shape"] == [2, classifier.spec.num_classes]
    np.testing.assert_allclose(np.array(probs["data"]).reshape(2, -1), expected, atol=ATOL)
    assert label["data"] == [classifier.spec.class_names[int(i)] for i in expected.argmax(axis=1)]


def test_stats(mixed: tuple[list[Outcome], BatchStats, Any]) -> None:
    _, stats, _ = mixed
    assert stats.requests == 6
    assert stats.images == 1 + 2 + 2 + 1
    assert set(stats.seconds) == set(STEPS) == {"preprocess", "inference", "postprocess"}
    assert all(v >= 0 for v in stats.seconds.values())


def test_spool_has_one_record_per_classified_image(
    mixed: tuple[list[Outcome], BatchStats, Any], classifier: Classifier
) -> None:
    _, stats, records = mixed
    assert len(records) == stats.images
    by_request: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        assert rec["schema"] == SCHEMA
        assert rec["model_name"] == classifier.spec.name
        assert rec["model_version"] == classifier.spec.version
        by_request.setdefault(rec["request_id"], []).append(rec)
    assert {k: sorted(r["index"] for r in v) for k, v in by_request.items()} == {
        "req-raw": [0],
        "req-v1": [0, 1],
        "req-v2": [0, 1],
        "req-mp": [0],
    }
    protocols = {k: {r["protocol"] for r in v} for k, v in by_request.items()}
    assert protocols == {"req-raw": {"raw"}, "req-v1": {"v1"}, "req-v2": {"v2"}, "req-mp": {"raw"}}
    seeds = {("req-raw", 0): 0, ("req-v1", 0): 1, ("req-v1", 1): 2}
    seeds |= {("req-v2", 0): 3, ("req-v2", 1): 4, ("req-mp", 0): 5}
    for rec in records:
        probs = expected_probs(classifier, [seeds[rec["request_id"], rec["index"]]])[0]
        assert rec["predicted_class"] == int(probs.argmax())
        assert rec["confidence"] == pytest.approx(float(probs.max()), abs=ATOL)


def test_answers_equal_a_batch_of_one(classifier: Classifier) -> None:
    """Batching with other requests does not change a request's answer."""
    service = InferenceService(classifier)
    alone, _ = service.handle([Item(png(7), request_id="a")])
    together, _ = service.handle(
        [Item(png(8)), Item(png(7), request_id="a"), Item({"instances": [b64(png(9))]})]
    )
    a, b = alone[0].body, together[1].body
    assert a["class_id"] == b["class_id"]
    assert a["confidence"] == pytest.approx(b["confidence"], abs=ATOL)


def test_only_bad_items_forward_nothing(classifier: Classifier, tmp_path: Path) -> None:
    spool = FeatureSpool(tmp_path)
    service = InferenceService(classifier, spool=spool)
    items = [
        Item(b""),
        Item({"instances": []}, expect="v1"),
        Item(b"hello", content_type="text/plain"),
        Item({}, multipart=True),
    ]
    outcomes, stats = service.handle(items)
    spool.close()
    assert stats.images == 0
    assert stats.requests == 4
    assert set(stats.seconds) == set(STEPS)
    assert all(v >= 0 for v in stats.seconds.values())
    assert [o.status for o in outcomes] == [400, 400, 415, 400]
    assert [o.error for o in outcomes] == [
        "empty_body",
        "malformed_request",
        "unsupported_media_type",
        "malformed_request",
    ]
    assert [o.protocol for o in outcomes] == ["raw", "v1", "raw", "raw"]
    assert read_spool(spool) == []


def test_empty_batch(classifier: Classifier) -> None:
    outcomes, stats = InferenceService(classifier).handle([])
    assert outcomes == []
    assert stats.requests == 0 and stats.images == 0


def test_without_spool(classifier: Classifier) -> None:
    outcomes, stats = InferenceService(classifier).handle([Item(png(10))])
    assert outcomes[0].status == 200
    assert stats.images == 1


@pytest.mark.parametrize(
    ("expect", "payload", "ok"),
    [
        ("raw", png(11), True),
        ("v1", {"instances": [b64(png(11))]}, True),
        ("v2", {"instances": [b64(png(11))]}, False),
        ("raw", {"instances": [b64(png(11))]}, False),
    ],
)
def test_expected_protocol(classifier: Classifier, expect: str, payload: Any, ok: bool) -> None:
    (outcome,), _ = InferenceService(classifier).handle([Item(payload, expect=expect)])
    assert (outcome.status == 200) is ok
    if not ok:
        assert outcome.error == "malformed_request"
        assert outcome.protocol == expect
        assert outcome.headers == {"X-Atelier-Error": "malformed_request"}
        # v2 (Open Inference Protocol) error bodies are a string; the others name the kind.
        error = outcome.body["error"]
        message = error if expect == "v2" else error["message"]
        assert "endpoint" in message


def test_error_answers_carry_the_kind_in_a_header(classifier: Classifier) -> None:
    items = [
        Item(b"garbage", content_type="image/png"),
        Item({"instances": [7]}),
        Item({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [5]}]}),
        Item(b"{}", binary_header="99"),
    ]
    outcomes, _ = InferenceService(classifier).handle(items)
    assert [o.protocol for o in outcomes] == ["raw", "v1", "v2", "v2"]
    for outcome in outcomes:
        body, headers = encode(outcome)
        assert headers["X-Atelier-Error"] == outcome.error
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == outcome.body
        if outcome.protocol == "v2":
            assert isinstance(outcome.body["error"], str) and outcome.body["error"]
        else:
            assert outcome.body["error"]["type"] == outcome.error


def test_binary_request_and_answer(classifier: Classifier) -> None:
    """A v2 request in binary (BYTES of PNG files) with binary outputs: the JSON answer's
    classes, in the binary tensor data extension's framing."""
    pngs = [png(20), png(21)]
    raw = b"".join(len(p).to_bytes(4, "little") + p for p in pngs)
    header = json.dumps({
        "inputs": [{"name": "img", "shape": [2], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    item = Item(header + raw, binary_header=str(len(header)))
    as_json = Item({"inputs": [{"name": "img", "shape": [2], "datatype": "BYTES",
                                "data": [b64(p) for p in pngs]}]})  # fmt: skip
    (binary, plain), _ = InferenceService(classifier).handle([item, as_json])
    assert binary.status == 200 and plain.status == 200
    body, headers = encode(binary)
    assert headers["Content-Type"] == "application/octet-stream"
    length = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:length])
    probs_size = head["outputs"][0]["parameters"]["binary_data_size"]
    probs = np.frombuffer(body[length : length + probs_size], "<f4").reshape(2, 10)
    expected = np.array(plain.body["outputs"][0]["data"]).reshape(2, 10)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert len(body) == length + probs_size + head["outputs"][1]["parameters"]["binary_data_size"]
    assert encode(plain)[1] == {"Content-Type": "application/json"}


def test_a_bad_bytes_element_fails_only_its_request(classifier: Classifier) -> None:
    bad = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [5]}]}
    outcomes, _ = InferenceService(classifier).handle([Item(png(12)), Item(bad)])
    assert [o.status for o in outcomes] == [200, 400]


@pytest.mark.parametrize("sample", [0.0, 1.0])
def test_a_sampled_request_spools_its_preprocessed_images(
    classifier: Classifier, tmp_path: Path, sample: float
) -> None:
    spool = FeatureSpool(tmp_path)
    service = InferenceService(classifier, spool=spool, input_sample=sample)
    body = {"instances": [{"b64": b64(png(s))} for s in (3, 4)]}
    (outcome,), _ = service.handle([Item(body, expect="v1")])
    spool.close()
    assert outcome.status == 200
    records = read_spool(spool)
    assert len(records) == 2
    if sample == 0.0:
        assert all("input" not in r for r in records)
        return
    for r, seed in zip(records, (3, 4), strict=True):
        pixels = np.frombuffer(base64.b64decode(r["input"]), dtype=np.uint8)
        assert pixels.size == 28 * 28
        np.testing.assert_array_equal(pixels.reshape(28, 28), image(seed))
