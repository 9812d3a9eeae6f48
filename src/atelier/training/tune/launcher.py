"""`atelier tune`: check everything, create the study, start W local worker processes on it,
follow the trials as they end, then write the best config, the plots and the summary.

Nothing is written before every input is checked: the flags, the base config, the search
space against it, the data (and that every class has at least --folds images), the storage,
and that the MLflow tracking store answers (atelier.training.tune.tracking).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.runtime.errors import ConfigError, TuningError
from atelier.training.config import TrainConfig
from atelier.training.tune.space import SearchSpace, check_space

if TYPE_CHECKING:
    import optuna

    from atelier.training.tracking import TrackingSettings
    from atelier.training.tune.study import StudySettings
    from atelier.training.tune.worker import TuneHooks

# optuna, torch (through the data loaders) and matplotlib are imported where they are used,
# so that a bad flag or space file is answered before they load.

WORKERS_DIR = "workers"
STUDY_DB = "study.db"


@dataclass
class TuneRequest:
    base: TrainConfig
    space: SearchSpace
    space_source: str
    trials: int
    workers: int = 1
    folds: int | None = None
    storage: str | None = None
    study: str | None = None
    out: Path = Path("runs/tune")
    threads: int | None = None
    echo: Callable[[str], None] = print
    # Extra environment for the worker processes.
    env: dict[str, str] = field(default_factory=dict)
    # MLflow: the study's parent run and a nested run per trial; None: untracked.
    tracking: TrackingSettings | None = None

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / STUDY_DB).resolve()}"

    @property
    def study_name(self) -> str:
        return self.study or self.base.name


def check_request(req: TuneRequest, *, fresh_out: bool = True) -> None:
    """Every check that needs no writing, in the order a user fixes them. ``fresh_out=False``
    (prepare, on a shared folder) accepts an --out that already holds files."""
    if req.trials < 1:
        raise ConfigError(f"--trials {req.trials}: run at least 1 trial")
    if req.workers < 1:
        raise ConfigError(f"--workers {req.workers}: start at least 1 worker")
    if req.folds is not None and req.folds < 2:
        raise ConfigError(
            f"--folds {req.folds}: k-fold cross-validation needs at least 2 folds",
            hint="use --folds 2 or more, or leave it out for the validation split",
        )
    if fresh_out and req.out.exists() and any(req.out.iterdir()):
        raise ConfigError(f"--out {req.out} is not empty", hint="pick a new --out")
    check_space(req.space, req.base, req.space_source)
    if req.storage is not None:
        check_storage_url(req.storage)
    import numpy as np

    from atelier.training.data import load_splits

    if req.folds is not None:
        splits = load_splits(req.base.data, req.base.train.seed)
        y = np.concatenate([splits.train_y, splits.val_y])
        smallest = int(np.bincount(y).min()) if len(y) else 0
        if smallest < req.folds:
            raise ConfigError(
                f"--folds {req.folds}: the smallest class of the training split has "
                f"{smallest} images, fewer than the folds",
                hint="use fewer folds or more data (data.train_limit)",
            )
    else:
        load_splits(req.base.data, req.base.train.seed)  # missing or corrupt data: exit 3 now


def check_storage_url(url: str) -> None:
    """A storage URL SQLAlchemy can parse and has a driver for (no connection yet)."""
    import sqlalchemy

    try:
        sqlalchemy.create_engine(url).dispose()
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--storage {url}: not a usable database URL: {first}",
            hint="a SQLAlchemy URL such as sqlite:///runs/tune/study.db or "
            "postgresql+psycopg://user:pass@host/db",
        ) from exc


def _signal_name(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def run_tune(req: TuneRequest, hooks: TuneHooks | None = None) -> dict[str, Any]:
    """Run the search; returns the summary. Raises TuningError when trials were left unrun
    or none completed."""
    check_request(req)
    import optuna

    from atelier.training.tune.study import StudySettings, create_study, open_storage
    from atelier.training.tune.tracking import StudyTracking, fail_stale_trial_run
    from atelier.training.tune.worker import TuneHooks, default_threads

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workers = min(req.workers, req.trials)
    threads = req.threads or default_threads(workers)
    created_out = not req.out.exists()
    req.out.mkdir(parents=True, exist_ok=True)
    try:
        if hooks is None and req.tracking is not None:
            hooks = StudyTracking.connect(req.tracking, req)
        storage = open_storage(
            req.storage_url, req.space.heartbeat, failed_trial_callback=fail_stale_trial_run
        )
        settings = StudySettings(req.base, req.space, req.folds, req.trials)
        study = create_study(storage, req.study_name, settings)
    except BaseException:
        if created_out:
            import shutil

            shutil.rmtree(req.out, ignore_errors=True)
        raise
    log_dir = req.out / WORKERS_DIR
    log_dir.mkdir()
    req.echo(
        f"study {req.study_name} in {req.storage_url}: {req.trials} trials, {workers} workers "
        f"x {threads} threads, {f'{req.folds}-fold CV' if req.folds else 'validation split'}"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        **req.env,
    }
    if isinstance(hooks, StudyTracking):  # the workers track where the parent run is
        env["MLFLOW_TRACKING_URI"] = hooks.uri
    with (hooks or TuneHooks()).study_run(study):
        return _search(req, study, workers, threads, env, log_dir)


def _search(
    req: TuneRequest,
    study: optuna.Study,
    workers: int,
    threads: int,
    env: dict[str, str],
    log_dir: Path,
) -> dict[str, Any]:
    """Start the workers, follow them, then report: inside the study's run."""
    from atelier.training.tune import report
    from atelier.training.tune.study import FINISHED, counts

    t0 = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(workers):
            cmd = [sys.executable, "-m", "atelier", "tune-worker"]
            cmd += ["--storage", req.storage_url, "--study", req.study_name]
            cmd += ["--out", str(req.out), "--index", str(i), "--threads", str(threads)]
            with (log_dir / f"worker-{i}.log").open("wb") as fh:
                procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env))
            (log_dir / f"worker-{i}.pid").write_text(f"{procs[-1].pid}\n")
        _follow(req, study, procs)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    wall = time.monotonic() - t0

    trials = study.get_trials(deepcopy=False)
    names = list(req.space.params)
    req.echo("")
    req.echo(report.table(trials, names))
    skipped = report.write_plots(req.out, study)
    finished = [t for t in trials if t.state in FINISHED]
    summary = report.write_summary(
        req.out,
        study,
        {
            "storage": req.storage_url,
            "workers": workers,
            "threads_per_worker": threads,
            "folds": req.folds,
            "requested_trials": req.trials,
            "wall_seconds": round(wall, 1),
            "plots_skipped": skipped,
        },
    )
    c = counts(trials)
    req.echo(
        f"\n{len(finished)}/{req.trials} trials finished: {c['COMPLETE']} complete, "
        f"{c['PRUNED']} pruned, {c['FAIL']} failed; {wall:.0f} s wall"
    )
    for stem, why in skipped.items():
        req.echo(f"plot {stem} not drawn: {why}")
    left = [t for t in trials if t.state not in FINISHED]
    if left:
        raise TuningError(
            f"{len(left)} of {req.trials} trials were not run (workers exited): "
            f"see {log_dir}/worker-*.log",
            hint="fix the cause and start a new search",
        )
    if c["COMPLETE"] == 0:
        raise TuningError(
            f"no trial completed ({c['PRUNED']} pruned, {c['FAIL']} failed): see "
            f"{req.out / report.SUMMARY} and {log_dir}/worker-*.log"
        )
    best_path = report.write_best_config(req.out, study, req.base)
    best = study.best_trial
    req.echo(
        f"best: trial {best.number} val_accuracy {best.value:.4f} -> {best_path}\n"
        f"plots: {req.out / report.PLOTS_DIR}/*.png|html  summary: {req.out / report.SUMMARY}\n"
        f"train it: atelier train --config {best_path}"
    )
    return summary


