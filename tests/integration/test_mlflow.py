"""`atelier train`, `archive`, `promote` and `models list` against a real MLflow tracking
server (``mlflow server`` on 127.0.0.1, SQLite backend, local artifact folder), read back
through MLflow's REST client, and the run's page in MLflow's UI opened by a headless Chromium
(Debian's ``chromium``). One small tracked training run serves the whole module; every command
runs once as a real `python -m atelier` process, repeats run in-process (the same functions
the commands call) to spare the imports."""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from atelier.runtime.errors import ModelVersionNotFoundError
from atelier.tools.mlflow_server import MlflowServer, MlflowServerSettings
from atelier.tools.paths import project_file
from atelier.tools.process import free_port
from atelier.training.archive import archive_run
from atelier.training.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_GATE,
    TAG_MAR_SHA256,
    TAG_STORAGE_URI,
    TAG_STORE_VERSION,
    promote,
)
from atelier.training.tracking import EPOCH_METRICS, RUN_ARTIFACTS, RunRecord, data_digest, flatten

pytestmark = pytest.mark.integration

SMOKE = str(project_file("training-job/configs/smoke.yaml"))
# The smoke config on a small subset, two epochs: every epoch's metrics, in seconds.
SMALL = [
    "--set", "data.train_limit=600", "--set", "data.test_limit=200",
    "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "gate.min_accuracy=0.0",
]  # fmt: skip


