"""The drift sidecar as a real process, fed by a real TorchServe writing the feature spool."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import requests

from atelier.drift.inference_log import InferenceLog
from atelier.runtime.features import ALL_FEATURES
from atelier.runtime.preprocess import encode_png
from atelier.runtime.records import make_records
from atelier.tools.drift import DriftSidecar, SidecarSettings
from atelier.tools.torchserve import TorchServe, TorchServeSettings
from atelier.training.archive import ArchiveResult

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
SHORT = "last_1000"


@pytest.fixture(scope="module")
def stack(smoke_store: ArchiveResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    store = smoke_store.version_dir.parent.parent
    base = tmp_path_factory.mktemp("drift-stack")
    spool = base / "spool"
    spool.mkdir()
    ts = TorchServe(TorchServeSettings(store=store, run_dir=base / "ts", model_name=MODEL,
                                       extra_env={"ATELIER_SPOOL_DIR": str(spool)}))  # fmt: skip
    settings = SidecarSettings(spool_dir=spool, store=store, run_dir=base / "drift",
                               report_every_records=500, report_every_seconds=1.0)  # fmt: skip
    with ts:
        sidecar = DriftSidecar(settings)
        with sidecar:
            yield {"ts": ts, "sidecar": sidecar, "settings": settings, "sent": [0]}
        # a test may have restarted it: stop whatever runs now
        holder = getattr(sidecar, "_replacement", None)
        if holder is not None:
            holder.stop()


def send_v2(ts: TorchServe, images: np.ndarray, sent: list[int]) -> None:
    url = f"{ts.inference_url}/v2/models/{MODEL}/infer"
    for start in range(0, len(images), 32):
        chunk = images[start : start + 32]
        tensor = {
            "name": "x",
            "shape": list(chunk.shape),
            "datatype": "UINT8",
            "data": chunk.ravel().tolist(),
        }
        r = requests.post(url, json={"inputs": [tensor]}, timeout=60)
        assert r.status_code == 200, r.text
        sent[0] += len(chunk)


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def current(stack: dict) -> DriftSidecar:
    return getattr(stack["sidecar"], "_replacement", None) or stack["sidecar"]


def report_over(sidecar: DriftSidecar, rows: int) -> dict:
    """Wait for a report whose short window held ``rows`` records; return /reports."""
    found: dict = {}

    def done() -> bool:
        body = requests.get(f"{sidecar.url}/reports", timeout=10).json()
        status = body["status"].get(SHORT)
        if status and status["detail"].get("rows", 0) >= rows:
            found.update(body)
            return True
        return False

    wait_for(done, timeout=90, what=f"a report over {rows} records")
    return found


def test_ready_and_health(stack: dict) -> None:
    sidecar = current(stack)
    assert requests.get(f"{sidecar.url}/healthz", timeout=5).status_code == 200
    ready = requests.get(f"{sidecar.url}/readyz", timeout=5)
    assert ready.status_code == 200 and "version 1" in ready.json()["reason"]
    # The only sidecar takes the reporter lease within a second or two.
    wait_for(lambda: sidecar.metric("atelier_drift_reporter") == 1, what="the reporter lease")


def test_held_out_images_are_not_drift(stack: dict, test_images) -> None:
    x, _ = test_images
    sidecar = current(stack)
    before = sidecar.metric("atelier_drift_records_ingested_total")
    send_v2(stack["ts"], x[:1024], stack["sent"])
    wait_for(
        lambda: sidecar.metric("atelier_drift_records_ingested_total") >= before + 1024,
        what="ingest",
    )
    status = report_over(sidecar, 1000)["status"][SHORT]
    assert status["severity"] == "ok", status
    assert sidecar.metric("atelier_drift_severity", window=SHORT) == 0
    assert sidecar.metric("atelier_drift_share", window=SHORT) < 0.5
    latest = requests.get(f"{sidecar.url}/reports/latest.json", timeout=10)
    assert latest.status_code == 200 and "drift_share" in latest.json()
    html = requests.get(f"{sidecar.url}/reports/latest.html", timeout=10)
    assert html.status_code == 200 and "<html" in html.text.lower()


def test_inverted_images_are_drift(stack: dict, test_images) -> None:
    x, _ = test_images
    sidecar = current(stack)
    send_v2(stack["ts"], 255 - x[1024:2048], stack["sent"])
    sent = stack["sent"][0]
    wait_for(lambda: sidecar.metric("atelier_drift_records_ingested_total") >= sent, what="ingest")

    # A report over the short window once it holds only inverted images.
    def inverted_report() -> bool:
        status = requests.get(f"{sidecar.url}/reports", timeout=10).json()["status"].get(SHORT, {})
        return bool(status.get("detail", {}).get("dataset_drift"))

    wait_for(inverted_report, timeout=90, what="a report declaring drift")
    status = requests.get(f"{sidecar.url}/reports", timeout=10).json()["status"][SHORT]
    assert status["detail"]["dataset_drift"] is True, status
    assert status["severity"] in ("warning", "critical")
    assert sidecar.metric("atelier_drift_severity", window=SHORT) >= 1
    assert sidecar.metric("atelier_drift_feature_drifted", window=SHORT, feature="brightness") == 1


def test_bad_input_and_feedback_errors(stack: dict) -> None:
    sidecar = current(stack)
    r = requests.post(f"{sidecar.url}/feedback", json={"request_id": "nope", "label": 1}, timeout=5)
    assert r.status_code == 404 and r.json()["error"]["type"] == "unknown_request"
    r = requests.post(f"{sidecar.url}/feedback", data=b"{not json", timeout=5)
    assert r.status_code == 422
    r = requests.post(f"{sidecar.url}/feedback", json={"label": 1}, timeout=5)
    assert r.status_code == 422
    r = requests.post(f"{sidecar.url}/reports/../../etc/passwd", timeout=5)
    assert r.status_code in (404, 405)
    assert requests.get(f"{sidecar.url}/reports/nope.json", timeout=5).status_code == 404
    assert requests.get(f"{sidecar.url}/healthz", timeout=5).status_code == 200


def test_ingest_keeps_the_good_records_and_refuses_the_bad(stack: dict) -> None:
    sidecar = current(stack)
    feats = {name: np.array([0.5]) for name in ALL_FEATURES}
    good = make_records("ingest-1", "v2", MODEL, "1", feats, 0, 1)[0]
    before = sidecar.metric("atelier_drift_records_ingested_total")
    body = [good, dict(good, request_id="huge", predicted_class=2**62),
            dict(good, request_id="up", model_version="../versions/1")]  # fmt: skip
    r = requests.post(f"{sidecar.url}/ingest", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    assert [(x["index"], x["field"]) for x in r.json()["refused"]] == [
        (1, "predicted_class"), (2, "model_version")]  # fmt: skip
    stack["sent"][0] += 1
    wait_for(lambda: sidecar.metric("atelier_drift_records_ingested_total") >= before + 1,
             what="the accepted record")  # fmt: skip
    assert sidecar.metric("atelier_drift_refused_records_total", reason="invalid") == 2
    r = requests.post(f"{sidecar.url}/ingest", json=body[1:], timeout=10)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_records"
    big = b"[" + b" " * (9 * 1024 * 1024) + b"]"
    r = requests.post(f"{sidecar.url}/ingest", data=big, timeout=30,
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"


def test_feedback_gives_live_accuracy(stack: dict, test_images) -> None:
    x, y = test_images
    sidecar = current(stack)
    ts = stack["ts"]
    ids, preds = [], []
    for i in range(2048, 2048 + 200):
        rid = f"fb-{i}"
        headers = {"Content-Type": "image/png", "X-Request-Id": rid}
        url = f"{ts.inference_url}/predictions/{MODEL}"
        r = requests.post(url, data=encode_png(x[i]), headers=headers, timeout=30)
        assert r.status_code == 200
        ids.append(rid)
        preds.append(r.json()["class_id"])
        stack["sent"][0] += 1

    def last_joined() -> bool:
        body = {"request_id": ids[-1], "label": int(y[2247])}
        return requests.post(f"{sidecar.url}/feedback", json=body, timeout=5).status_code == 200

    wait_for(last_joined, what="the last prediction to be ingested")
    for rid, i in zip(ids[:-1], range(2048, 2247), strict=True):
        r = requests.post(
            f"{sidecar.url}/feedback", json={"request_id": rid, "label": int(y[i])}, timeout=5
        )
        assert r.status_code == 200, r.text
    expected = float(np.mean(np.array(preds) == y[2048:2248]))
    # The reporter refreshes live accuracy within a second of the labels landing.
    wait_for(
        lambda: sidecar.metric("atelier_drift_labelled_records", window=SHORT) == 200,
        what="200 labelled records in the window",
    )
    assert sidecar.metric("atelier_drift_live_accuracy", window=SHORT) == pytest.approx(expected)
    r = requests.post(
        f"{sidecar.url}/feedback", json={"request_id": ids[0], "label": 99}, timeout=5
    )
    assert r.status_code == 422
    # Wrong labels for everything: live accuracy collapses, severity goes critical.
    for rid, p in zip(ids, preds, strict=True):
        wrong = (p + 1) % 10
        requests.post(
            f"{sidecar.url}/feedback", json={"request_id": rid, "label": wrong}, timeout=5
        )
    wait_for(
        lambda: sidecar.metric("atelier_drift_live_accuracy", window=SHORT) == 0.0,
        what="live accuracy to follow the relabelling",
    )
    send_v2(ts, x[3000:3512], stack["sent"])  # new records, so a new report runs

    def accuracy_critical() -> bool:
        status = requests.get(f"{sidecar.url}/reports", timeout=10).json()["status"].get(SHORT, {})
        return status.get("detail", {}).get("accuracy_grade") == "critical"

    wait_for(accuracy_critical, timeout=90, what="a report grading the accuracy drop critical")
    assert sidecar.metric("atelier_drift_severity", window=SHORT) == 2


def test_restart_mid_stream_loses_and_repeats_nothing(stack: dict, test_images) -> None:
    x, _ = test_images
    sidecar = current(stack)
    wait_for(
        lambda: sidecar.metric("atelier_drift_records_ingested_total") >= stack["sent"][0],
        what="catch up",
    )
    counted_before = sidecar.metric("atelier_drift_records_ingested_total")
    sidecar.stop()
    send_v2(stack["ts"], x[4000:4640], stack["sent"])  # written while the sidecar is down
    again = DriftSidecar(stack["settings"])
    stack["sidecar"]._replacement = again
    again.__enter__()
    send_v2(stack["ts"], x[4640:5000], stack["sent"])
    wait_for(
        lambda: again.metric("atelier_drift_records_ingested_total") >= 1000,
        what="ingest after restart",
    )
    time.sleep(2)  # would any duplicate arrive?
    assert counted_before + again.metric("atelier_drift_records_ingested_total") == stack["sent"][0]
    assert again.metric("atelier_drift_duplicate_records_total") == 0
    assert inference_log(stack).count() == stack["sent"][0]  # each record once in the log


def inference_log(stack: dict) -> InferenceLog:
    return InferenceLog(f"sqlite:///{stack['settings'].run_dir.resolve() / 'inference-log.db'}")


def test_reports_and_state_are_kept(stack: dict) -> None:
    run = stack["settings"].run_dir
    assert (run / "state" / "spool-state.json").is_file()
    reports = inference_log(stack).list_reports()
    assert {r["window"] for r in reports} >= {SHORT, "since_live"}
    assert all(r["model_version"] == "1" for r in reports)
    newest = json.loads(requests.get(f"{current(stack).url}/reports/latest.json", timeout=10).text)
    assert newest["id"] == reports[0]["id"] and newest["model_version"] == "1"
