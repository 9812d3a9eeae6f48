"""`atelier train`: the run folder, the gate, early stopping, resume, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from atelier.runtime.errors import ConfigError, GateFailedError
from atelier.runtime.features import ALL_FEATURES
from atelier.training.config import load_config
from atelier.training.loop import RunResult, train

pytestmark = pytest.mark.unit

RUN_FILES = (
    "weights.pt",
    "config.yaml",
    "model_config.json",
    "metrics.json",
    "metrics.jsonl",
    "data.json",
    "reference_profile.csv",
    "confusion_matrix.png",
    "training_curves.png",
    "augmentation.png",
    "checkpoints/last.pt",
)


def test_smoke_run_writes_a_complete_run_folder(
    smoke_run: RunResult, fashion_mnist_dir: Path
) -> None:
    run = smoke_run.run_dir
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    for name in ("confusion_matrix.png", "training_curves.png", "augmentation.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((run / "metrics.json").read_text())
    assert m == smoke_run.metrics
    assert 0.8 <= m["test_accuracy"] <= 1.0
    assert m["params"] < 25_000
    assert m["train_seconds"] > 0
    assert m["gate"] == {"min_accuracy": 0.8, "passed": True}
    assert set(m["per_class"]) == {
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    }  # fmt: skip
    for scores in m["per_class"].values():
        assert 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1
        assert scores["support"] == 1000
    assert sum(map(sum, m["confusion_matrix"])) == m["test_size"] == 10_000
    diagonal = sum(m["confusion_matrix"][i][i] for i in range(10))
    assert diagonal / 10_000 == pytest.approx(m["test_accuracy"])
    # Noise and a brightness shift cost accuracy; both are recorded.
    assert m["robustness"]["gaussian_noise"]["sigma"] == 0.3
    assert m["robustness"]["gaussian_noise"]["accuracy"] < m["test_accuracy"]
    assert m["robustness"]["brightness_shift"]["accuracy"] < m["test_accuracy"]
    # One line per epoch in metrics.jsonl.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # The data's identity is the hash of the files it was read from.
    digest = hashlib.sha256(
        (fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    ).hexdigest()
    assert m["data"]["files"]["t10k-labels-idx1-ubyte.gz"] == digest


def test_reference_profile_holds_serving_features_for_the_validation_split(
    smoke_run: RunResult,
) -> None:
    ref = pd.read_csv(smoke_run.run_dir / "reference_profile.csv")
    assert list(ref.columns) == [*ALL_FEATURES, "label"]
    assert (
        len(ref)
        == json.loads((smoke_run.run_dir / "data.json").read_text())["split"]["sizes"]["val"]
    )
    assert ref["brightness"].between(0, 1).all()
    assert ref["confidence"].between(0, 1).all()
    accuracy = (ref["predicted_class"] == ref["label"]).mean()
    assert accuracy == pytest.approx(smoke_run.metrics["val_accuracy"])


def test_gate_failure_raises_and_records_it(tmp_path: Path, tiny_overrides) -> None:
    cfg = load_config(None, tiny_overrides(gate__min_accuracy=0.999))
    with pytest.raises(GateFailedError, match=r"below gate.min_accuracy 0.9990"):
        train(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["gate"] == {"min_accuracy": 0.999, "passed": False}


def test_early_stopping_stops_after_patience(tmp_path: Path, tiny_overrides) -> None:
    # min_delta 1.0 makes every epoch after the first a non-improvement.
    cfg = load_config(
        None, tiny_overrides(train__epochs=5, train__patience=1, train__min_delta=1.0)
    )
    result = train(cfg, tmp_path / "run")
    assert result.metrics["epochs_run"] == 2
    assert result.metrics["stop_reason"] == "early_stopping"


def test_resume_continues_from_the_last_checkpoint(tmp_path: Path, tiny_overrides) -> None:
    out = tmp_path / "run"
    # A tiny time budget stops the run after its first epoch, like an interrupted Job.
    first = train(
        load_config(None, tiny_overrides(train__epochs=2, train__time_budget_seconds=0.001)), out
    )
    assert first.metrics["epochs_run"] == 1 and first.metrics["stop_reason"] == "time_budget"
    (out / "metrics.json").unlink()  # an interrupted run has no metrics.json yet
    result = train(load_config(None, tiny_overrides(train__epochs=2)), out, resume=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert result.metrics["epochs_run"] == 2
    assert result.metrics["stop_reason"] == "epochs"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_overrides) -> RunResult:
    """One finished tiny run (the default one-cycle schedule), never changed by the tests."""
    return train(load_config(None, tiny_overrides()), tmp_path_factory.mktemp("tiny") / "run")


def folder_bytes(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_may_add_epochs_with_a_step_schedule(
    tmp_path: Path, tiny_overrides, finished: RunResult
) -> None:
    out = tmp_path / "run"
    train(load_config(None, tiny_overrides(optim__schedule="step")), out)
    (out / "metrics.json").unlink()
    more = load_config(None, tiny_overrides(optim__schedule="step", train__epochs=2))
    assert train(more, out, resume=True).metrics["epochs_run"] == 2
    # One-cycle's learning rate depends on the number of epochs: adding one is refused, and
    # the refusal leaves the run folder exactly as it was.
    before = folder_bytes(finished.run_dir)
    with pytest.raises(ConfigError, match="train"):
        train(load_config(None, tiny_overrides(train__epochs=2)), finished.run_dir, resume=True)
    assert folder_bytes(finished.run_dir) == before


def test_resume_refuses_a_different_config(tiny_overrides, finished: RunResult) -> None:
    before = folder_bytes(finished.run_dir)
    other = load_config(None, tiny_overrides(optim__lr=0.5))
    with pytest.raises(ConfigError, match="optim"):
        train(other, finished.run_dir, resume=True)
    assert folder_bytes(finished.run_dir) == before


def test_a_finished_run_folder_is_not_overwritten(tiny_overrides, finished: RunResult) -> None:
    before = folder_bytes(finished.run_dir)
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(load_config(None, tiny_overrides()), finished.run_dir)
    assert folder_bytes(finished.run_dir) == before


def test_same_seed_same_model(tmp_path: Path, tiny_overrides, finished: RunResult) -> None:
    again = train(load_config(None, tiny_overrides()), tmp_path / "again").metrics
    assert again["test_accuracy"] == finished.metrics["test_accuracy"]
    assert again["confusion_matrix"] == finished.metrics["confusion_matrix"]
