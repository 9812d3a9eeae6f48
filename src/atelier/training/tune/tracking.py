"""`atelier tune` in MLflow: the study is one parent run, every trial a run nested under it.

Where it goes follows `atelier train` (atelier.training.tracking.TrackingSettings): ``--tracking
required|optional|off``, ``--tracking-uri`` / ``MLFLOW_TRACKING_URI``, ``--experiment`` /
``MLFLOW_EXPERIMENT_NAME`` (default the base config's name). Unset, the store is SQLite in the
search's folder: ``<out>/mlflow.db``, artifacts in ``<out>/mlartifacts``.

- `atelier tune` checks that the store answers before it writes anything, opens the parent
  run (params: the search space, sampler, pruner and heartbeat, flattened under ``space.``;
  ``tune.trials``, ``tune.workers``, ``tune.folds``, ...) and stores where it is in the study's
  user attribute ``atelier_mlflow`` (URI, experiment id, parent run id, mode). At the end it
  logs the best value and trial, the count of each state and the wall time, and
  ``best.yaml``, ``summary.json``, ``base.yaml`` and ``plots/`` as artifacts.
- A worker (a local process, or a pod that knows only the storage URL and
  ``MLFLOW_TRACKING_URI``, which wins over the stored URI) reads that attribute and opens
  one run per trial: tag ``mlflow.parentRunId``, the trial's values as params, the training's
  per-epoch metrics (with ``--folds``: ``fold-<k>/...`` per fold and ``val_accuracy`` = the
  running mean per fold), so ``val_accuracy`` per step is what the pruner saw. The trial's
  run id goes into the trial's user attribute ``mlflow_run_id``.
- The run's final status follows the trial's state: COMPLETE -> FINISHED (metric ``value``),
  PRUNED -> FINISHED, FAIL -> FAILED; the tag ``optuna.state`` holds the state itself, and
  ``atelier.error`` why a trial was pruned or failed. A trial the heartbeat fails (its worker
  was killed) has its run marked FAILED by the process that fails it, and `atelier tune`
  sweeps the parent's children at the end so none stays RUNNING.

The training inside a trial gets the trial's run as its tracker: it never opens a run of its
own. mlflow is imported only when tracking is on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from atelier.runtime.errors import AtelierError, TrackingError, TrackingUnreachableError
from atelier.training.config import dump_config
from atelier.training.tracking import (
    EPOCH_METRICS,
    LOCAL_DB,
    MAX_TAG_CHARS,
    MlflowTracker,
    RunOutcome,
    RunRecord,
    TrackingSettings,
    absolute_uri,
    connect,
    ensure_experiment,
    final_metrics,
    flatten,
    git_commit,
    short_error,
    ui_hint,
)
from atelier.training.tune.worker import TuneHooks, default_threads

# How long a tune Job pod that found the study waits for its creator's parent run.
PARENT_WAIT_S = 60.0

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from atelier.training.tune.launcher import TuneRequest

log = logging.getLogger("atelier.tune")

STUDY_TRACKING_ATTR = "atelier_mlflow"
TRIAL_RUN_ATTR = "mlflow_run_id"
TUNE_FIX = (
    "start the server or set MLFLOW_TRACKING_URI / --tracking-uri to one that answers; "
    "or search untracked with --tracking optional (ATELIER_TRACKING=optional) or --tracking off"
)
WORKER_FIX = "give the worker an MLFLOW_TRACKING_URI that answers (the study's parent run is there)"
# Optuna's trial state -> the MLflow run's final status (the state itself is a tag).
RUN_STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "FINISHED",
    TrialState.FAIL: "FAILED",
}
STALE_ERROR = "its worker stopped sending heartbeats (failed by Optuna's heartbeat)"


def local_tune_store(out: Path) -> str:
    """The default store of a search: SQLite in its own folder."""
    return f"sqlite:///{(out.resolve() / LOCAL_DB).as_posix()}"


def hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _error_line(error: BaseException) -> str:
    if isinstance(error, AtelierError):
        return error.one_line()
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _batched_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


# --- the launcher: the study's parent run


@dataclass
class StudyTracking(TuneHooks):
    """`atelier tune`'s side: opens the parent run around the search, closes it at the end."""

    client: MlflowClient
    uri: str
    settings: TrackingSettings
    req: TuneRequest
    run_id: str | None = None
    experiment_id: str | None = None

    @classmethod
    def connect(cls, settings: TrackingSettings, req: TuneRequest) -> StudyTracking | None:
        """The store, checked to answer; None when tracking is off or optional and down."""
        if settings.mode == "off":
            return None
        uri = absolute_uri(settings.uri or local_tune_store(req.out))
        try:
            client = connect(uri, fix=TUNE_FIX)
        except TrackingUnreachableError as exc:
            if settings.mode != "optional":
                raise
            req.echo(
                f"tracking: {exc.message}; searching anyway (--tracking optional): "
                "nothing of this search is tracked"
            )
            return None
        return cls(client, uri, settings, req)

    def params(self, workers: int, threads: int) -> dict[str, str]:
        req = self.req
        return {
            **flatten(req.space.model_dump(mode="json"), "space."),
            "tune.trials": str(req.trials),
            "tune.workers": str(workers),
            "tune.threads_per_worker": str(threads),
            "tune.folds": str(req.folds),
            "tune.study": req.study_name,
            "tune.storage": hide_password(req.storage_url),
            "tune.space_source": req.space_source,
        }

    @contextlib.contextmanager
    def study_run(self, study: optuna.Study) -> Iterator[None]:
        self._open(study)
        outcome = RunOutcome()
        try:
            with outcome:
                yield
        finally:
            self._close(study, outcome.status, outcome.error)

    def _open(self, study: optuna.Study) -> None:
        from mlflow.utils.mlflow_tags import (
            MLFLOW_GIT_COMMIT,
            MLFLOW_RUN_NAME,
            MLFLOW_SOURCE_NAME,
            MLFLOW_SOURCE_TYPE,
            MLFLOW_USER,
        )

        req = self.req
        name = self.settings.experiment or req.base.name
        workers = min(req.workers, req.trials)
        threads = req.threads or default_threads(workers)
        try:
            self.experiment_id = ensure_experiment(self.client, name, self.uri)
            commit = git_commit()
            tags = {
                MLFLOW_RUN_NAME: req.out.name,
                MLFLOW_SOURCE_NAME: "atelier tune",
                MLFLOW_SOURCE_TYPE: "LOCAL",
                MLFLOW_USER: os.environ.get("USER", "atelier"),
                "atelier.git_commit": commit,
                "atelier.tune_dir": str(req.out.resolve()),
                "atelier.config_name": req.base.name,
                "atelier.tracking": self.settings.mode,
                "optuna.study": study.study_name,
            }
            if commit != "unknown":
                tags[MLFLOW_GIT_COMMIT] = commit
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=req.out.name)
            self.run_id = run.info.run_id
            _batched_params(self.client, self.run_id, self.params(workers, threads))
        except Exception as exc:
            raise TrackingError(
                f"MLflow tracking URI {self.uri} refused the search's run: {short_error(exc)}",
                hint=TUNE_FIX,
            ) from exc
        study.set_user_attr(
            STUDY_TRACKING_ATTR,
            {
                "uri": self.uri,
                "experiment_id": self.experiment_id,
                "experiment": name,
                "parent_run_id": self.run_id,
                "mode": self.settings.mode,
            },
        )
        req.echo(f"tracking: MLflow run {self.run_id} in experiment {name!r} at {self.uri}")

    def _close(self, study: optuna.Study, status: str, error: BaseException | None) -> None:
        from mlflow.entities import Metric, RunTag

        assert self.run_id is not None
        client, run_id, out = self.client, self.run_id, self.req.out
        gaps: list[str] = []

        def attempt(what: str, fn: Any) -> None:
            try:
                fn()
            except Exception as exc:
                gaps.append(f"{what} ({short_error(exc)})")

        trials = study.get_trials(deepcopy=False)
        attempt("the trials' runs", lambda: sweep_trial_runs(client, trials))
        now = int(time.time() * 1000)
        metrics = [Metric(f"trials_{s.name.lower()}", float(n), now, 0) for s, n in _n(trials)]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            best = max(complete, key=lambda t: t.value or 0.0)
            metrics += [
                Metric("best_value", float(best.value or 0.0), now, 0),
                Metric("best_trial", float(best.number), now, 0),
            ]
            test = best.user_attrs.get("test_accuracy")
            if test is not None:
                metrics.append(Metric("best_test_accuracy", float(test), now, 0))
        tags = [RunTag("atelier.trials", str(len(trials)))]
        if error is not None:
            tags += [
                RunTag("atelier.error", _error_line(error)[:MAX_TAG_CHARS]),
                RunTag(
                    "atelier.error.kind",
                    error.kind if isinstance(error, AtelierError) else type(error).__name__,
                ),
            ]
        attempt("metrics and tags", lambda: client.log_batch(run_id, metrics, [], tags))
        for name in ("best.yaml", "summary.json"):
            if (out / name).is_file():
                attempt(name, lambda p=out / name: client.log_artifact(run_id, str(p)))
        base = dump_config(self.req.base)

        def log_base() -> None:
            client.log_text(run_id, base, "base.yaml")

        attempt("base.yaml", log_base)
        if (out / "plots").is_dir():
            attempt("plots", lambda: client.log_artifacts(run_id, str(out / "plots"), "plots"))
        try:
            client.set_terminated(run_id, status)
        except Exception as exc:
            gaps.append(f"its final status {status} ({short_error(exc)}): it shows RUNNING")
        where = f"MLflow run {run_id} ({status}) with {len(trials)} nested trial runs at {self.uri}"
        if gaps:
            message = f"{where} is incomplete: {'; '.join(gaps)}"
            if error is None and self.settings.mode == "required":
                raise TrackingError(
                    message,
                    hint=f"{out} holds everything; check the tracking server, or use "
                    "--tracking optional to accept a partial record",
                )
            self.req.echo(f"tracking: {message}")
        else:
            self.req.echo(f"tracked: {where}; {ui_hint(self.uri)}")


