"""Experiment tracking: every `atelier train` is one MLflow run.

Where it goes (``TrackingSettings``, flags over env vars):

- ``--tracking-uri`` / ``MLFLOW_TRACKING_URI``: an MLflow tracking server (``http://...``) or
  any store MLflow takes. Unset: a local SQLite store beside the run folder,
  ``<parent of --out>/mlflow.db`` with the artifacts in ``<parent>/mlartifacts`` (so
  ``runs/mlflow.db`` for the default ``--out runs/<name>-<time>``). MLflow's plain file store
  is deprecated; SQLite is its own default since 3.7.
- ``--experiment`` / ``MLFLOW_EXPERIMENT_NAME``: default the config's ``name``.
- ``--tracking`` / ``ATELIER_TRACKING``: ``required`` (default: a store that does not answer
  when the run starts stops training with one line naming the URI and the fix), ``optional``
  (train anyway and say that nothing is tracked), ``off``.

What a run holds: the resolved config flattened into params (``optim.lr``, ...); per epoch
(step = epoch) train/val loss and accuracy, learning rate, epoch seconds and images/s; at the
end test accuracy, per-class and weighted precision/recall/F1, robustness accuracies,
parameter count and training seconds; MLflow's system metrics (``system/*``, psutil); the
run folder's plots, metrics, reference profile, model card and config as artifacts; tags for
the git commit, the data's identity and the gate result. The run folder records the run in
``mlflow.json``, so `atelier archive` registers versions against the same run.

A run ends FINISHED only when training passed its gate and everything was logged. An error
(bad data, the gate, a crash) ends it FAILED with the error's line in the ``atelier.error``
tag; Ctrl-C or SIGTERM ends it KILLED. A tracking call that fails mid-run is retried at the
next epoch and at the end; what still cannot be logged is named in one line, and the run is
marked FAILED (``required``: non-zero exit; ``optional``: a warning).

mlflow is imported only when tracking is on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from atelier.runtime.errors import (
    AtelierError,
    ConfigError,
    TrackingError,
    TrackingUnreachableError,
)
from atelier.training.config import TrainConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

TRACKING_FILE = "mlflow.json"
LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
# The run folder's files logged as artifacts, when present.
RUN_ARTIFACTS = (
    "confusion_matrix.png",
    "training_curves.png",
    "augmentation.png",
    "metrics.json",
    "metrics.jsonl",
    "reference_profile.csv",
    "model_card.md",
    "config.yaml",
    "model_config.json",
    "data.json",
)
EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "epoch_seconds",
    "images_per_second",
)
# MLflow's HTTP client retries a refused call 7 times with a growing backoff (minutes per
# call); a training run waits at most this long per call unless MLFLOW_HTTP_REQUEST_* say
# otherwise. The probe at start does not retry.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_TAG_CHARS = 5000

Mode = Literal["required", "optional", "off"]
Say = Callable[[str], None]


class TrackingSettings(BaseSettings):
    """Where `atelier train` tracks its run; read from env vars, flags override."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    mode: Mode = Field("required", validation_alias="ATELIER_TRACKING")
    uri: str | None = Field(None, validation_alias="MLFLOW_TRACKING_URI")
    experiment: str | None = Field(
        None, validation_alias="MLFLOW_EXPERIMENT_NAME", min_length=1, max_length=500
    )
    system_metrics: bool = Field(True, validation_alias="ATELIER_TRACKING_SYSTEM_METRICS")


_NAMES = {
    "mode": "--tracking, ATELIER_TRACKING",
    "uri": "--tracking-uri, MLFLOW_TRACKING_URI",
    "experiment": "--experiment, MLFLOW_EXPERIMENT_NAME",
    "system_metrics": "ATELIER_TRACKING_SYSTEM_METRICS",
}
# Errors name a field by its env var when it came from one: both spellings lead here.
SETTING_NAMES = {**_NAMES, **{v.split(", ")[-1]: v for v in _NAMES.values()}}


