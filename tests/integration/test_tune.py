"""`atelier tune` with two real worker processes on one SQLite study: exactly the requested
trials, pruned trials marked PRUNED, a worker killed with SIGKILL mid-trial whose trial the
heartbeat fails while the other worker finishes the study, and a best config `atelier train`
reads. The search is tracked in a local MLflow store (SQLite): the study's parent run and one
nested run per trial, whose final status follows the trial's state (the killed one FAILED)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from atelier.tools.paths import project_file
from atelier.training.config import load_config
from atelier.training.tune.report import best_config
from atelier.training.tune.tracking import STALE_ERROR, STUDY_TRACKING_ATTR, TRIAL_RUN_ATTR

pytestmark = pytest.mark.integration

TRIALS = 4
# Random sampling with seed 24: worker 0 draws lr 0.02, 1e-7, 0.02, ...; worker 1 draws
# 0.02, 1e-7, 0.02, ... So one worker is killed in its first trial (FAIL), and the survivor
# completes its first trial with the good rate, then its next trial (the useless 1e-7) is below
# the median of the completed trials after its one epoch: pruned (the pruner prunes after one
# completed trial); its third completes. 4 trials: 1 failed, 1 pruned, 2 complete.
SPACE = """\
sampler: {name: random, seed: 24}
pruner: {name: median, n_startup_trials: 1}
heartbeat: {interval_seconds: 1, grace_seconds: 10}
params:
  optim.lr: {type: categorical, choices: [0.02, 1.0e-7]}
  model.dropout: {type: float, low: 0.0, high: 0.3}