def _n(trials: list[FrozenTrial]) -> list[tuple[TrialState, int]]:
    return [(s, sum(t.state == s for t in trials)) for s in RUN_STATUS]


def sweep_trial_runs(client: MlflowClient, trials: list[FrozenTrial]) -> int:
    """End every trial run still RUNNING whose trial has finished (its worker died, or the
    store did not answer when the trial ended); the number of runs ended."""
    from mlflow.entities import RunTag

    ended = 0
    for t in trials:
        run_id = t.user_attrs.get(TRIAL_RUN_ATTR)
        if run_id is None or t.state not in RUN_STATUS:
            continue
        if client.get_run(run_id).info.status != "RUNNING":
            continue
        tags = [RunTag("optuna.state", t.state.name)]
        why = t.user_attrs.get("error") or (STALE_ERROR if t.state == TrialState.FAIL else None)
        if why:
            tags.append(RunTag("atelier.error", str(why)[:MAX_TAG_CHARS]))
        client.log_batch(run_id, tags=tags)
        client.set_terminated(run_id, RUN_STATUS[t.state])
        ended += 1
    return ended


# --- the workers: one nested run per trial


def tracking_info(study_attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    info = study_attrs.get(STUDY_TRACKING_ATTR)
    return dict(info) if isinstance(info, Mapping) else None


def worker_uri(info: Mapping[str, Any]) -> str:
    """A pod reaches the server by the URI it is given; a local worker by the stored one."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or str(info["uri"])


def fail_stale_trial_run(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat callback: the trial's worker died, so its run ends FAILED too."""
    info = tracking_info(study.user_attrs)
    run_id = trial.user_attrs.get(TRIAL_RUN_ATTR)
    if info is None or run_id is None:
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=worker_uri(info))
        sweep_trial_runs(client, [trial])
    except Exception as exc:
        log.warning(
            "trial %d failed by the heartbeat; its MLflow run %s not marked FAILED: %s "
            "(`atelier tune` sweeps it at the end)",
            trial.number,
            run_id,
            short_error(exc),
        )


