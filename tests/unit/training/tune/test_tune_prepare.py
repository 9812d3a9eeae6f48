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


def test_a_tracked_job_opens_the_parent_run_at_prepare_and_the_first_report_ends_it(
    tmp_path: Path, store_uri: str
) -> None:
    """The chart's Job has no process around the whole search: the pod that creates the
    study opens its MLflow parent run (workers nest their trials under it), the pods that find
    the study wait for it, and the first report ends it with the results."""
    from mlflow import MlflowClient

    from atelier.training.tracking import TrackingSettings
    from atelier.training.tune.tracking import (
        StudyTracking,
        close_prepared_study_run,
        open_prepared_study_run,
        tracking_info,
    )

    req = request(tmp_path)
    req.tracking = TrackingSettings(mode="required", uri=store_uri, experiment="tune-job")
    for _ in range(2):  # the creating pod, then a pod that finds the study
        hooks = StudyTracking.connect(req.tracking, req)
        study, created = prepare_study(req)
        open_prepared_study_run(hooks, study, created, req.echo)
    info = tracking_info(study.user_attrs) or {}
    client = MlflowClient(store_uri)
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "RUNNING"
    assert parent.data.params["tune.trials"] == str(TRIALS)
    assert len(client.search_experiments(filter_string="name = 'tune-job'")) == 1

    for value in (0.6, 0.9, 0.7):
        study.tell(study.ask(), value)
    report_study(req.storage_url, req.study_name, tmp_path / "report")
    ended = client.get_run(info["parent_run_id"])
    assert ended.info.status == "FINISHED"
    assert ended.data.metrics["best_value"] == 0.9
    assert ended.data.metrics["trials_complete"] == TRIALS
    assert {a.path for a in client.list_artifacts(ended.info.run_id)} >= {"best.yaml"}
    # A second pod's report writes the same files and leaves the ended run alone.
    assert not close_prepared_study_run(study, tmp_path / "report", req.echo)
    assert client.get_run(info["parent_run_id"]).info.end_time == ended.info.end_time
