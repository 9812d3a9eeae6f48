"""One `atelier tune` worker: claim a queued trial, train it, tell the study; until the queue is
empty and no other worker's trial is still running.

Workers share nothing but the study's storage (the study's user attributes hold the base config,
the search space and the folds), so the same loop runs as a local process (`atelier tune
--workers W`) or as one pod of an Indexed Job against PostgreSQL.

A trial is `atelier train` (atelier.training.loop.train) on the base config with the trial's
values, in its own run folder; it reports validation accuracy after every epoch, or the running
mean after every fold with --folds, so the pruner can stop it early.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from atelier.runtime.errors import AtelierError, ConfigError
from atelier.training.config import TrainConfig
from atelier.training.data import Splits, load_splits
from atelier.training.data.split import stratified_folds
from atelier.training.tune.space import apply_params
from atelier.training.tune.study import (
    StudySettings,
    make_pruner,
    make_sampler,
    open_storage,
    read_settings,
)

if TYPE_CHECKING:
    from atelier.training.tune.tracking import TrialRun

log = logging.getLogger("atelier.tune")

TRIALS_DIR = "trials"


class TuneHooks:
    """Extension points around the search, no-ops here. ``study_run`` wraps the whole search in
    the `atelier tune` process, its report included; ``trial_run`` wraps one trial in the worker
    that runs it, from its claim to its final state, and yields the trial's run (or None).
    atelier.training.tune.tracking fills them with MLflow: the study's parent run, and a run
    per trial nested under it."""

    def study_run(self, study: optuna.Study) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def trial_run(
        self, study: optuna.Study, trial: optuna.Trial
    ) -> AbstractContextManager[TrialRun | None]:
        return contextlib.nullcontext()


def default_threads(workers: int = 1) -> int:
    """Torch threads for one of ``workers`` workers on this machine (>= 1)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


