"""Tests for atelier.drift.feedback: joining labels to predictions, live accuracy, errors."""

from __future__ import annotations

from typing import Any

import pytest

from atelier.drift.feedback import (
    FeedbackBook,
    InvalidLabelError,
    PredictionLog,
    UnknownRequestError,
    parse_label,
)
from atelier.runtime.errors import AtelierError, error_body

pytestmark = pytest.mark.unit

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]


def preds(n: int, start: int = 0, version: str = "1") -> list[dict[str, Any]]:
    """Record i predicts class i % 5, request id f"r{i}", index 0."""
    return [
        {"request_id": f"r{i}", "index": 0, "predicted_class": i % 5, "model_version": version}
        for i in range(start, start + n)
    ]


def test_accuracy_over_last_n_and_since_reset() -> None:
    log = PredictionLog()
    book = FeedbackBook(log)
    assert book.accuracy(None) == (None, 0)  # no data is not "fine"
    log.add(preds(100))
    for i in range(0, 100, 10):  # label r0, r10, ..., r90; the odd tens wrong
        book.record(f"r{i}", label=i % 5 if (i // 10) % 2 == 0 else (i + 1) % 5)
    assert book.accuracy(None) == (0.5, 10)
    acc, n = book.accuracy(last_n_records=25)  # r75..r99: r80 (right), r90 (wrong)
    assert (acc, n) == (0.5, 2)
    assert book.accuracy(last_n_records=0) == (None, 0)
    book.record("r90", label=0)  # relabel replaces: r90 predicted 0 -> now right
    assert book.accuracy(25) == (1.0, 2)
    book.record("r80", label=1)  # now wrong
    assert book.accuracy(25) == (0.5, 2)
    assert len(book) == 10


def test_reset_and_model_version_filter() -> None:
    log = PredictionLog()
    book = FeedbackBook(log)
    log.add(preds(10, version="1"))
    book.record("r1", 1)
    book.reset()
    assert book.accuracy(None) == (None, 0)
    log.add(preds(10, start=10, version="2"))
    book.record("r11", 1)
    book.record("r12", 0)
    book.record("r2", 2)  # a pre-reset prediction: kept out of "since reset"
    assert book.accuracy(None) == (0.5, 2)
    assert book.accuracy(None, model_version="2") == (0.5, 2)
    assert book.accuracy(None, model_version="1") == (None, 0)


def test_unknown_request_is_404() -> None:
    log = PredictionLog(capacity=5)
    book = FeedbackBook(log)
    log.add(preds(10))
    with pytest.raises(UnknownRequestError) as exc:
        book.record("r0", 0)  # evicted from the bounded log
    err = exc.value
    assert isinstance(err, AtelierError)
    assert err.http_status == 404 and err.kind == "unknown_request"
    assert error_body(err)["error"]["type"] == "unknown_request"
    with pytest.raises(UnknownRequestError):
        book.record("r9", 0, index=1)  # known id, unknown index
    with pytest.raises(UnknownRequestError):
        book.record("never", 0)
    assert book.record("r9", 4) is True
    assert book.record("r9", 3) is False


def test_labels_are_bounded() -> None:
    log = PredictionLog()
    book = FeedbackBook(log, capacity=3)
    log.add(preds(10))
    for i in range(10):
        book.record(f"r{i}", i % 5)
    assert len(book) == 3
    assert book.accuracy(None) == (1.0, 3)


def test_parse_label() -> None:
    assert parse_label(3, CLASSES) == 3
    assert parse_label("Trouser", CLASSES) == 1
    assert parse_label("coat", CLASSES) == 4
    for bad in (5, -1, True, 1.0, None, "Sneaker", "1", [1]):
        with pytest.raises(InvalidLabelError) as exc:
            parse_label(bad, CLASSES)
        assert exc.value.http_status == 422 and exc.value.kind == "invalid_label"