@dataclass
class _TrainHooks:
    """The tracker one `train` call of a trial gets: its epochs into the trial's run."""

    run: TrialRun
    fold: int | None

    def data_loaded(self, identity: dict[str, Any]) -> None:
        if self.fold in (None, 1):
            self.run.tracker.data_loaded(identity)

    def epoch_end(self, row: dict[str, Any]) -> None:
        prefix = "" if self.fold is None else f"fold-{self.fold}/"
        values = {f"{prefix}{k}": float(row[k]) for k in EPOCH_METRICS if k in row}
        self.run.tracker.log_metrics(values, step=int(row["epoch"]))

    def run_end(self, metrics: dict[str, Any], run_dir: Path) -> None:
        step = int(metrics.get("epochs_run", 0))
        if self.fold is None:
            self.run.tracker.log_metrics(final_metrics(metrics), step=step)
        else:
            values = {f"fold-{self.fold}/test_accuracy": float(metrics["test_accuracy"])}
            self.run.tracker.log_metrics(values, step=step)


@dataclass
class TrialRun:
    """One trial's MLflow run, nested under the study's parent run."""

    tracker: MlflowTracker
    number: int
    ended: bool = False

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    def log_params(self, values: Mapping[str, Any]) -> None:
        params = {k: str(v) for k, v in values.items()}
        self.tracker.call(
            "params", lambda: _batched_params(self.tracker.client, self.run_id, params)
        )

    def train_tracker(self, fold: int | None = None) -> _TrainHooks:
        return _TrainHooks(self, fold)

    def log_step(self, value: float, step: int) -> None:
        """The value reported to the pruner at ``step`` (with --folds: the running mean)."""
        self.tracker.log_metrics({"val_accuracy": float(value)}, step=step)

    def end(self, state: TrialState, value: float | None, error: str | None) -> None:
        """Final status from the trial's state; never raises (the trial's result stands)."""
        from mlflow.entities import RunTag

        self.ended = True
        tracker = self.tracker
        if state == TrialState.COMPLETE and value is not None:
            tracker.log_metrics({"value": float(value)}, step=0)
        tracker.flush()
        tags = [RunTag("optuna.state", state.name)]
        if error:
            tags.append(RunTag("atelier.error", " ".join(error.split())[:MAX_TAG_CHARS]))
        gaps = tracker.incomplete()
        if gaps:
            tags.append(RunTag("atelier.tracking_incomplete", "; ".join(gaps)[:MAX_TAG_CHARS]))
        status = RUN_STATUS.get(state, "FAILED")
        try:
            tracker.client.log_batch(self.run_id, tags=tags)
            tracker.client.set_terminated(self.run_id, status)
        except Exception as exc:
            log.warning(
                "trial %d: MLflow run %s not ended %s: %s (`atelier tune` sweeps it)",
                self.number,
                self.run_id,
                status,
                short_error(exc),
            )
            return
        if gaps:
            log.warning("trial %d: MLflow run %s lacks %s", self.number, self.run_id, gaps)


