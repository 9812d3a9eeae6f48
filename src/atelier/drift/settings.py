"""The drift sidecar's one typed settings object, from ATELIER_DRIFT_* env vars and flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from atelier.drift.report import DriftMethods
from atelier.runtime.errors import ConfigError


class DriftSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ATELIER_DRIFT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    spool_dir: Path = Path("runs/spool")
    store: Path = Path("model-store")
    state_dir: Path = Path("runs/drift/state")
    reports_dir: Path = Path("runs/drift/reports")
    host: str = "127.0.0.1"
    port: int = Field(8095, ge=1, le=65535)

    window_short: int = Field(1000, ge=10)
    window_long: int = Field(10_000, ge=10)
    reservoir: int = Field(10_000, ge=100)
    min_rows: int = Field(100, ge=10)

    report_every_records: int = Field(1000, ge=1)
    report_every_seconds: float = Field(60.0, gt=0)
    report_html: bool = True
    retention: int = Field(20, ge=1)
    poll_interval_s: float = Field(0.5, gt=0)

    # Drift methods and thresholds, pinned so results are comparable run to run: the
    # report's own typed model (ATELIER_DRIFT_METHODS__NUMERIC_METHOD=wasserstein, ...).
    methods: DriftMethods = Field(default_factory=DriftMethods)
    # Live accuracy below the reference accuracy, in percentage points.
    accuracy_warning_points: float = Field(5.0, gt=0)
    accuracy_critical_points: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> DriftSettings:
        if self.window_long < self.window_short:
            raise ValueError("window_long must be >= window_short")
        if self.accuracy_critical_points < self.accuracy_warning_points:
            raise ValueError("accuracy_critical_points must be >= accuracy_warning_points")
        return self

    @property
    def windows(self) -> dict[str, int]:
        return {
            f"last_{self.window_short}": self.window_short,
            f"last_{self.window_long}": self.window_long,
        }


def load_settings(**overrides: object) -> DriftSettings:
    """Env vars, then explicit overrides (flags); a bad value names the setting."""
    try:
        return DriftSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "settings"
        env = "ATELIER_DRIFT_" + "__".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(f"drift setting {key} ({env}): {first['msg']}") from exc