def _follow(req: TuneRequest, study: optuna.Study, procs: list[subprocess.Popen[bytes]]) -> None:
    """Print each trial as it ends and each worker that exits, until every worker has exited.
    When the last worker has gone with trials still running (all workers died), wait out the
    heartbeat's grace and fail them, as a worker would have."""
    import optuna
    from optuna.trial import TrialState

    from atelier.training.tune.study import FINISHED

    reported: set[int] = set()
    exited: set[int] = set()
    while True:
        for t in study.get_trials(deepcopy=False, states=FINISHED):
            if t.number in reported:
                continue
            reported.add(t.number)
            value = "-" if t.value is None else f"{t.value:.4f}"
            why = t.user_attrs.get("error")
            if t.state == TrialState.FAIL and why is None:
                why = "its worker stopped sending heartbeats"
            req.echo(
                f"trial {t.number} {t.state.name} val_accuracy={value} "
                f"worker={t.user_attrs.get('worker', '-')} "
                f"{t.user_attrs.get('seconds', '-')}s" + (f"  ({why})" if why else "")
            )
        for i, p in enumerate(procs):
            code = p.poll()
            if code is not None and i not in exited:
                exited.add(i)
                if code != 0:
                    req.echo(f"worker {i} exited with {_signal_name(code)}")
        if len(exited) == len(procs):
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            grace = req.space.heartbeat.grace
            time.sleep(grace + 1)
            optuna.storages.fail_stale_trials(study)
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                continue
            return
        time.sleep(1.0)


# --- a study shared by pods: prepared once, reported by whichever worker pod ends