@dataclass
class TrialTracking(TuneHooks):
    """A worker's side: a nested run per trial under the study's parent run."""

    client: MlflowClient
    uri: str
    info: dict[str, Any]
    index: int

    @classmethod
    def for_worker(cls, study_attrs: Mapping[str, Any], index: int) -> TuneHooks:
        """The hooks a worker uses: tracking when the study has a parent run, else none."""
        info = tracking_info(study_attrs)
        if info is None:
            return TuneHooks()
        uri = worker_uri(info)
        try:
            client = connect(uri, fix=WORKER_FIX)
        except TrackingUnreachableError:
            if info.get("mode") != "optional":
                raise
            log.warning("tracking: %s does not answer; this worker's trials are untracked", uri)
            return TuneHooks()
        return cls(client, uri, info, index)

    @contextlib.contextmanager
    def trial_run(self, study: optuna.Study, trial: optuna.Trial) -> Iterator[TrialRun | None]:
        run = self._open(study, trial)
        if run is None:
            yield None
            return
        try:
            yield run
        except BaseException as exc:
            if not run.ended:
                run.end(TrialState.FAIL, None, _error_line(exc))
            raise
        if not run.ended:
            run.end(TrialState.FAIL, None, "the trial ended without a state")

    def _open(self, study: optuna.Study, trial: optuna.Trial) -> TrialRun | None:
        from mlflow.utils.mlflow_tags import (
            MLFLOW_PARENT_RUN_ID,
            MLFLOW_RUN_NAME,
            MLFLOW_SOURCE_NAME,
            MLFLOW_SOURCE_TYPE,
        )

        name = f"trial-{trial.number:04d}"
        tags = {
            MLFLOW_PARENT_RUN_ID: str(self.info["parent_run_id"]),
            MLFLOW_RUN_NAME: name,
            MLFLOW_SOURCE_NAME: "atelier tune-worker",
            MLFLOW_SOURCE_TYPE: "LOCAL",
            "optuna.study": study.study_name,
            "optuna.trial_number": str(trial.number),
            "atelier.worker": str(self.index),
        }
        try:
            run = self.client.create_run(str(self.info["experiment_id"]), tags=tags, run_name=name)
        except Exception as exc:
            log.warning("trial %d: no MLflow run (%s); it runs untracked", trial.number, exc)
            trial.set_user_attr("mlflow_error", short_error(exc))
            return None
        run_id = run.info.run_id
        trial.set_user_attr(TRIAL_RUN_ATTR, run_id)
        record = RunRecord(
            self.uri, str(self.info["experiment_id"]), str(self.info["experiment"]), run_id
        )
        tracker = MlflowTracker(self.client, record, Path("."), say=log.warning)
        return TrialRun(tracker, trial.number)


