"""A trial's training: k-fold splits, the running mean reported per fold, validation accuracy
reported per epoch, and pruning that stops the training (real Optuna studies in memory, real
training on a small subset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from atelier.tools.paths import project_file
from atelier.training.config import TrainConfig, load_config
from atelier.training.data import Splits, load_splits
from atelier.training.tune.worker import cross_validate, fold_splits, holdout

pytestmark = pytest.mark.unit

SMOKE = project_file("training-job/configs/smoke.yaml")


@pytest.fixture(scope="module")
def tiny() -> tuple[TrainConfig, Splits]:
    cfg = load_config(
        SMOKE,
        [
            "data.train_limit=200",
            "data.test_limit=50",
            "train.batch_size=32",
            "train.epochs=2",
            "gate.min_accuracy=0",
            "train.threads=1",
        ],
    )
    return cfg, load_splits(cfg.data, cfg.train.seed)


def test_fold_splits_cover_the_training_split_and_keep_the_test_split(
    tiny: tuple[TrainConfig, Splits],
) -> None:
    _, splits = tiny
    pool = np.concatenate([splits.train_y, splits.val_y])
    folds = list(fold_splits(splits, 3, seed=0))
    assert len(folds) == 3
    assert sum(len(f.val_y) for f in folds) == len(pool)
    for i, fold in enumerate(folds, start=1):
        assert len(fold.train_y) + len(fold.val_y) == len(pool)
        assert set(np.unique(fold.val_y)) == set(np.unique(pool))  # stratified
        assert fold.test_x is splits.test_x
        assert fold.identity["cv"] == {"fold": i, "folds": 3, "seed": 0}
    # Every image is validated on exactly once.
    held = np.sort(np.concatenate([f.val_x.reshape(len(f.val_x), -1) for f in folds]), axis=0)
    every = np.concatenate([splits.train_x, splits.val_x]).reshape(len(pool), -1)
    assert (held == np.sort(every, axis=0)).all()


def study_with_a_strong_trial(steps: int) -> optuna.Study:
    """A study whose one completed trial reached 0.99 at every step: with the median pruner
    (pruning after one completed trial) any real trial is below it and is pruned."""
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    study.add_trial(
        optuna.trial.create_trial(
            value=0.99, intermediate_values={s: 0.99 for s in range(1, steps + 1)}
        )
    )
    return study


def test_holdout_reports_each_epoch_and_a_pruned_trial_stops_training(
    tiny: tuple[TrainConfig, Splits], tmp_path: Path
) -> None:
    cfg, splits = tiny
    study = study_with_a_strong_trial(cfg.train.epochs)
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        holdout(trial, cfg, splits, tmp_path / "run")
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    frozen = study.trials[-1]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the second epoch never ran
    assert frozen.intermediate_values == {1: json.loads(lines[0])["val_accuracy"]}
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_cross_validation_reports_the_running_mean_per_fold(
    tiny: tuple[TrainConfig, Splits], tmp_path: Path
) -> None:
    cfg, splits = tiny
    one_epoch = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    value = cross_validate(trial, one_epoch, splits, 2, tmp_path / "cv")
    study.tell(trial, value)
    frozen = study.trials[0]
    accs = frozen.user_attrs["fold_val_accuracy"]
    assert len(accs) == 2 and value == pytest.approx(np.mean(accs))
    assert frozen.intermediate_values == pytest.approx({1: accs[0], 2: np.mean(accs)})
    for fold in (1, 2):
        data = json.loads((tmp_path / "cv" / f"fold-{fold}" / "data.json").read_text())
        assert data["cv"]["fold"] == fold
    assert 0.0 <= frozen.user_attrs["test_accuracy"] <= 1.0

    # Below the median after the first fold: pruned, the second fold never trains.
    strong = study_with_a_strong_trial(2)
    pruned = strong.ask()
    with pytest.raises(optuna.TrialPruned, match="fold 1/2"):
        cross_validate(pruned, one_epoch, splits, 2, tmp_path / "pruned")
    assert (tmp_path / "pruned" / "fold-1").is_dir()
    assert not (tmp_path / "pruned" / "fold-2").exists()
