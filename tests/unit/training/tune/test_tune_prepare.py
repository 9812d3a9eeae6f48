"""`atelier tune --prepare-only` and `atelier tune-report`, the two steps the chart's tune Job
runs around `atelier tune-worker` in every pod: the study is created and its trials enqueued
exactly once however many pods prepare it, at once or later; a finished study's best config,
summary and plots are written by whichever pods report it (real Optuna studies in SQLite)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from atelier.runtime.errors import ConfigError, TuningError
from atelier.tools.paths import project_file
from atelier.training.config import load_config
from atelier.training.tune.launcher import TuneRequest, prepare_study, report_study
from atelier.training.tune.report import BEST_CONFIG, SUMMARY
from atelier.training.tune.space import load_space

pytestmark = pytest.mark.unit

SMOKE = project_file("training-job/configs/smoke.yaml")
TRIALS = 3


def request(tmp_path: Path, trials: int = TRIALS) -> TuneRequest:
    base = load_config(
        SMOKE, ["data.train_limit=200", "data.test_limit=50", "augment.enabled=true"]
    )
    return TuneRequest(
        base=base,
        space=load_space(None),
        space_source="default",
        trials=trials,
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        study="chart-study",
        out=tmp_path / "out",
        echo=lambda _: None,
    )


def states(req: TuneRequest) -> list[TrialState]:
    study = optuna.load_study(study_name=req.study_name, storage=req.storage_url)
    return [t.state for t in study.get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[TuneRequest, list[bool]]:
    """Three pods' prepare steps at once on a new storage: (the request, what each returned
    for "created")."""
    req = request(tmp_path_factory.mktemp("tune"))
    start = threading.Barrier(3)
    results: list[bool] = []
    errors: list[BaseException] = []

    def prepare() -> None:
        start.wait()
        try:
            results.append(prepare_study(req)[1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return req, results


def test_concurrent_prepares_enqueue_the_trials_once(
    prepared: tuple[TuneRequest, list[bool]],
) -> None:
    req, results = prepared
    assert sorted(results) == [False, False, True]
    assert states(req) == [TrialState.WAITING] * TRIALS


def test_a_later_prepare_is_a_no_op_and_other_settings_are_refused(
    prepared: tuple[TuneRequest, list[bool]],
) -> None:
    req, _ = prepared
    study, created = prepare_study(req)
    assert not created and study.study_name == req.study_name
    assert states(req) == [TrialState.WAITING] * TRIALS
    other = request(req.out.parent, trials=TRIALS + 1)
    with pytest.raises(ConfigError, match=r"exists with other settings \(--trials differ\)"):
        prepare_study(other, wait_seconds=0)
    assert states(req) == [TrialState.WAITING] * TRIALS


def test_report_writes_the_best_config_once_every_trial_has_ended(
    prepared: tuple[TuneRequest, list[bool]], tmp_path: Path
) -> None:
    req, _ = prepared
    out = tmp_path / "report"
    with pytest.raises(TuningError, match=f"{TRIALS} of {TRIALS} trials not finished"):
        report_study(req.storage_url, req.study_name, out)
    study = optuna.load_study(study_name=req.study_name, storage=req.storage_url)
    for value in (0.5, 0.8, 0.7):
        study.tell(study.ask(), value)
    best = report_study(req.storage_url, req.study_name, out)
    assert best == out / BEST_CONFIG
    assert "validation accuracy 0.8000" in best.read_text()
    assert load_config(best).name == req.base.name  # a config `atelier train` accepts
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["best"]["val_accuracy"] == 0.8
    assert summary["requested_trials"] == TRIALS
    assert summary["storage"].startswith("sqlite:///")
