"""The serving runtime's one typed settings object, from ``ATELIER_*`` env vars.

Both serving processes read it once, before the model is loaded: a TorchServe worker (the
handler's ``initialize``) and the KServe runtime (``python -m atelier.serving.kserve_runtime``).
A bad value stops the load with a ``ConfigError`` whose message names the variable, the value
and the allowed range; TorchServe writes it in the worker's traceback, the KServe runtime
exits with it (status 2).

Only the standard library is imported: this module ships inside the .mar. Each field's env
var, bounds and description live in its ``metadata`` (``ENV``, ``MIN``, ``MAX``, ``DOC``),
from which ``handlers/README.md``'s table is checked.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atelier.runtime.errors import ConfigError
from atelier.runtime.protocol import Limits
from atelier.runtime.records import MAX_IMAGES_PER_REQUEST, FeatureSpool

ENV, MIN, MAX, DOC = "env", "min", "max", "doc"
MiB = 1024 * 1024


def _meta(env: str, doc: str, lo: int | None = None, hi: int | None = None) -> dict[str, Any]:
    return {ENV: env, MIN: lo, MAX: hi, DOC: doc}


@dataclass(frozen=True)
class ServingSettings:
    """What a serving process reads from its environment; checked when it is made."""

    spool_dir: Path | None = field(default=None, metadata=_meta(
        "ATELIER_SPOOL_DIR",
        "folder of the feature spool the drift sidecar reads; unset or empty: no spool",
    ))  # fmt: skip
    spool_max_bytes: int = field(default=50_000_000, metadata=_meta(
        "ATELIER_SPOOL_MAX_BYTES",
        "a worker's spool file is rotated (to `.1`, `.2`, ...) past this many bytes",
        lo=1024, hi=10**10,
    ))  # fmt: skip
    spool_backups: int = field(default=5, metadata=_meta(
        "ATELIER_SPOOL_BACKUPS", "rotated spool files kept per worker", lo=1, hi=1000,
    ))  # fmt: skip
    spool_input_sample_percent: int = field(default=0, metadata=_meta(
        "ATELIER_SPOOL_INPUT_SAMPLE_PERCENT",
        "share of requests (0-100 %) whose preprocessed images go into the spool records, "
        "and so into the inference log, as retraining material",
        lo=0, hi=100,
    ))  # fmt: skip
    max_instances: int = field(default=Limits.max_instances, metadata=_meta(
        "ATELIER_MAX_INSTANCES",
        "images in one request (v1 instances, v2 batch); more: 400 `too_many_instances`",
        lo=1, hi=MAX_IMAGES_PER_REQUEST,
    ))  # fmt: skip
    max_payload_bytes: int = field(default=Limits.max_payload_bytes, metadata=_meta(
        "ATELIER_MAX_PAYLOAD_BYTES",
        "request body size; larger: 413 `payload_too_large` (keep it below TorchServe's "
        "`max_request_size`, 8 MiB, or TorchServe answers its own bare 413)",
        lo=1024, hi=64 * MiB,
    ))  # fmt: skip
    default_top_k: int = field(default=Limits.default_top_k, metadata=_meta(
        "ATELIER_DEFAULT_TOP_K",
        "classes `top_k` lists when the request has no `X-Top-K` (at most the model's classes)",
        lo=1, hi=1000,
    ))  # fmt: skip

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            lo, hi = f.metadata[MIN], f.metadata[MAX]
            value = getattr(self, f.name)
            if isinstance(value, int) and not (lo <= value <= hi):
                raise _bad(f, value, f"must be between {lo} and {hi}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        """The settings from ``env`` (default: ``os.environ``); unset or empty: the default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata[ENV], "").strip()
            if not raw:
                continue
            if f.name == "spool_dir":
                values[f.name] = Path(raw)
                continue
            try:
                values[f.name] = int(raw)
            except ValueError:
                raise _bad(f, raw, "is not a whole number") from None
        return cls(**values)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_instances, self.max_payload_bytes, self.default_top_k)

    def open_spool(self) -> FeatureSpool | None:
        """The feature spool, or None without ``spool_dir``. A folder that cannot be written
        does not stop the model: the spool is best effort for serving (it counts and logs
        its failures, and retries the folder; see FeatureSpool)."""
        if self.spool_dir is None:
            return None
        return FeatureSpool(self.spool_dir, self.spool_max_bytes, self.spool_backups)


def env_vars() -> dict[str, dataclasses.Field[Any]]:
    """Env var name -> the field it sets (for docs and tests)."""
    return {f.metadata[ENV]: f for f in dataclasses.fields(ServingSettings)}


def _bad(f: dataclasses.Field[Any], value: object, problem: str) -> ConfigError:
    return ConfigError(
        f"serving setting {f.metadata[ENV]}={str(value)!r} {problem}: {f.metadata[DOC]}"
    )
