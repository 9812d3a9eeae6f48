"""The drift sidecar's one typed settings object, from ATELIER_DRIFT_* env vars and flags.

Each field is declared once, here: its env var comes from pydantic-settings (prefix
ATELIER_DRIFT_, ``__`` into nested models) and its flag from ``flag_parser`` (the field name
in kebab case, a nested model's fields after a dot: ``--report-every-records``,
``--methods.numeric-method``). Flags override env vars.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from atelier.drift.methods import DriftMethods
from atelier.runtime.errors import ConfigError


class DriftSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ATELIER_DRIFT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    spool_dir: Path = Path("runs/spool")
    store: Path = Path("model-store")
    state_dir: Path = Path("runs/drift/state")
    host: str = "127.0.0.1"
    port: int = Field(8095, ge=1, le=65535)

    # The inference log every replica's sidecar shares (SQLAlchemy URL): SQLite for one
    # replica, postgresql+psycopg://user@host:5432/db for several. The password may come
    # separately (a Secret): it is put into the URL when the URL has none.
    database_url: str = "sqlite:///runs/drift/inference-log.db"
    database_password: SecretStr | None = None
    # Who this sidecar is: recorded with every record it ships, and its reporter identity.
    # None: the host name (a pod's name in Kubernetes).
    pod_name: str | None = Field(None, min_length=1, max_length=253)
    # The reporter lease: renewed every second; another sidecar takes over at most this long
    # after the reporter stops renewing it.
    reporter_lease_s: float = Field(15.0, ge=2, le=600)
    # Feedback for a prediction not shipped yet is kept this long, then dropped.
    label_wait_s: float = Field(600.0, ge=0)
    # How long /feedback waits for every replica to have shipped before it says 404.
    feedback_settle_s: float = Field(3.0, ge=0, le=30)
    # Retention of the log (pruned by the reporter every prune_every_s).
    retention_days: float = Field(30.0, gt=0)
    retention_rows: int = Field(1_000_000, ge=10_000)
    prune_every_s: float = Field(600.0, gt=0)
    ship_batch: int = Field(5000, ge=1, le=100_000)
    # A version that is not the store's current one and got no record for this long is
    # retired: the reporter stops exporting its gauges (so its alerts resolve).
    retire_after_s: float = Field(3600.0, gt=0)

    window_short: int = Field(1000, ge=10)
    window_long: int = Field(10_000, ge=10)
    reservoir: int = Field(10_000, ge=100)
    min_rows: int = Field(100, ge=10)

    report_every_records: int = Field(1000, ge=1)
    report_every_seconds: float = Field(60.0, gt=0)
    report_html: bool = True
    # Reports kept per model version and window.
    retention: int = Field(20, ge=1)
    poll_interval_s: float = Field(0.5, gt=0)
    # POST /ingest bodies above this many bytes are refused (413) before they are parsed.
    ingest_max_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)

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
    def database(self) -> str:
        """The database URL with the password in it (never log this; see `redacted`)."""
        from atelier.drift.inference_log import database_url

        pw = self.database_password.get_secret_value() if self.database_password else None
        return database_url(self.database_url, pw)

    @property
    def windows(self) -> dict[str, int]:
        return {
            f"last_{self.window_short}": self.window_short,
            f"last_{self.window_long}": self.window_long,
        }


ENV_PREFIX = "ATELIER_DRIFT_"


def flag_name(*path: str) -> str:
    """``("methods", "numeric_method")`` -> ``--methods.numeric-method``."""
    return "--" + ".".join(p.replace("_", "-") for p in path)


def env_name(*path: str) -> str:
    return ENV_PREFIX + "__".join(path).upper()


def setting_paths(model: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every settable field, a nested model's fields one by one."""
    out: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += setting_paths(sub, (*path, name))
        else:
            out.append((*path, name))
    return out


def default_of(path: tuple[str, ...]) -> object:
    model: type[BaseModel] = DriftSettings
    for name in path[:-1]:
        model = model.model_fields[name].annotation  # type: ignore[assignment]
    return model.model_fields[path[-1]].default


def flag_parser() -> argparse.ArgumentParser:
    """One flag per DriftSettings field; values stay text until the model validates them."""
    p = argparse.ArgumentParser(
        prog="atelier drift",
        description="The drift sidecar. Every flag has an env var (shown); flags win.",
        allow_abbrev=False,
    )
    for path in setting_paths(DriftSettings):
        default = default_of(path)
        shown = "by method" if default is None else default
        help_text = f"{env_name(*path)} (default: {shown})"
        if isinstance(default, bool):
            p.add_argument(flag_name(*path), dest="__".join(path), help=help_text,
                           action=argparse.BooleanOptionalAction, default=None)  # fmt: skip
        else:
            p.add_argument(flag_name(*path), dest="__".join(path), help=help_text,
                           metavar=path[-1].upper())  # fmt: skip
    return p


def parse_flags(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The flags given, as DriftSettings keyword arguments (nested models as dicts).

    An unknown flag or a flag without its value exits with status 2 (argparse's message)."""
    ns = flag_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for dest, value in vars(ns).items():
        if value is None:
            continue
        *parents, leaf = dest.split("__")
        target = overrides
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = value
    return overrides


def load_settings(**overrides: object) -> DriftSettings:
    """Env vars, then explicit overrides (flags); a bad value names the setting, its flag,
    its env var and the value."""
    try:
        return DriftSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        key = ".".join(loc) or "settings"
        names = f"{flag_name(*loc)}, {env_name(*loc)}" if loc else ENV_PREFIX + "*"
        got = first.get("input")
        got_text = f", got {got!r}" if loc and isinstance(got, str | int | float) else ""
        msg = str(first["msg"]).removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"drift setting {key} ({names}): {msg}{got_text}{more}") from exc


def from_args(argv: Sequence[str] | None = None) -> DriftSettings:
    """The settings from env vars and ``argv``'s flags."""
    return load_settings(**parse_flags(argv))