def masked_url(url: str) -> str:
    """The storage URL without its password, for logs and summary.json."""
    import sqlalchemy

    try:
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable storage URL>"


def prepare_study(req: TuneRequest, wait_seconds: float = 300.0) -> tuple[optuna.Study, bool]:
    """Create the study with its settings and its ``req.trials`` WAITING trials unless it
    exists: (the study, whether this call created it). Idempotent and safe to run at once in
    every pod of a Job: the storage's unique study name lets one caller create it; the others
    wait until it holds all its trials (the creator enqueues them right after creating it) and
    check that its settings are the ones asked for. Starts no worker."""
    check_request(req, fresh_out=False)
    import optuna

    from atelier.training.tune.study import (
        TRIALS_ATTR,
        StudySettings,
        create_study,
        open_storage,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if req.storage is None:
        req.out.mkdir(parents=True, exist_ok=True)  # the default SQLite study lives there
    for attempt in range(3):  # pods that start at once race to create Optuna's tables
        try:
            storage = open_storage(req.storage_url, req.space.heartbeat)
            break
        except ConfigError:
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)
    settings = StudySettings(req.base, req.space, req.folds, req.trials)
    name = req.study_name
    if name not in {s.study_name for s in storage.get_all_studies()}:
        try:
            return create_study(storage, name, settings), True
        except (optuna.exceptions.DuplicatedStudyError, ConfigError):
            pass  # another pod created it between the look and the create
    study = optuna.load_study(study_name=name, storage=storage)
    deadline = time.monotonic() + wait_seconds
    while True:
        # The creator records the settings (the trial count last), then enqueues the trials.
        want = study.user_attrs.get(TRIALS_ATTR)
        have = len(study.get_trials(deepcopy=False))
        if want is not None and have >= want:
            break
        if time.monotonic() > deadline:
            raise ConfigError(
                f"--study {name}: exists in {masked_url(req.storage_url)} with {have} of its "
                f"{want if want is not None else '?'} trials after {wait_seconds:.0f} s (its "
                "creator stopped before it had enqueued them)",
                hint="delete the study (optuna delete-study) or pick another --study",
            )
        time.sleep(1.0)
    _check_same_settings(study, settings)
    return study, False


def _check_same_settings(study: optuna.Study, asked: StudySettings) -> None:
    from atelier.training.tune.study import read_settings

    have = read_settings(study)
    differ = [
        label
        for label, a, b in (
            (
                "the base config",
                have.base.model_dump(mode="json"),
                asked.base.model_dump(mode="json"),
            ),
            (
                "the search space",
                have.space.model_dump(mode="json"),
                asked.space.model_dump(mode="json"),
            ),
            ("--folds", have.folds, asked.folds),
            ("--trials", have.trials, asked.trials),
        )
        if a != b
    ]
    if differ:
        raise ConfigError(
            f"--study {study.study_name}: exists with other settings ({', '.join(differ)} differ)",
            hint="pick another --study for the new settings",
        )


def report_study(storage_url: str, study_name: str, out: Path) -> Path:
    """Write best.yaml, summary.json and the plots of a finished study into ``out``; the path
    of best.yaml. Several pods may report the same study at once: a lock on ``out`` takes
    them one at a time, and each writes the same files."""
    import fcntl

    import optuna

    from atelier.training.tune import report
    from atelier.training.tune.study import FINISHED, counts, open_storage, read_settings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as exc:
        raise ConfigError(
            f"--study {study_name}: no such study in {masked_url(storage_url)}"
        ) from exc
    settings = read_settings(study)
    trials = study.get_trials(deepcopy=False)
    left = [t for t in trials if t.state not in FINISHED]
    if left:
        raise TuningError(f"study {study_name}: {len(left)} of {len(trials)} trials not finished")
    c = counts(trials)
    if c["COMPLETE"] == 0:
        raise TuningError(
            f"study {study_name}: no trial completed ({c['PRUNED']} pruned, {c['FAIL']} failed)"
        )
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".report.lock").open("w") as lock, warnings.catch_warnings():
        fcntl.flock(lock, fcntl.LOCK_EX)
        # The log is best.yaml alone (`kubectl logs ... > best.yaml`): no plotting warnings.
        warnings.simplefilter("ignore")
        skipped = report.write_plots(out, study)
        report.write_summary(
            out,
            study,
            {
                "storage": masked_url(storage_url),
                "folds": settings.folds,
                "requested_trials": settings.trials,
                "plots_skipped": skipped,
            },
        )
        best = report.write_best_config(out, study, settings.base)
        # Tracked (the chart's tune Job): the first report ends the parent run that
        # `--prepare-only` opened, with these results. Messages go to stderr: stdout is
        # best.yaml alone.
        from atelier.training.tune.tracking import close_prepared_study_run

        close_prepared_study_run(study, out, lambda line: print(line, file=sys.stderr))
        return best