# --- the chart's tune Job: `atelier tune --prepare-only` opens the parent run, `tune-report`
# ends it (no process runs the whole search there).


def open_prepared_study_run(
    hooks: StudyTracking | None, study: optuna.Study, created: bool, echo: Any
) -> None:
    """The pod that created the study opens its parent run and stores where it is; the pods
    that found the study wait (up to ``PARENT_WAIT_S``) until it is stored, so that their
    workers nest their trials under it. ``hooks`` (StudyTracking.connect, called before the
    study is touched) is None when tracking is off or the store is down and optional."""
    if hooks is None:
        return
    if created:
        hooks._open(study)
        return
    deadline = time.monotonic() + PARENT_WAIT_S
    while tracking_info(study.user_attrs) is None:
        if time.monotonic() > deadline:
            echo(
                f"tracking: study {study.study_name} has no MLflow parent run after "
                f"{PARENT_WAIT_S:.0f} s (its creator tracked nothing): trials run untracked"
            )
            return
        time.sleep(1.0)
        study = optuna_study(study)


def optuna_study(study: optuna.Study) -> optuna.Study:
    """The study read again from its storage (user attributes are read when loaded)."""
    import optuna

    return optuna.load_study(study_name=study.study_name, storage=study._storage)


def close_prepared_study_run(study: optuna.Study, out: Path, echo: Any) -> bool:
    """`tune-report`: end the parent run `--prepare-only` opened, with the search's results
    (as `atelier tune` does at its end); only the first report does. True when it ended it."""
    from atelier.training.tune.launcher import TuneRequest
    from atelier.training.tune.study import read_settings

    info = tracking_info(study.user_attrs)
    if info is None:
        return False
    uri = worker_uri(info)
    mode = info.get("mode", "required")
    run_id = str(info["parent_run_id"])
    try:
        client = connect(uri, fix=TUNE_FIX)
        if client.get_run(run_id).info.status != "RUNNING":
            return False
    except Exception as exc:
        if mode == "required":
            raise
        echo(f"tracking: the search's MLflow run {run_id} stays open: {short_error(exc)}")
        return False
    settings = read_settings(study)
    req = TuneRequest(
        base=settings.base,
        space=settings.space,
        space_source="study",
        trials=settings.trials,
        folds=settings.folds,
        study=study.study_name,
        out=out,
        echo=echo,
        tracking=TrackingSettings(mode=mode, uri=uri),
    )
    hooks = StudyTracking(client, uri, req.tracking, req, run_id, str(info["experiment_id"]))  # type: ignore[arg-type]
    hooks._close(study, "FINISHED", None)
    return True