class _Heartbeat:
    """Record the trial's heartbeat now and every interval until the block ends (Optuna's
    own heartbeat thread does the same inside Study.optimize)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: int) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # a locked or briefly unreachable database: try again
                log.warning("heartbeat of trial id %s not recorded: %s", self._trial_id, exc)

    def __enter__(self) -> None:
        self._storage.record_heartbeat(self._trial_id)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(
        self,
        storage_url: str,
        study_name: str,
        out_dir: Path,
        index: int = 0,
        threads: int | None = None,
        hooks: TuneHooks | None = None,
    ) -> None:
        from atelier.training.tune.tracking import TrialTracking, fail_stale_trial_run

        plain = open_storage(storage_url)
        try:
            loaded = optuna.load_study(study_name=study_name, storage=plain)
            settings = read_settings(loaded)
            attrs = loaded.user_attrs
        except KeyError as exc:
            raise ConfigError(f"--study {study_name}: no such study in {storage_url}") from exc
        finally:
            plain.engine.dispose()
        self.settings: StudySettings = settings
        self.storage = open_storage(
            storage_url, settings.space.heartbeat, failed_trial_callback=fail_stale_trial_run
        )
        self.study_name = study_name
        self.study_id = self.storage.get_study_id_from_name(study_name)
        self.out_dir = out_dir
        self.index = index
        self.threads = threads or default_threads()
        # Tracking, when the study has an MLflow parent run; an unreachable store raises here,
        # before this worker claims a trial (unless the search's tracking is optional).
        self.hooks = hooks or TrialTracking.for_worker(attrs, index)
        self.sampler = make_sampler(settings.space, index)
        self.pruner = make_pruner(settings.space)
        self._splits: dict[str, Splits] = {}

    # --- the queue

    def _study(self) -> optuna.Study:
        # A fresh Study object per trial: samplers cache the trials they see once per object.
        return optuna.load_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            pruner=self.pruner,
        )

    def _claim(self, study: optuna.Study) -> tuple[optuna.Trial, int] | None:
        """Move one WAITING trial to RUNNING (the trial and its storage id), or None when none
        is left. The storage refuses the move for a trial another worker took first."""
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                self.study_id, frozen.number
            )
            try:
                if self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(study, trial_id), trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def run(self) -> int:
        """Run trials until the study is done; the number of trials this worker ran."""
        ran = 0
        interval = self.settings.space.heartbeat.interval_seconds
        while True:
            study = self._study()
            optuna.storages.fail_stale_trials(study)
            claimed = self._claim(study)
            if claimed is None:
                running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if not running:
                    return ran
                # Another worker's trial is running: wait, and fail it if its worker died.
                time.sleep(interval)
                continue
            self._run_trial(study, *claimed)
            ran += 1

    # --- one trial

    def _run_trial(self, study: optuna.Study, trial: optuna.Trial, trial_id: int) -> None:
        interval = self.settings.space.heartbeat.interval_seconds
        with (
            _Heartbeat(self.storage, trial_id, interval),
            self.hooks.trial_run(study, trial) as run,
        ):
            t0 = time.monotonic()
            state, value, error = TrialState.FAIL, None, None
            try:
                value = self._objective(study, trial, run)
                state = TrialState.COMPLETE
            except optuna.TrialPruned as exc:
                state, error = TrialState.PRUNED, str(exc)
            except AtelierError as exc:
                error = exc.one_line()
            except KeyboardInterrupt:
                error = "worker stopped"
                final = self._tell(study, trial, TrialState.FAIL, None, error, t0)
                if run is not None:
                    run.end(final, None, error)
                raise
            except Exception as exc:
                log.exception("trial %d failed", trial.number)
                error = f"{type(exc).__name__}: {exc}"
            final = self._tell(study, trial, state, value, error, t0)
            if run is not None:
                run.end(final, value if final == TrialState.COMPLETE else None, error)

    def _tell(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        state: TrialState,
        value: float | None,
        error: str | None,
        t0: float,
    ) -> TrialState:
        """Tell the study how the trial ended; the state the study holds afterwards."""
        trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
        if error:
            trial.set_user_attr("error", " ".join(error.split())[:500])
        try:
            if state == TrialState.COMPLETE:
                study.tell(trial, value)
            else:
                study.tell(trial, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # The heartbeat's grace ran out while the trial was still running (a stalled
            # worker): another worker already failed it. The study keeps FAIL.
            log.warning("trial %d was failed by the heartbeat before it ended", trial.number)
            return TrialState.FAIL
        log.info("trial %d %s value=%s %s", trial.number, state.name, value, error or "")
        return state

    def _objective(self, study: optuna.Study, trial: optuna.Trial, run: TrialRun | None) -> float:
        values = self.settings.space.suggest(trial)
        if run is not None:
            run.log_params(values)
        cfg = trial_config(self.settings.base, values, self.threads)
        trial.set_user_attr("worker", self.index)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        run_dir = self.out_dir / TRIALS_DIR / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        splits = self._data(cfg)
        if self.settings.folds:
            return cross_validate(trial, cfg, splits, self.settings.folds, run_dir, run)
        return holdout(trial, cfg, splits, run_dir, run)

    def _data(self, cfg: TrainConfig) -> Splits:
        key = f"{cfg.data.model_dump_json()}|{cfg.train.seed}"
        if key not in self._splits:
            self._splits[key] = load_splits(cfg.data, cfg.train.seed)
        return self._splits[key]


def trial_config(base: TrainConfig, values: dict[str, Any], threads: int) -> TrainConfig:
    """A trial's training config: the base with the trial's values, this worker's threads,
    and no gate (a trial is scored, not published)."""
    return apply_params(base, {**values, "train.threads": threads, "gate.min_accuracy": 0.0})


def holdout(
    trial: optuna.Trial,
    cfg: TrainConfig,
    splits: Splits,
    run_dir: Path,
    run: TrialRun | None = None,
) -> float:
    """Train once; report validation accuracy after every epoch (step = epoch). The trial's
    MLflow run, if any, gets the training's epochs and final metrics."""
    from atelier.training.loop import train

    def report(epoch: int, row: dict[str, Any]) -> None:
        trial.report(row["val_accuracy"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: val_accuracy {row['val_accuracy']:.4f}")

    tracker = run.train_tracker() if run is not None else None
    result = train(cfg, run_dir, tracker=tracker, splits=splits, on_epoch_end=report)
    trial.set_user_attr("test_accuracy", result.metrics["test_accuracy"])
    return float(result.metrics["val_accuracy"])


def fold_splits(splits: Splits, k: int, seed: int) -> Iterator[Splits]:
    """Stratified k-fold over the training split (train + validation of ``splits``); the
    test split stays as it is."""
    x = np.concatenate([splits.train_x, splits.val_x])
    y = np.concatenate([splits.train_y, splits.val_y])
    folds = stratified_folds(y, k, seed)
    for i, held in enumerate(folds):
        rest = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i]))
        identity = {**splits.identity, "cv": {"fold": i + 1, "folds": k, "seed": seed}}
        yield Splits(
            train_x=x[rest],
            train_y=y[rest],
            val_x=x[held],
            val_y=y[held],
            test_x=splits.test_x,
            test_y=splits.test_y,
            class_names=splits.class_names,
            identity=identity,
        )


def cross_validate(
    trial: optuna.Trial,
    cfg: TrainConfig,
    splits: Splits,
    k: int,
    run_dir: Path,
    run: TrialRun | None = None,
) -> float:
    """Train once per fold; report the running mean validation accuracy after every fold
    (step = folds done). The objective is the mean over the k folds. The trial's MLflow run, if
    any, gets each fold's epochs as ``fold-<i>/...`` and the running mean as ``val_accuracy``."""
    from atelier.training.loop import train

    accs: list[float] = []
    tests: list[float] = []
    for i, fold in enumerate(fold_splits(splits, k, cfg.train.seed), start=1):
        tracker = run.train_tracker(i) if run is not None else None
        result = train(cfg, run_dir / f"fold-{i}", tracker=tracker, splits=fold)
        accs.append(float(result.metrics["val_accuracy"]))
        tests.append(float(result.metrics["test_accuracy"]))
        mean = float(np.mean(accs))
        trial.set_user_attr("fold_val_accuracy", accs)
        trial.report(mean, i)
        if run is not None:
            run.log_step(mean, i)
        if trial.should_prune():
            raise optuna.TrialPruned(f"fold {i}/{k}: mean val_accuracy {mean:.4f}")
    trial.set_user_attr("test_accuracy", round(float(np.mean(tests)), 6))
    return float(np.mean(accs))


def run_worker(
    storage_url: str,
    study_name: str,
    out_dir: Path,
    index: int = 0,
    threads: int | None = None,
    hooks: TuneHooks | None = None,
) -> int:
    """The worker process's main: SIGTERM ends the running trial as FAIL before exiting."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = Worker(storage_url, study_name, out_dir, index, threads, hooks)
    return worker.run()