def atelier(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ATELIER_TRACK"))}
    return subprocess.run(
        [sys.executable, "-m", "atelier", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**clean, **(env or {})},
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(MlflowServerSettings(tmp_path_factory.mktemp("mlflow-server"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: MlflowServer) -> MlflowClient:
    return MlflowClient(server.url, registry_uri=server.url)


@pytest.fixture(scope="module")
def tracked(server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one tracked training run: `atelier train` with MLFLOW_TRACKING_URI set."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    env = {"MLFLOW_TRACKING_URI": server.url, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    proc = atelier("train", "--config", SMOKE, *SMALL, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    record = RunRecord.read(out)
    assert record is not None
    assert f"tracked: MLflow run {record.run_id} (FINISHED)" in proc.stdout
    return out


def test_the_run_holds_params_every_epoch_final_metrics_artifacts_and_tags(
    tracked: Path, client: MlflowClient, server: MlflowServer, tmp_path: Path
) -> None:
    record = RunRecord.read(tracked)
    assert record is not None and record.tracking_uri == server.url
    run = client.get_run(record.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == tracked.name
    # Params: the resolved config, flattened.
    assert run.data.params == flatten(yaml.safe_load((tracked / "config.yaml").read_text()))
    # Every epoch's metrics, at step = epoch, with the run folder's values.
    rows = [json.loads(x) for x in (tracked / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in EPOCH_METRICS:
        history = client.get_metric_history(record.run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["epoch"], r[key]) for r in rows], key
    # The end: test accuracy, per class and weighted, robustness, size, time; system metrics.
    m = json.loads((tracked / "metrics.json").read_text())
    got = run.data.metrics
    assert got["test_accuracy"] == m["test_accuracy"]
    assert got["params"] == m["params"] and got["train_seconds"] == m["train_seconds"]
    assert got["test_f1_weighted"] == m["weighted"]["f1"]
    assert got["test_recall/T-shirt-top"] == m["per_class"]["T-shirt/top"]["recall"]
    assert sum(k.startswith("test_precision/") for k in got) == 10
    assert (
        got["robustness/gaussian_noise_accuracy"] == m["robustness"]["gaussian_noise"]["accuracy"]
    )
    assert "system/cpu_utilization_percentage" in got
    assert "system/system_memory_usage_megabytes" in got
    # Artifacts, with their content.
    assert {a.path for a in client.list_artifacts(record.run_id)} >= set(RUN_ARTIFACTS)
    local = client.download_artifacts(record.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == m
    # Tags: the commit, the data's identity, the gate.
    tags = run.data.tags
    assert tags["atelier.git_commit"] == m["git_commit"]
    assert tags["atelier.data.digest"] == data_digest(m["data"])
    assert tags["atelier.data.sizes"] == "train=540 val=60 test=200"
    assert tags["atelier.gate"] == "passed"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["fashion-mnist"]


def test_archive_registers_and_promote_moves_champion_and_current_together(
    tracked: Path, client: MlflowClient, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = atelier("archive", str(tracked), "--store", str(store))
    assert first.returncode == 0, first.stderr
    assert "registered fashion-mnist version 1 (@champion" in first.stdout
    # The candidate: the command's own function, in-process.
    second = archive_run(tracked, store, challenger=True, say=lambda line: None)
    assert not second.current and second.registry is not None
    assert second.registry.version == "2"
    current = json.loads((store / "CURRENT.json").read_text())
    assert current["version"] == "1" and current["registry"]["version"] == "1"
    record = RunRecord.read(tracked)
    assert record is not None
    for v in ("1", "2"):
        mv = client.get_model_version("fashion-mnist", v)
        card = json.loads((store / "versions" / v / "model_card.json").read_text())
        assert mv.tags[TAG_STORE_VERSION] == v and mv.run_id == record.run_id
        assert mv.tags[TAG_STORAGE_URI] == (store / "versions" / v).resolve().as_uri()
        assert mv.tags[TAG_MAR_SHA256] == card["mar_sha256"] and mv.tags[TAG_GATE] == "passed"
        assert card["registry"]["version"] == v and card["registry"]["run_id"] == record.run_id

    def aliases() -> dict[str, str]:
        return {k: str(v) for k, v in client.get_registered_model("fashion-mnist").aliases.items()}

    assert aliases() == {CHAMPION: "1", CHALLENGER: "2"}
    listed = atelier("models", "list", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    assert "@champion" in listed.stdout and "@challenger" in listed.stdout

    promoted = atelier("promote", "fashion-mnist", "2", "--store", str(store))
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads((store / "CURRENT.json").read_text())["version"] == "2"
    assert aliases() == {CHAMPION: "2"}

    # A version that does not exist: refused (exit 11 from the command), nothing changed.
    before = (store / "CURRENT.json").read_bytes()
    with pytest.raises(ModelVersionNotFoundError) as refused:
        promote(store, "fashion-mnist", "7", say=lambda line: None)
    assert refused.value.exit_code == 11
    assert "has no version 7 (versions: 1, 2)" in refused.value.one_line()
    assert (store / "CURRENT.json").read_bytes() == before and aliases() == {CHAMPION: "2"}


def test_an_unreachable_tracking_uri_stops_with_one_line(tmp_path: Path) -> None:
    """(`--tracking optional`, which trains untracked instead, is proved in
    tests/unit/training/test_tracking.py.)"""
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "run"
    proc = atelier("train", "--config", SMOKE, "--tracking-uri", uri, "--out", str(out))
    assert proc.returncode == 10
    line = error_line(proc)
    assert uri in line and "Connection refused" in line and "--tracking optional" in line
    assert not out.exists()


def test_a_run_that_fails_on_bad_data_ends_failed_on_the_server(
    server: MlflowServer, client: MlflowClient, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": server.url}
    proc = atelier(
        "train", "--config", SMOKE, "--set", "data.path=/nowhere", "--out", str(out), env=env
    )
    assert proc.returncode == 3
    assert "/nowhere does not exist" in error_line(proc)
    record = RunRecord.read(out)
    assert record is not None and record.status == "FAILED"
    run = client.get_run(record.run_id)
    assert run.info.status == "FAILED"
    assert "/nowhere does not exist" in run.data.tags["atelier.error"]


CHROMIUM = shutil.which("chromium")


def chromium(url: str, profile: Path, action: str) -> str:
    """One headless Chromium call (its own process group, ended by its id); its stdout."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--window-size=1400,2200",
        # Virtual time lets the single-page app fetch the run and render before the capture.
        "--virtual-time-budget=10000", action, url,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium {action} {url} did not finish in 120 s") from None
    finally:
        with contextlib.suppress(ProcessLookupError):  # helpers it left behind
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    return out


def page_text(dom: str) -> str:
    """The text of a DOM, one ``|`` between elements."""
    body = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)
    text = re.sub(r"\s*<[^>]+>\s*", "|", body)
    return html.unescape(re.sub(r"\|+", "|", text))


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)"
)
def test_the_mlflow_ui_shows_the_runs_test_accuracy(
    tracked: Path, client: MlflowClient, server: MlflowServer, tmp_path: Path
) -> None:
    record = RunRecord.read(tracked)
    assert record is not None
    run = client.get_run(record.run_id)
    accuracy = run.data.metrics["test_accuracy"]
    # The UI's hash route of the run's page; its Overview tab holds the metrics table.
    url = f"{server.url}/#/experiments/{record.experiment_id}/runs/{record.run_id}"
    text = page_text(chromium(url, tmp_path / "profile", "--dump-dom"))
    assert f"|{tracked.name}|" in text  # the run's name heads the page
    assert "|Finished|" in text
    # The metrics table's row: the key, then the value as the UI prints it (JavaScript's
    # shortest round-trip text of the double, which is also Python's repr).
    assert f"|test_accuracy|{accuracy!r}|" in text, text[:3000]

    shot = tmp_path / "mlflow-run-page.png"
    chromium(url, tmp_path / "profile", f"--screenshot={shot}")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1400, 2200)
    assert len(png) > 50_000  # a rendered page, not a blank one (about 7 kB)
