"""MLflow tracking of `atelier train` on a real local MLflow store (SQLite in a temp folder):
the flattened params, the metric keys, the settings, and the state a run ends in when
training fails, is interrupted, or loses its tracking store."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient

from atelier.runtime.errors import (
    ConfigError,
    DataMissingError,
    GateFailedError,
    TrackingError,
    TrackingUnreachableError,
)
from atelier.tools.process import free_port
from atelier.training.config import TrainConfig, load_config
from atelier.training.loop import train
from atelier.training.tracking import (
    TRACKING_FILE,
    RunRecord,
    TrackingSettings,
    config_params,
    final_metrics,
    flatten,
    load_tracking_settings,
    local_store_uri,
    metric_name,
    tracked_run,
)

pytestmark = pytest.mark.unit


def settings(uri: str, **kw: object) -> TrackingSettings:
    # Sampling system metrics every 10 s (MLflow's default) adds nothing here.
    return TrackingSettings(uri=uri, system_metrics=False, **kw)  # type: ignore[arg-type]


def run_of(run_dir: Path) -> tuple[MlflowClient, RunRecord, object]:
    record = RunRecord.read(run_dir)
    assert record is not None, f"no {TRACKING_FILE} in {run_dir}"
    client = MlflowClient(record.tracking_uri)
    return client, record, client.get_run(record.run_id)


def test_flatten_names_every_leaf_with_its_dotted_path() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": "x"}) == {
        "a.b": "1",
        "a.c.d": "None",
        "e": "x",
    }
    cfg = load_config(None, ["optim.lr=0.002", "train.epochs=7"])
    params = config_params(cfg)
    assert params["optim.lr"] == "0.002" and params["train.epochs"] == "7"
    assert params["data.train_limit"] == "None"
    # Every field of every section, and nothing else.
    leaves = {
        f"{section}.{key}"
        for section, model in TrainConfig.model_fields.items()
        if section != "name"
        for key in model.annotation.model_fields  # type: ignore[union-attr]
    }
    assert set(params) == leaves | {"name"}


def test_metric_keys_from_class_names_are_valid_and_distinct() -> None:
    assert metric_name("T-shirt/top") == "T-shirt-top"
    assert metric_name("Ankle boot") == "Ankle boot"
    assert metric_name("ü/ü") == "class"
    metrics = {
        "test_accuracy": 0.9,
        "val_accuracy": 0.8,
        "params": 10,
        "train_seconds": 1.5,
        "epochs_run": 2,
        "weighted": {"precision": 0.5, "recall": 0.6, "f1": 0.7},
        "per_class": {
            "a/b": {"precision": 1, "recall": 1, "f1": 1},
            "a:b": {"precision": 0, "recall": 0, "f1": 0},
        },
        "robustness": {"gaussian_noise": {"sigma": 0.3, "accuracy": 0.4}},
    }
    out = final_metrics(metrics)
    assert out["test_precision/a-b"] == 1.0 and out["test_precision/a-b_"] == 0.0
    assert out["test_f1_weighted"] == 0.7
    assert out["robustness/gaussian_noise_accuracy"] == 0.4
    assert out["best_val_accuracy"] == 0.8


def test_settings_come_from_env_and_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_TRACKING", "optional")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    s = load_tracking_settings()
    assert (s.mode, s.uri) == ("optional", "http://mlflow:5000")
    s = load_tracking_settings(mode="off", uri="sqlite:///x.db")
    assert (s.mode, s.uri) == ("off", "sqlite:///x.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert load_tracking_settings().uri is None
    monkeypatch.setenv("ATELIER_TRACKING", "sometimes")
    with pytest.raises(ConfigError, match=r"--tracking, ATELIER_TRACKING.*'sometimes'"):
        load_tracking_settings()


def test_default_store_is_sqlite_beside_the_run_folder(tmp_path: Path) -> None:
    assert local_store_uri(tmp_path / "runs" / "r1") == f"sqlite:///{tmp_path}/runs/mlflow.db"


def test_bad_data_ends_the_run_failed_with_the_error(tmp_path: Path, store_uri: str) -> None:
    cfg = load_config(None, ["data.path=/nowhere"])
    out = tmp_path / "run"
    with pytest.raises(DataMissingError), tracked_run(settings(store_uri), cfg, out) as tracker:
        train(cfg, out, tracker=tracker)
    _, record, run = run_of(out)
    assert run.info.status == "FAILED" and record.status == "FAILED"  # type: ignore[attr-defined]
    tags = run.data.tags  # type: ignore[attr-defined]
    assert "/nowhere does not exist" in tags["atelier.error"]
    assert tags["atelier.error.kind"] == "data_missing"


def test_gate_failure_is_logged_in_full_then_failed(
    tmp_path: Path, store_uri: str, tiny_overrides: Callable[..., list[str]]
) -> None:
    cfg = load_config(None, tiny_overrides(gate__min_accuracy=0.999))
    out = tmp_path / "run"
    with pytest.raises(GateFailedError), tracked_run(settings(store_uri), cfg, out) as tracker:
        train(cfg, out, tracker=tracker)
    client, record, run = run_of(out)
    data = run.data  # type: ignore[attr-defined]
    assert run.info.status == "FAILED"  # type: ignore[attr-defined]
    assert data.tags["atelier.gate"] == "failed"
    assert data.tags["atelier.error.kind"] == "gate_failed"
    metrics = json.loads((out / "metrics.json").read_text())
    assert data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert [m.step for m in client.get_metric_history(record.run_id, "val_loss")] == [1]
    names = {a.path for a in client.list_artifacts(record.run_id)}
    assert {"metrics.json", "model_card.md", "confusion_matrix.png"} <= names


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "crash"])
def test_interrupted_or_crashed_runs_do_not_stay_running(
    how: str, tmp_path: Path, store_uri: str
) -> None:
    cfg = load_config(None, [])
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    expected = KeyboardInterrupt if how != "crash" else ZeroDivisionError
    with pytest.raises(expected), tracked_run(settings(store_uri), cfg, out):
        if how == "ctrl-c":
            raise KeyboardInterrupt
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        _ = 1 / 0
    _, _, run = run_of(out)
    assert run.info.status == ("FAILED" if how == "crash" else "KILLED")  # type: ignore[attr-defined]
    if how == "crash":
        assert run.data.tags["atelier.error"] == "ZeroDivisionError: division by zero"  # type: ignore[attr-defined]
    # The process's own SIGTERM handler is back.
    assert signal.getsignal(signal.SIGTERM) == before


def test_unreachable_store_stops_before_anything_or_trains_untracked(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = load_config(None, [])
    out = tmp_path / "run"
    with pytest.raises(TrackingUnreachableError) as err, tracked_run(settings(uri), cfg, out):
        pytest.fail("the body must not run")
    line = err.value.one_line()
    assert uri in line and "Connection refused" in line and "--tracking optional" in line
    assert not out.exists()
    said: list[str] = []
    with tracked_run(settings(uri, mode="optional"), cfg, out, say=said.append) as tracker:
        assert tracker is None
    assert len(said) == 1 and "nothing of this run is tracked" in said[0] and uri in said[0]
    with tracked_run(settings(uri, mode="off"), cfg, out) as tracker:
        assert tracker is None


def test_metrics_lost_mid_run_are_sent_again_or_named(
    tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = MlflowClient(f"http://127.0.0.1:{free_port()}")
    cfg = load_config(None, [])
    row = {"epoch": 1, "train_loss": 1.0, "val_loss": 2.0, "val_accuracy": 0.5}
    said: list[str] = []
    # The store comes back: what was kept is sent, and the run ends FINISHED.
    out = tmp_path / "back"
    with tracked_run(settings(store_uri), cfg, out, say=said.append) as tracker:
        assert tracker is not None
        live, tracker.client = tracker.client, dead
        tracker.epoch_end(row)
        tracker.epoch_end({**row, "epoch": 2})
        assert len(tracker.pending) == 6
        tracker.client = live
        tracker.epoch_end({**row, "epoch": 3})
    assert len(said) == 2 and "failed" in said[0] and "answers again" in said[1]
    client, record, run = run_of(out)
    assert run.info.status == "FINISHED"  # type: ignore[attr-defined]
    assert [m.step for m in client.get_metric_history(record.run_id, "val_loss")] == [1, 2, 3]
    # It never comes back: the run cannot be closed, and training fails naming what is lost.
    out = tmp_path / "gone"
    with (
        pytest.raises(TrackingError, match=r"incomplete: .*metric values") as err,
        tracked_run(settings(store_uri), cfg, out, say=said.append) as tracker,
    ):
        assert tracker is not None
        tracker.client = dead
        tracker.epoch_end(row)
    assert "shows RUNNING" in err.value.message and str(out) in err.value.one_line()


def test_resume_continues_the_same_run(
    tmp_path: Path, store_uri: str, tiny_overrides: Callable[..., list[str]]
) -> None:
    out = tmp_path / "run"
    # A tiny time budget stops the first run after one epoch, like an interrupted Job.
    first = load_config(None, tiny_overrides(train__epochs=2, train__time_budget_seconds=0.001))
    with tracked_run(settings(store_uri), first, out) as tracker:
        train(first, out, tracker=tracker)
    run_id = RunRecord.read(out).run_id  # type: ignore[union-attr]
    (out / "metrics.json").unlink()  # an interrupted run has no metrics.json yet
    again = load_config(None, tiny_overrides(train__epochs=2))
    with tracked_run(settings(store_uri), again, out, resume=True) as tracker:
        train(again, out, resume=True, tracker=tracker)
    client, record, run = run_of(out)
    assert record.run_id == run_id and run.info.status == "FINISHED"  # type: ignore[attr-defined]
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    data = run.data  # type: ignore[attr-defined]
    assert data.params["train.time_budget_seconds"] == "0.001"
    assert data.tags["atelier.resumed.train.time_budget_seconds"] == "None"