def load_tracking_settings(**flags: Any) -> TrackingSettings:
    """Env vars, then the flags that were given; a bad value names the flag and variable."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        settings = TrackingSettings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "mode"
        got = first.get("input")
        got_text = f", got {got!r}" if isinstance(got, str | int | float) else ""
        raise ConfigError(
            f"tracking setting {SETTING_NAMES.get(key, key)}: {first['msg']}{got_text}"
        ) from exc
    if settings.uri is not None and not settings.uri.strip():
        settings = settings.model_copy(update={"uri": None})
    return settings


# --- pure pieces


def git_commit() -> str:
    """The checkout's commit, or "unknown" (an installed package, an image)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as MLflow params: dotted keys, values as text (None as "None")."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def config_params(cfg: TrainConfig) -> dict[str, str]:
    return flatten(cfg.model_dump(mode="json"))


_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\- ]+")


def metric_name(text: str) -> str:
    """A class name as part of a metric key: MLflow keys allow letters, digits and ``_-. /``;
    anything else (the ``/`` in ``T-shirt/top`` too) becomes ``-``."""
    return _BAD_KEY_CHARS.sub("-", text).strip("-. ") or "class"


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The end-of-run metrics MLflow gets from metrics.json."""
    out: dict[str, float] = {
        "test_accuracy": metrics["test_accuracy"],
        "best_val_accuracy": metrics["val_accuracy"],
        "params": metrics["params"],
        "train_seconds": metrics["train_seconds"],
        "epochs_run": metrics["epochs_run"],
    }
    for key, value in metrics.get("weighted", {}).items():
        out[f"test_{key}_weighted"] = value
    seen: set[str] = set()
    for name, scores in metrics.get("per_class", {}).items():
        label = metric_name(name)
        while label in seen:  # two classes that sanitise alike keep apart
            label += "_"
        seen.add(label)
        for key in ("precision", "recall", "f1"):
            out[f"test_{key}/{label}"] = scores[key]
    for name, shift in metrics.get("robustness", {}).items():
        out[f"robustness/{metric_name(name)}_accuracy"] = shift["accuracy"]
    return {k: float(v) for k, v in out.items()}


def data_digest(identity: Mapping[str, Any]) -> str:
    """One hash of what the data is (its files' digests) and how it was split."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def data_tags(identity: Mapping[str, Any]) -> dict[str, str]:
    sizes = identity.get("split", {}).get("sizes", {})
    return {
        "atelier.data.source": str(identity.get("source")),
        "atelier.data.path": str(identity.get("path")),
        "atelier.data.digest": data_digest(identity),
        "atelier.data.sizes": " ".join(f"{k}={v}" for k, v in sizes.items()),
    }


def local_store_uri(run_dir: Path) -> str:
    """The default store: SQLite beside the run folder (runs/mlflow.db for runs/<name>)."""
    return f"sqlite:///{(run_dir.resolve().parent / LOCAL_DB).as_posix()}"


def artifact_root_for(uri: str) -> str | None:
    """A SQLite store keeps its artifacts beside the database file; a server decides itself."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.is_absolute():
        db = Path.cwd() / db
    return (db.parent / LOCAL_ARTIFACTS).as_uri()


def absolute_uri(uri: str) -> str:
    """A relative SQLite path made absolute, so the run folder's record works from anywhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(Path.cwd() / uri.removeprefix('sqlite:///')).as_posix()}"
    return uri


def short_error(exc: BaseException) -> str:
    """The gist of a client error: MLflow's are long (URL, retries, the urllib3 chain)."""
    text = " ".join(str(exc).split())
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        return errno.group(0).strip()
    for marker in ("Response text:", "Response body:"):
        if marker in text:
            text = text.split(marker, 1)[1].strip()
    return text[:300] or type(exc).__name__


@contextlib.contextmanager
def env_overrides(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def quiet_mlflow() -> None:
    """MLflow and alembic log INFO lines (database migrations, ...) of their own."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(uri: str, *, fix: str) -> MlflowClient:
    """An MlflowClient whose store answered one call; TrackingUnreachableError otherwise."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    with env_overrides(PROBE_ENV):
        try:
            from mlflow import MlflowClient

            quiet_mlflow()
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as exc:
            raise TrackingUnreachableError(
                f"MLflow tracking URI {uri} does not answer: {short_error(exc)}", hint=fix
            ) from exc
    return client


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a SQLite store) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_root_for(uri)))
    except Exception:  # created meanwhile by another run
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