"""
OVERRIDES = [
    "data.train_limit=500",
    "data.test_limit=100",
    "train.epochs=1",
    "train.batch_size=32",
    "gate.min_accuracy=0",
]


def test_two_workers_share_one_study_and_a_killed_workers_trial_fails(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "tune"
    cmd = [sys.executable, "-m", "atelier", "tune", "--config", "training-job/configs/smoke.yaml"]
    for item in OVERRIDES:
        cmd += ["--set", item]
    cmd += ["--space", str(space), "--trials", str(TRIALS), "--workers", "2", "--out", str(out)]
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    cmd += ["--tracking-uri", tracking_uri]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ATELIER_TRACK"))}
    log = (tmp_path / "tune.log").open("w+")
    proc = subprocess.Popen(
        cmd, cwd=project_file("."), stdout=log, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        storage = f"sqlite:///{out / 'study.db'}"
        killed = kill_a_worker_mid_trial(out, storage, proc)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    output = log.read()
    assert proc.returncode == 0, output

    study = optuna.load_study(study_name="fashion-mnist", storage=storage)
    trials = study.get_trials()
    states = [t.state for t in trials]
    # Exactly the requested trials, every one finished, none left running.
    assert len(trials) == TRIALS, states
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    n = {s.name: len(v) for s, v in by_state.items()}
    assert n["COMPLETE"] + n["PRUNED"] + n["FAIL"] == TRIALS, n
    # The killed worker's trial was failed by the heartbeat, and only that one.
    assert [t.number for t in by_state[TrialState.FAIL]] == [killed], n
    assert "with signal SIGKILL" in output
    # Pruned trials stopped after the epoch the pruner saw, below the completed ones.
    assert n["PRUNED"] >= 1, n
    best = max(t.value for t in by_state[TrialState.COMPLETE])
    for t in by_state[TrialState.PRUNED]:
        assert list(t.intermediate_values) == [1]
        assert t.value is not None and t.value <= best
        assert not (Path(t.user_attrs["run_dir"]) / "metrics.json").exists()
    assert n["COMPLETE"] >= 1
    for t in by_state[TrialState.COMPLETE]:
        assert (Path(t.user_attrs["run_dir"]) / "metrics.json").is_file()
    # Both workers ran trials; the survivor ran every trial after the kill.
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {k: v for k, v in n.items() if v}
    assert summary["best"]["number"] == study.best_trial.number
    stems = ["optimization_history", "intermediate_values", "param_importances"]
    drawn = [stem for stem in stems if stem not in summary["plots_skipped"]]
    # Only the importances may lack trials (the survivor's third trial, lr 0.02, can be pruned).
    assert drawn[:2] == stems[:2], summary["plots_skipped"]
    for stem in drawn:
        assert (out / "plots" / f"{stem}.png").stat().st_size > 1000
        assert "<svg" in (out / "plots" / f"{stem}.html").read_text()
    assert f"{TRIALS}/{TRIALS} trials finished" in output
    assert f"with {TRIALS} nested trial runs at {tracking_uri}" in output

    # The best config is a training YAML that `atelier train --config` reads: load_config is
    # the command's first step (training on it would prove nothing more and cost seconds).
    cfg = load_config(out / "best.yaml")
    base = load_config(project_file("training-job/configs/smoke.yaml"), OVERRIDES)
    assert cfg == best_config(base, study.best_trial)
    assert cfg.optim.lr == study.best_params["optim.lr"] == 0.02
    assert cfg.train.threads is None  # the trial's threads are not carried over

    check_mlflow_runs(MlflowClient(tracking_uri), study, trials, plots=2 * len(drawn))


def check_mlflow_runs(
    client: MlflowClient, study: optuna.Study, trials: list[optuna.trial.FrozenTrial], plots: int
) -> None:
    """The study's parent run, and one nested run per trial whose status follows its state."""
    info = study.user_attrs[STUDY_TRACKING_ATTR]
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["tune.trials"] == str(TRIALS)
    assert parent.data.params["tune.workers"] == "2"
    assert parent.data.params["space.sampler.name"] == "random"
    assert parent.data.params["space.params.optim.lr.choices"] == "[0.02, 1e-07]"
    by_state = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    assert parent.data.metrics["best_value"] == study.best_value
    assert parent.data.metrics["best_trial"] == study.best_trial.number
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        assert parent.data.metrics[f"trials_{state.lower()}"] == by_state[state], state
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best.yaml", "summary.json", "base.yaml", "plots"} <= artifacts, artifacts
    assert len(client.list_artifacts(parent.info.run_id, "plots")) == plots

    children = client.search_runs(
        [info["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert len(children) == TRIALS
    runs = {r.info.run_id: r for r in children}
    assert {t.user_attrs[TRIAL_RUN_ATTR] for t in trials} == set(runs)
    expected_status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
    for t in trials:
        run = runs[t.user_attrs[TRIAL_RUN_ATTR]]
        assert run.data.tags["optuna.trial_number"] == str(t.number)
        assert run.info.status == expected_status[t.state.name], (t.number, t.state)
        assert run.data.tags["optuna.state"] == t.state.name
        # The trial's values as params, as text.
        assert run.data.params == {k: str(v) for k, v in t.params.items()}
        if t.state == TrialState.FAIL:  # the killed worker's trial, failed by the heartbeat
            assert run.data.tags["atelier.error"] == STALE_ERROR
            continue
        # What the pruner saw, step by step, is the run's val_accuracy history.
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [(m.step, m.value) for m in history] == sorted(t.intermediate_values.items())
        if t.state == TrialState.COMPLETE:
            assert run.data.metrics["value"] == t.value
            assert run.data.metrics["test_accuracy"] == t.user_attrs["test_accuracy"]
        else:
            assert "test_accuracy" not in run.data.metrics
            assert run.data.tags["atelier.error"].startswith("epoch 1: val_accuracy")


def kill_a_worker_mid_trial(out: Path, storage: str, proc: subprocess.Popen[str]) -> int:
    """Wait until a worker is training a trial (its run folder exists), SIGKILL that worker;
    the trial's number."""
    deadline = time.monotonic() + 300
    while not (out / "workers").is_dir():  # made once the study exists
        assert proc.poll() is None and time.monotonic() < deadline, "no study was created"
        time.sleep(0.2)
    study = optuna.load_study(study_name="fashion-mnist", storage=storage)
    while time.monotonic() < deadline:
        assert proc.poll() is None, "atelier tune ended before a worker could be killed"
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid, run_dir = t.user_attrs.get("pid"), t.user_attrs.get("run_dir")
            if pid is not None and run_dir is not None and Path(run_dir).is_dir():
                os.kill(pid, signal.SIGKILL)
                return t.number
        time.sleep(0.2)
    raise AssertionError("no trial started training within 300 s")
