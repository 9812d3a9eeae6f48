"""The study every worker shares: Optuna's RDB storage (SQLite locally, PostgreSQL on a
cluster), and a queue of exactly --trials trials.

`atelier tune` creates the study, stores what a worker needs in the study's user attributes
(the base config, the search space, the folds) and enqueues one WAITING trial per requested
trial. A worker claims a WAITING trial atomically (WAITING -> RUNNING in the storage) and never
creates one, so the study ends with exactly the requested number of trials, however many
workers run and whichever of them dies. A dead worker's trial is failed through Optuna's
heartbeat, and counts as one of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from atelier.runtime.errors import ConfigError
from atelier.training.config import TrainConfig
from atelier.training.tune.space import HeartbeatSettings, SearchSpace

# Optuna marks the heartbeat, fail_stale_trials, TPE's constant_liar and the matplotlib plots
# experimental; atelier pins the version, so the warnings say nothing to a user.
warnings.filterwarnings("ignore", category=ExperimentalWarning)

BASE_CONFIG_ATTR = "atelier_base_config"
SPACE_ATTR = "atelier_space"
FOLDS_ATTR = "atelier_folds"
TRIALS_ATTR = "atelier_trials"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def open_storage(
    url: str,
    heartbeat: HeartbeatSettings | None = None,
    failed_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, with the heartbeat when settings are given
    (``failed_trial_callback`` hears of every trial the heartbeat fails)."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Workers write at once: wait for SQLite's lock rather than fail.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat.interval_seconds if heartbeat else None,
            grace_period=heartbeat.grace if heartbeat else None,
            heartbeat_stale_trial_callback=failed_trial_callback if heartbeat else None,
        )
    except Exception as exc:  # sqlalchemy: bad URL, driver missing, server unreachable
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--storage {url}: cannot open the study storage: {first}",
            hint="a SQLAlchemy URL such as sqlite:///runs/tune/study.db or "
            "postgresql+psycopg://user:pass@host/db",
        ) from exc


@dataclass(frozen=True)
class StudySettings:
    """What every worker reads from the study: one source for all of them."""

    base: TrainConfig
    space: SearchSpace
    folds: int | None
    trials: int


def create_study(
    storage: optuna.storages.RDBStorage, name: str, settings: StudySettings
) -> optuna.Study:
    """Create the study (it must not exist), record its settings and enqueue its trials."""
    if name in {s.study_name for s in storage.get_all_studies()}:
        raise ConfigError(
            f"--study {name}: a study of that name already exists in {storage.url}",
            hint="pick another --study or a new --out",
        )
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(BASE_CONFIG_ATTR, settings.base.model_dump(mode="json"))
    study.set_user_attr(SPACE_ATTR, settings.space.model_dump(mode="json"))
    study.set_user_attr(FOLDS_ATTR, settings.folds)
    study.set_user_attr(TRIALS_ATTR, settings.trials)
    for _ in range(settings.trials):
        study.enqueue_trial({})
    return study


def read_settings(study: optuna.Study) -> StudySettings:
    attrs = study.user_attrs
    if BASE_CONFIG_ATTR not in attrs:
        raise ConfigError(
            f"study {study.study_name} was not created by `atelier tune` (no base config)"
        )
    return StudySettings(
        base=TrainConfig.model_validate(attrs[BASE_CONFIG_ATTR]),
        space=SearchSpace.model_validate(attrs[SPACE_ATTR]),
        folds=attrs[FOLDS_ATTR],
        trials=attrs[TRIALS_ATTR],
    )


def make_sampler(space: SearchSpace, worker_index: int) -> optuna.samplers.BaseSampler:
    s = space.sampler
    seed = None if s.seed is None else s.seed + worker_index
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=s.n_startup_trials,
        multivariate=s.multivariate,
        constant_liar=s.constant_liar,
    )


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    p = space.pruner
    if p.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
    )


def counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    out = {s.name: 0 for s in TrialState}
    for t in trials:
        out[t.state.name] += 1
    return out
