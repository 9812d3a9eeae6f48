"""`atelier tune`'s MLflow side without workers: a store that does not answer stops the search
before anything is written (optional: the search goes on untracked), and the stale-trial sweep
ends a finished trial's RUNNING run with the status its state maps to (a real SQLite store)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from atelier.runtime.errors import TrackingUnreachableError
from atelier.tools.paths import project_file
from atelier.tools.process import free_port
from atelier.training.config import load_config
from atelier.training.tracking import TrackingSettings
from atelier.training.tune.launcher import TuneRequest, run_tune
from atelier.training.tune.space import SearchSpace
from atelier.training.tune.tracking import (
    RUN_STATUS,
    STALE_ERROR,
    TRIAL_RUN_ATTR,
    StudyTracking,
    sweep_trial_runs,
)

pytestmark = pytest.mark.unit

SPACE = SearchSpace.model_validate(
    {"params": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}
)


def request(tmp_path: Path, mode: str) -> TuneRequest:
    base = load_config(project_file("training-job/configs/smoke.yaml"), ["data.train_limit=200"])
    uri = f"http://127.0.0.1:{free_port()}"
    lines: list[str] = []
    return TuneRequest(
        base=base,
        space=SPACE,
        space_source="space.yaml",
        trials=2,
        out=tmp_path / "tune",
        echo=lines.append,
        tracking=TrackingSettings(mode=mode, uri=uri),  # type: ignore[arg-type]
    )


def test_an_unreachable_store_stops_the_search_before_anything_is_written(
    tmp_path: Path,
) -> None:
    req = request(tmp_path, "required")
    with pytest.raises(TrackingUnreachableError) as exc:
        run_tune(req)
    assert str(req.tracking.uri) in exc.value.one_line()  # type: ignore[union-attr]
    assert "--tracking optional" in exc.value.one_line()
    assert not req.out.exists()  # no folder, no study
    # optional: the same store is named once and the search would go on untracked.
    said: list[str] = []
    optional = request(tmp_path, "optional")
    optional.echo = said.append
    assert StudyTracking.connect(optional.tracking, optional) is None  # type: ignore[arg-type]
    assert len(said) == 1 and "nothing of this search is tracked" in said[0]


def test_the_sweep_ends_a_finished_trials_running_run_by_its_state(
    tmp_path: Path, store_uri: str
) -> None:
    client = MlflowClient(store_uri)
    exp = client.create_experiment("sweep", artifact_location=(tmp_path / "a").as_uri())
    study = optuna.create_study(direction="maximize")
    runs = {}
    for state in (TrialState.FAIL, TrialState.PRUNED, TrialState.COMPLETE):
        run_id = client.create_run(exp).info.run_id
        trial = optuna.trial.create_trial(
            state=state,
            value=0.5 if state == TrialState.COMPLETE else None,
            user_attrs={TRIAL_RUN_ATTR: run_id},
        )
        study.add_trial(trial)
        runs[state] = run_id
    done = client.create_run(exp).info.run_id  # already ended: left alone
    client.set_terminated(done, "FINISHED")
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={TRIAL_RUN_ATTR: done})
    )

    assert sweep_trial_runs(client, study.get_trials()) == 3
    for state, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.info.status == RUN_STATUS[state]
        assert run.data.tags["optuna.state"] == state.name
    assert client.get_run(runs[TrialState.FAIL]).data.tags["atelier.error"] == STALE_ERROR
    assert client.get_run(done).info.status == "FINISHED"
    assert "optuna.state" not in client.get_run(done).data.tags