TRAIN_FIX = (
    "start the server or set MLFLOW_TRACKING_URI / --tracking-uri to one that answers; "
    "or train untracked with --tracking optional (ATELIER_TRACKING=optional) or --tracking off"
)


# --- the tracker the training loop talks to


class Tracker(Protocol):
    def data_loaded(self, identity: dict[str, Any]) -> None: ...

    def epoch_end(self, row: dict[str, Any]) -> None: ...

    def run_end(self, metrics: dict[str, Any], run_dir: Path) -> None: ...


@dataclass
class RunRecord:
    """``mlflow.json`` in the run folder: which MLflow run holds this training run."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    run_id: str
    status: str = "RUNNING"
    # Wall seconds spent in tracking (start, every hook, the end): `atelier bench tracking`.
    tracking_seconds: float = 0.0

    def write(self, run_dir: Path) -> None:
        tmp = run_dir / f".{TRACKING_FILE}.tmp"
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        os.replace(tmp, run_dir / TRACKING_FILE)

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord | None:
        path = run_dir / TRACKING_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a tracking record ({exc})") from exc


@dataclass
class MlflowTracker:
    """One MLflow run. Metrics that fail to send are kept and sent again later."""

    client: MlflowClient
    record: RunRecord
    run_dir: Path
    say: Say
    monitor: Any = None
    pending: list[Metric] = field(default_factory=list)
    lost: str | None = None  # the first failure since the last successful call
    seconds: float = 0.0  # time spent in the hooks and at start and end
    missing: list[str] = field(default_factory=list)  # what could not be logged at all

    @property
    def run_id(self) -> str:
        return self.record.run_id

    # -- the loop's hooks
    def data_loaded(self, identity: dict[str, Any]) -> None:
        with self._timed():
            self._data_loaded(identity)

    def epoch_end(self, row: dict[str, Any]) -> None:
        with self._timed():
            self._log_metrics(
                {k: float(row[k]) for k in EPOCH_METRICS if k in row}, step=row["epoch"]
            )

    def run_end(self, metrics: dict[str, Any], run_dir: Path) -> None:
        with self._timed():
            self._run_end(metrics, run_dir)

    # -- for callers that log more than a training run (`atelier tune`'s trial runs)
    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        """Metrics at ``step``; kept and sent again later when the store does not answer."""
        with self._timed():
            self._log_metrics(values, step)

    def set_tags(self, tags: Mapping[str, str], what: str = "tags") -> bool:
        with self._timed():
            return self._call(what, lambda: self._set_tags(tags))

    def call(self, what: str, fn: Callable[[], object]) -> bool:
        """One logging call; a failure is named once and remembered as missing."""
        with self._timed():
            return self._call(what, fn)

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    def _data_loaded(self, identity: dict[str, Any]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        tags = data_tags(identity)
        self._call("data tags", lambda: self._set_tags(tags))
        dataset = Dataset(
            name=str(identity.get("source")),
            digest=tags["atelier.data.digest"][:36],
            source_type="local",
            source=json.dumps({"path": str(identity.get("path"))}),
            profile=json.dumps(identity.get("split", {}).get("sizes", {})),
        )
        context = InputTag(key="mlflow.data.context", value="training")
        self._call(
            "dataset input",
            lambda: self.client.log_inputs(self.run_id, [DatasetInput(dataset, [context])]),
        )

    def _run_end(self, metrics: dict[str, Any], run_dir: Path) -> None:
        self._log_metrics(final_metrics(metrics), step=int(metrics.get("epochs_run", 0)))
        gate = metrics.get("gate", {})
        self._call(
            "end tags",
            lambda: self._set_tags(
                {
                    "atelier.gate": "passed" if gate.get("passed") else "failed",
                    "atelier.gate.min_accuracy": str(gate.get("min_accuracy")),
                    "atelier.stop_reason": str(metrics.get("stop_reason")),
                }
            ),
        )
        for name in RUN_ARTIFACTS:
            path = run_dir / name
            if path.is_file():
                self._call(
                    f"artifact {name}", partial(self.client.log_artifact, self.run_id, str(path))
                )

    # -- plumbing
    def _set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(
            self.run_id, tags=[RunTag(k, v[:MAX_TAG_CHARS]) for k, v in tags.items()]
        )

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, v, now, step) for k, v in values.items())
        self.flush()

    def flush(self) -> bool:
        while self.pending:
            chunk = self.pending[:1000]
            try:
                self.client.log_batch(self.run_id, metrics=chunk)
            except Exception as exc:
                self._lost(f"metrics ({len(self.pending)} values)", exc)
                return False
            del self.pending[: len(chunk)]
        self._regained()
        return True

    def _call(self, what: str, fn: Callable[[], object]) -> bool:
        """Run one logging call; a failure is named once, and remembered as missing."""
        try:
            fn()
        except Exception as exc:
            self._lost(what, exc)
            self.missing.append(f"{what} ({short_error(exc)})")
            return False
        self._regained()
        return True

    def _lost(self, what: str, exc: Exception) -> None:
        if self.lost is None:
            self.lost = what
            self.say(
                f"tracking: logging {what} to {self.record.tracking_uri} failed "
                f"({short_error(exc)}); training goes on and metrics are sent again later"
            )

    def _regained(self) -> None:
        if self.lost is not None:
            self.say(f"tracking: {self.record.tracking_uri} answers again")
            self.lost = None

    def incomplete(self) -> list[str]:
        gaps = list(self.missing)
        if self.pending:
            gaps.append(f"{len(self.pending)} metric values")
        return gaps


def _open_run(
    settings: TrackingSettings, cfg: TrainConfig, run_dir: Path, resume: bool, say: Say
) -> MlflowTracker:
    from mlflow.entities import Param, RunStatus, RunTag
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_COMMIT,
        MLFLOW_RUN_NAME,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    uri = absolute_uri(settings.uri or local_store_uri(run_dir))
    client = connect(uri, fix=TRAIN_FIX)
    previous = RunRecord.read(run_dir) if resume else None
    params = config_params(cfg)
    try:
        if previous is not None and previous.tracking_uri == uri:
            record = previous
            client.update_run(record.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            logged = client.get_run(record.run_id).data.params
            changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
            new = [Param(k, v) for k, v in params.items() if k not in logged]
            resumed = [RunTag(f"atelier.resumed.{k}", v) for k, v in changed.items()]
            client.log_batch(record.run_id, params=new[:100], tags=resumed[:100])
            say(f"tracking: resuming MLflow run {record.run_id} on {uri}")
        else:
            name = settings.experiment or cfg.name
            exp_id = ensure_experiment(client, name, uri)
            commit = git_commit()
            tags = {
                MLFLOW_RUN_NAME: run_dir.name,
                MLFLOW_SOURCE_NAME: "atelier train",
                MLFLOW_SOURCE_TYPE: "LOCAL",
                MLFLOW_USER: os.environ.get("USER", "atelier"),
                "atelier.git_commit": commit,
                "atelier.run_dir": str(run_dir.resolve()),
                "atelier.config_name": cfg.name,
                "atelier.tracking": settings.mode,
            }
            if commit != "unknown":
                tags[MLFLOW_GIT_COMMIT] = commit
            run = client.create_run(exp_id, tags=tags, run_name=run_dir.name)
            record = RunRecord(uri, exp_id, name, run.info.run_id)
            items = [Param(k, v) for k, v in params.items()]
            for start in range(0, len(items), 100):
                client.log_batch(record.run_id, params=items[start : start + 100])
    except AtelierError:
        raise
    except Exception as exc:
        raise TrackingError(
            f"MLflow tracking URI {uri} refused the run: {short_error(exc)}", hint=TRAIN_FIX
        ) from exc
    run_dir.mkdir(parents=True, exist_ok=True)
    record.status = "RUNNING"
    record.write(run_dir)
    tracker = MlflowTracker(client, record, run_dir, say)
    if settings.system_metrics:
        tracker.monitor = _system_metrics(record, resume=previous is not None, say=say)
    return tracker


def _system_metrics(record: RunRecord, resume: bool, say: Say) -> Any:
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            record.run_id, resume_logging=resume, tracking_uri=record.tracking_uri
        )
        monitor.start()
        return monitor
    except ImportError as exc:
        say(f"tracking: no system metrics ({exc}; psutil is in the train extra)")
        return None


@dataclass
class RunOutcome:
    """The MLflow status a ``with`` block ends with: FINISHED when it returns, KILLED on
    Ctrl-C or SIGTERM (as KeyboardInterrupt), FAILED on any other exception (``error``).
    It never swallows the exception."""

    status: str = "FAILED"
    error: BaseException | None = None

    def __enter__(self) -> RunOutcome:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            self.status = "FINISHED"
        else:
            self.status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.error = exc


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a Job's pod deleted, `kill`) ends the run like Ctrl-C: KILLED, not RUNNING."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def ui_hint(uri: str) -> str:
    """How to look at a store in MLflow's UI."""
    if uri.startswith("http://") or uri.startswith("https://"):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} (then http://127.0.0.1:5000)"


def _finish(tracker: MlflowTracker, status: str, error: BaseException | None, say: Say) -> str:
    """Stop the monitor, send what is pending, set the final status; returns the status."""
    from mlflow.entities import RunTag

    t0 = time.perf_counter()

    if tracker.monitor is not None:
        with contextlib.suppress(Exception):
            tracker.monitor.finish()
    tracker.flush()
    tags: list[RunTag] = []
    if error is not None:
        line = (
            error.one_line()
            if isinstance(error, AtelierError)
            else (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
        )
        kind = error.kind if isinstance(error, AtelierError) else type(error).__name__
        tags += [RunTag("atelier.error", line[:MAX_TAG_CHARS]), RunTag("atelier.error.kind", kind)]
    gaps = tracker.incomplete()
    if gaps and status == "FINISHED":
        status = "FAILED"
        tags.append(RunTag("atelier.error", f"incomplete: {'; '.join(gaps)}"[:MAX_TAG_CHARS]))
        tags.append(RunTag("atelier.error.kind", "tracking_incomplete"))
    try:
        if tags:
            tracker.client.log_batch(tracker.run_id, tags=tags)
        tracker.client.set_terminated(tracker.run_id, status)
        tracker.record.status = status
    except Exception as exc:
        gaps.append(f"its final status {status} ({short_error(exc)}): it shows RUNNING")
        tracker.record.status = "UNKNOWN"
    tracker.record.tracking_seconds = round(tracker.seconds + time.perf_counter() - t0, 3)
    with contextlib.suppress(OSError):
        tracker.record.write(tracker.run_dir)
    tracker.missing = gaps
    return status


@contextlib.contextmanager
def tracked_run(
    settings: TrackingSettings,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    say: Say = print,
) -> Iterator[MlflowTracker | None]:
    """The MLflow run around one training run; yields None when nothing is tracked."""
    if settings.mode == "off":
        yield None
        return
    t0 = time.perf_counter()
    try:
        tracker = _open_run(settings, cfg, run_dir, resume, say)
    except TrackingError as exc:
        if settings.mode != "optional":
            raise
        say(
            f"tracking: {exc.message}; training anyway (--tracking optional): "
            "nothing of this run is tracked"
        )
        yield None
        return
    tracker.seconds += time.perf_counter() - t0
    outcome = RunOutcome()
    try:
        with outcome, _sigterm_as_interrupt():
            yield tracker
    finally:
        error = outcome.error
        status = _finish(tracker, outcome.status, error, say)
        where = f"MLflow run {tracker.run_id} ({status}) in {tracker.record.tracking_uri}"
        if tracker.missing:
            message = f"{where} is incomplete: {'; '.join(tracker.missing)}"
            if error is None and settings.mode == "required":
                raise TrackingError(
                    message,
                    hint=f"the run folder {run_dir} holds everything; check the tracking "
                    "server, or use --tracking optional to accept a partial record",
                )
            say(f"tracking: {message}")
        elif error is not None:
            say(f"tracking: {where}")
