"""InferenceLog.ship into a real PostgreSQL: one INSERT ... SELECT unnest(...) per batch
(`InferenceLog._ship_statement`) keeps what the multi-row VALUES did: only new rows count,
a retried batch counts none, ids follow the batch's order, sampled inputs are kept."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa

from atelier.drift.inference_log import InferenceLog
from atelier.runtime.records import make_records
from atelier.tools.postgres import PostgresServer

# A real server on 127.0.0.1 (pyproject's markers).
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def log() -> Iterator[InferenceLog]:
    with PostgresServer() as server:
        log = InferenceLog(server.url)
        log.migrate()
        yield log
        log.close()


def batch(prefix: str, n: int) -> list[dict]:
    rng = np.random.default_rng(n)
    feats = {name: rng.uniform(0.1, 0.9, n) for name in (
        "brightness", "contrast", "ink_fraction", "edge_density", "center_x", "center_y",
        "confidence", "entropy")}  # fmt: skip
    feats["predicted_class"] = rng.integers(0, 10, n).astype(float)
    return make_records(prefix, "v2", "fashion-mnist", "1", feats, 0, n)


def test_ship_counts_new_rows_once_in_batch_order_with_inputs(log: InferenceLog) -> None:
    records = batch("req-a", 300)
    image = bytes(range(256)) * 3
    records[7]["input"] = base64.b64encode(image).decode()
    assert log.ship(records, "pod-a") == 300
    assert log.ship(records, "pod-a") == 0  # a retried batch
    assert log.ship([*records[:5], *batch("req-b", 20)], "pod-b") == 20
    t = sa.text("SELECT request_id, idx, predicted_class, brightness, input, pod "
                "FROM inference_log ORDER BY id")  # fmt: skip
    with log.engine.connect() as conn:
        rows = conn.execute(t).all()
    assert [(r.request_id, r.idx) for r in rows] == [
        *(("req-a", i) for i in range(300)),
        *(("req-b", i) for i in range(20)),
    ]
    assert rows[7].input == image and rows[8].input is None
    assert rows[3].predicted_class == records[3]["predicted_class"]
    assert rows[3].brightness == pytest.approx(records[3]["brightness"])
    assert {r.pod for r in rows[300:]} == {"pod-b"}
