"""The training configuration: one typed model, read from YAML, overridden with --set.

An unknown key or a value of the wrong type is a ConfigError that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from atelier.runtime.errors import ConfigError

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    source: Literal["fashion-mnist", "folder"] = "fashion-mnist"
    path: Path = DEFAULT_FASHION_MNIST_DIR
    image_size: int = Field(28, ge=8, le=256)
    channels: Literal[1, 3] = 1
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    # An image folder has no test split of its own; this share of it becomes one.
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    # Stratified subsets, for smoke runs. None means all.
    train_limit: int | None = Field(None, ge=20)
    test_limit: int | None = Field(None, ge=10)
    on_unreadable: Literal["skip", "error"] = "skip"


class AugmentConfig(_Strict):
    enabled: bool = True
    probability: float = Field(0.5, ge=0.0, le=1.0)
    min_crop_scale: float = Field(0.8, gt=0.1, le=1.0)
    max_rotation_degrees: float = Field(10.0, ge=0.0, le=45.0)


class ModelConfig(_Strict):
    arch: Literal["compact", "standard"] = "standard"
    dropout: float = Field(0.25, ge=0.0, lt=1.0)


class OptimConfig(_Strict):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["constant", "cosine", "onecycle", "step"] = "onecycle"
    step_size: int = Field(5, ge=1)
    gamma: float = Field(0.5, gt=0.0, le=1.0)


class TrainSection(_Strict):
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=8192)
    eval_batch_size: int = Field(1000, ge=1)
    seed: int = 0
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)
    threads: int | None = Field(None, ge=1)
    # Stop (and evaluate what is best so far) once this much training time has passed.
    time_budget_seconds: float | None = Field(None, gt=0)


class GateConfig(_Strict):
    min_accuracy: float = Field(0.0, ge=0.0, le=1.0)


class RobustnessConfig(_Strict):
    noise_sigma: float = Field(0.3, ge=0.0)
    brightness_shift: float = Field(0.3, ge=-1.0, le=1.0)


class ArchiveDefaults(_Strict):
    """How the model is served; rendered into config.properties by `atelier archive`."""

    batch_size: int = Field(8, ge=1, le=512)
    max_batch_delay_ms: int = Field(2, ge=0, le=10_000)
    min_workers: int = Field(2, ge=1, le=64)
    max_workers: int = Field(2, ge=1, le=64)
    response_timeout_s: int = Field(60, ge=1, le=3600)

    @model_validator(mode="after")
    def _workers(self) -> ArchiveDefaults:
        if self.max_workers < self.min_workers:
            raise ValueError("max_workers must be >= min_workers")
        return self


class TrainConfig(_Strict):
    name: str = Field("fashion-mnist", pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    gate: GateConfig = Field(default_factory=GateConfig)
    robustness: RobustnessConfig = Field(default_factory=RobustnessConfig)
    serving: ArchiveDefaults = Field(default_factory=ArchiveDefaults)


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    got = first.get("input")
    got_text = f", got {got!r}" if first["type"] != "extra_forbidden" and _short(got) else ""
    return f"{source}: {key}: {msg}{got_text}{extra}"


def _short(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(repr(value)) < 60


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse one ``key.sub=value`` override; the value is read as a YAML scalar."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value", hint="e.g. --set train.epochs=3")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(
            f"--set {item!r}: empty key or key part", hint="e.g. --set train.epochs=3"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        model: type[BaseModel] | None = TrainConfig
        for i, part in enumerate(parts[:-1]):
            field = model.model_fields.get(part) if model else None
            section = field.annotation if field else None
            if (
                model is not None
                and field is not None
                and not (isinstance(section, type) and issubclass(section, BaseModel))
            ):
                raise ConfigError(
                    f"--set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a section"
                )
            model = (
                section if isinstance(section, type) and issubclass(section, BaseModel) else None
            )
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {'.'.join(parts)}: {where} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults when path is None) and apply ``--set`` overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist", hint="see training-job/configs/"
            )
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        raw = loaded
    raw = apply_overrides(raw, overrides or [])
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
