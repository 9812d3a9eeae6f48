"""The search space of `atelier tune`: one typed model, read from YAML, checked against the
training config it varies.

Every parameter is named by its training config path (``optim.lr``), so a trial's config is
the base config with those keys set, and the best one is a training YAML as it stands. An
unknown key, a wrong type or a value the training config would refuse is a ConfigError that
names the parameter.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from atelier.runtime.errors import ConfigError
from atelier.training.config import TrainConfig, _describe

if typing.TYPE_CHECKING:
    import optuna

DEFAULT_SPACE = Path(__file__).resolve().parent / "default_space.yaml"

# Sections a trial may vary: what is learned and how. The data stay fixed so trials compare
# on the same images; gate, robustness and serving do not change the model.
SEARCHABLE_SECTIONS = ("augment", "model", "optim", "train")
# Set by `atelier tune` itself (cores / workers).
NOT_SEARCHABLE = ("train.threads",)

Choice = bool | int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Param(_Strict):
    # Sample this parameter only when the earlier categorical parameters have these values
    # (e.g. optim.momentum only for optim.name sgd); otherwise the base config's value holds.
    when: dict[str, Choice] | None = None


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> CategoricalParam:
        if len({repr(c) for c in self.choices}) != len(self.choices):
            raise ValueError("choices must be unique")
        return self


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low {low} is above high {high}")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got {low}")
    if log and step is not None:
        raise ValueError("step and log cannot be combined")


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]  # noqa: UP007


class SamplerSettings(_Strict):
    name: Literal["tpe", "random"] = "tpe"
    # Worker i samples with seed + i (workers with one seed would propose the same points).
    seed: int | None = 0
    # TPE: random trials before the model takes over (Optuna's default).
    n_startup_trials: int = Field(10, ge=0)
    multivariate: bool = False
    # TPE with parallel workers: treat running trials as bad so workers spread out.
    constant_liar: bool = True


class PrunerSettings(_Strict):
    name: Literal["median", "none"] = "median"
    # Median pruner: no pruning before this many trials completed, nor before this step.
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)


class HeartbeatSettings(_Strict):
    """Optuna's heartbeat: a worker records one every interval while its trial runs; a
    running trial without one for grace_seconds is failed (its worker died)."""

    interval_seconds: int = Field(10, ge=1, le=3600)
    grace_seconds: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _grace(self) -> HeartbeatSettings:
        if self.grace_seconds is not None and self.grace_seconds <= self.interval_seconds:
            raise ValueError("grace_seconds must be longer than interval_seconds")
        return self

    @property
    def grace(self) -> int:
        return self.grace_seconds or 2 * self.interval_seconds


class SearchSpace(_Strict):
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)
    pruner: PrunerSettings = Field(default_factory=PrunerSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    params: dict[str, Param] = Field(min_length=1)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample this trial's values, keyed by config path (skipping unmet ``when``s)."""
        values: dict[str, Any] = {}
        for path, p in self.params.items():
            if p.when and any(values.get(k) != v for k, v in p.when.items()):
                continue
            if isinstance(p, FloatParam):
                values[path] = trial.suggest_float(path, p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                values[path] = trial.suggest_int(path, p.low, p.high, log=p.log, step=p.step)
            else:
                values[path] = trial.suggest_categorical(path, p.choices)
        return values


def load_space(path: Path | None) -> SearchSpace:
    """Read and validate a search space file (the packaged default when path is None)."""
    path = path or DEFAULT_SPACE
    if not path.is_file():
        raise ConfigError(f"search space {path} does not exist", hint="see docs/tune.md")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (sampler, pruner, params)")
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path))) from exc


def _field_annotation(path: str) -> Any:
    """The annotation of a training config leaf, or a ConfigError naming the path."""
    parts = path.split(".")
    model: type[BaseModel] = TrainConfig
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                f"params.{path}: {where} is not a training config key",
                hint="name a key of the training config, see training-job/README.md",
            )
        ann = field.annotation
        last = i == len(parts) - 1
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        if last and is_section:
            raise ConfigError(f"params.{path}: is a section; name one of its keys")
        if not last and not is_section:
            raise ConfigError(f"params.{path}: {'.'.join(parts[: i + 1])} is not a section")
        if is_section:
            model = ann  # type: ignore[assignment]
    return ann


def _kinds(annotation: Any) -> set[type]:
    """The Python types a config field takes, without None (int | None -> {int})."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        out: set[type] = set()
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                out |= _kinds(arg)
        return out
    if origin is Literal:
        return {type(a) for a in typing.get_args(annotation)} | {Literal}
    return {annotation} if isinstance(annotation, type) else {object}


def apply_params(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """The base config with each ``path: value`` set; validated like a config file."""
    raw = base.model_dump(mode="json")
    for path, value in values.items():
        node = raw
        *sections, key = path.split(".")
        for part in sections:
            node = node[part]
        node[key] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "trial config")) from exc


def check_space(space: SearchSpace, base: TrainConfig, source: str) -> None:
    """Refuse a space the base config cannot take: unknown or unsearchable keys, a range type
    the key does not have, values the training config refuses, ``when`` on unknown params."""
    seen: dict[str, FloatParam | IntParam | CategoricalParam] = {}
    for path, p in space.params.items():
        where = f"{source}: params.{path}"
        try:
            ann = _field_annotation(path)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from exc
        if path.split(".")[0] not in SEARCHABLE_SECTIONS or path in NOT_SEARCHABLE:
            raise ConfigError(
                f"{where}: not searchable (searchable: keys of "
                f"{', '.join(SEARCHABLE_SECTIONS)}; not {', '.join(NOT_SEARCHABLE)})"
            )
        kinds = _kinds(ann)
        if isinstance(p, FloatParam) and not kinds & {float}:
            raise ConfigError(f"{where}: type float does not fit the key's type ({_name(ann)})")
        if isinstance(p, IntParam) and not kinds & {int, float}:
            raise ConfigError(f"{where}: type int does not fit the key's type ({_name(ann)})")
        if isinstance(p, IntParam | FloatParam) and kinds & {Literal, bool}:
            raise ConfigError(f"{where}: the key takes fixed values; use type categorical")
        candidates = p.choices if isinstance(p, CategoricalParam) else [p.low, p.high]
        for value in candidates:
            try:
                apply_params(base, {path: value})
            except ConfigError as exc:
                inner = exc.message.removeprefix("trial config: ")
                raise ConfigError(f"{where}: value {value!r} is refused: {inner}") from exc
        for key, wanted in (p.when or {}).items():
            cond = seen.get(key)
            if not isinstance(cond, CategoricalParam):
                raise ConfigError(
                    f"{where}: when.{key}: not a categorical parameter listed before this one"
                )
            if wanted not in cond.choices:
                raise ConfigError(f"{where}: when.{key}: {wanted!r} is not one of its choices")
        seen[path] = p
    augmenting = [p for p in space.params if p.startswith("augment.") and p != "augment.enabled"]
    if augmenting and not base.augment.enabled and "augment.enabled" not in space.params:
        raise ConfigError(
            f"{source}: params.{augmenting[0]}: has no effect, the base config has "
            "augment.enabled: false",
            hint="set augment.enabled: true in the base config, or search augment.enabled",
        )


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
