"""A real TorchServe on 127.0.0.1 serving the archived smoke model: PNG in, class out."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import requests

from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.tools.torchserve import TorchServe
from atelier.training.archive import ArchiveResult
from atelier.training.data.idx import load_fashion_mnist
from atelier.training.loop import RunResult

pytestmark = pytest.mark.integration

N_IMAGES = 200


def test_200_test_images_match_in_process_predictions(
    torchserve_server: TorchServe,
    smoke_run: RunResult,
    smoke_store: ArchiveResult,
    fashion_mnist_dir,
) -> None:
    data = load_fashion_mnist(fashion_mnist_dir)
    images = data["test_x"][:N_IMAGES]
    pngs = [encode_png(img) for img in images]
    clf = Classifier.from_dir(smoke_run.run_dir)
    expected = clf.predict_images(pngs)
    # The PNG round trip is lossless: predicting the arrays directly gives the same answer.
    np.testing.assert_allclose(expected, clf.predict_proba(images), atol=1e-6)
    num_classes = expected.shape[1]
    url = f"{torchserve_server.inference_url}/predictions/fashion-mnist"

    def classify(png: bytes) -> dict:
        r = requests.post(
            url,
            data=png,
            headers={"Content-Type": "image/png", "X-Top-K": str(num_classes)},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()

    # Concurrent requests, so TorchServe batches some of them (batchSize 8).
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(classify, pngs))

    assert len(answers) == N_IMAGES
    for i, answer in enumerate(answers):
        assert answer["class_id"] == int(expected[i].argmax())
        assert answer["label"] == clf.spec.class_names[answer["class_id"]]
        assert answer["model_version"] == smoke_store.version
        assert answer["request_id"]
        served = np.zeros(num_classes)
        for entry in answer["top_k"]:
            served[entry["class_id"]] = entry["probability"]
        assert len(answer["top_k"]) == num_classes
        np.testing.assert_allclose(served, expected[i], atol=1e-5)
    accuracy = np.mean([a["class_id"] for a in answers] == data["test_y"][:N_IMAGES])
    assert accuracy >= 0.75


def test_readiness_is_the_model_state_and_metrics_are_prometheus(
    torchserve_server: TorchServe,
) -> None:
    torchserve = torchserve_server
    status = torchserve.model_status()
    assert status is not None
    assert status[0]["modelName"] == "fashion-mnist"
    assert any(w["status"] == "READY" for w in status[0]["workers"])
    metrics = requests.get(f"{torchserve.metrics_url}/metrics", timeout=10).text
    assert "ts_inference_requests_total" in metrics
    # TorchServe writes its logs into the run folder, not ./logs.
    assert (torchserve.s.run_dir / "logs" / "ts_log.log").is_file()


def test_every_torchserve_socket_listens_on_loopback_only(torchserve_server: TorchServe) -> None:
    """The OIP front, TorchServe's inference API behind it, management, metrics and both gRPC
    servers bind 127.0.0.1, on the ports the launcher picked, so two servers on one machine
    never collide."""
    assert torchserve_server.proc is not None
    procs = [psutil.Process(torchserve_server.proc.pid)]
    procs += procs[0].children(recursive=True)
    listening = {
        (c.laddr.ip, c.laddr.port)
        for p in procs
        for c in p.connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    s = torchserve_server.s
    expected = {s.inference_port, s.torchserve_inference_port, s.management_port,
                s.metrics_port, s.grpc_inference_port, s.grpc_management_port}  # fmt: skip
    assert {port for _, port in listening} == expected
    assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}
