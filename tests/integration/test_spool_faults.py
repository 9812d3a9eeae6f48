"""The feature spool is best effort for serving and exact for the sidecar, proven on a real
TorchServe whose spool lives on a small tmpfs: it fills mid-traffic, then gets room again.
A read-only spool folder at start does not keep the model from serving.

Mounting a tmpfs needs root (CI runs as root); elsewhere these tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from atelier.runtime.preprocess import encode_png
from atelier.tools.drift import DriftSidecar, SidecarSettings
from atelier.tools.process import metric_sum
from atelier.tools.torchserve import TorchServe, TorchServeSettings
from atelier.training.archive import ArchiveResult

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

MODEL = "fashion-mnist"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: about 180 feature records fill it."""
    mount = tmp_path / "spool"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def spool_metric(ts: TorchServe, reason: str) -> float:
    return metric_sum(ts.metrics_url, "atelier_spool_errors_total", reason=reason)


def classify(ts: TorchServe, images: np.ndarray, prefix: str, start: int) -> list[str]:
    """One raw request per image; every answer must be a 200. Returns the answered ids."""
    answered = []
    session = requests.Session()
    for i, img in enumerate(images):
        rid = f"{prefix}-{start + i}"
        r = session.post(f"{ts.inference_url}/predictions/{MODEL}", data=encode_png(img),
                         headers={"Content-Type": "image/png", "X-Request-Id": rid},
                         timeout=30)  # fmt: skip
        assert r.status_code == 200, (rid, r.status_code, r.text)
        assert r.json()["request_id"] == rid
        answered.append(rid)
    return answered


def spool_lines(folder: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(folder.glob("features-*.jsonl*")):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends in a torn line"
        lines += data.splitlines()
    return lines


def test_a_spool_that_fills_never_fails_serving_and_the_sidecar_counts_exactly(
    smoke_store: ArchiveResult, test_images, tmpfs: Path, tmp_path: Path
) -> None:
    x, _ = test_images
    store = smoke_store.version_dir.parent.parent
    settings = TorchServeSettings(store=store, run_dir=tmp_path / "ts", model_name=MODEL,
                                  extra_env={"ATELIER_SPOOL_DIR": str(tmpfs)})  # fmt: skip
    with TorchServe(settings) as ts:
        answered = classify(ts, x[:400], "fill", 0)  # ~180 fit, the rest finds a full disk
        assert spool_metric(ts, "no_space") > 0
        full = spool_lines(tmpfs)
        assert 0 < len(full) < 400
        # Room again (as when the sidecar's node frees its disk): the spool picks up.
        subprocess.run(["mount", "-o", "remount,size=4m", str(tmpfs)], check=True)
        answered += classify(ts, x[400:500], "room", 400)
        lines = spool_lines(tmpfs)
        records = [json.loads(line) for line in lines]  # every line whole
        ids = [r["request_id"] for r in records]
        assert len(ids) == len(set(ids))
        assert set(ids) <= set(answered)  # no record for a request not answered 200
        assert {f"room-{i}" for i in range(400, 500)} <= set(ids)  # nothing lost after
        sidecar = DriftSidecar(SidecarSettings(spool_dir=tmpfs, store=store,
                                               run_dir=tmp_path / "drift"))  # fmt: skip
        with sidecar:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if sidecar.metric("atelier_drift_records_ingested_total") >= len(records):
                    break
                time.sleep(0.5)
            time.sleep(1)
            assert sidecar.metric("atelier_drift_records_ingested_total") == len(records)
            assert sidecar.metric("atelier_drift_malformed_lines_total") == 0


def test_a_read_only_spool_folder_at_start_serves(
    smoke_store: ArchiveResult, test_images, tmp_path: Path
) -> None:
    x, _ = test_images
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                   check=True)  # fmt: skip
    try:
        store = smoke_store.version_dir.parent.parent
        settings = TorchServeSettings(store=store, run_dir=tmp_path / "ts", model_name=MODEL,
                                      extra_env={"ATELIER_SPOOL_DIR": str(folder)})  # fmt: skip
        with TorchServe(settings) as ts:  # ready: the model loaded without its spool
            classify(ts, x[:10], "ro", 0)
            assert spool_metric(ts, "read_only") > 0
            assert not list(folder.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
