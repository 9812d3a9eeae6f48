"""The drift methods and thresholds: a settings model, kept apart from `atelier.drift.report`.

Every sidecar validates these at start, but only the reporter runs reports; this module
imports pydantic only, so a sidecar that ships and never reports does not load pandas,
scipy or Evidently.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

NUMERIC_DEFAULT_THRESHOLD = {"ks": 0.05, "wasserstein": 0.1}
CLASS_DEFAULT_THRESHOLD = {"jensenshannon": 0.1, "psi": 0.2}


class DriftMethods(BaseModel):
    """Pinned per-column methods and thresholds, plus the grading of our own statistics.

    ``numeric_threshold`` and ``class_threshold`` default by method when left out:
    ks 0.05 (p-value, drift when p <= it), wasserstein 0.1 (normed distance, drift when
    >= it), jensenshannon 0.1 and psi 0.2 (distances, drift when >= it).
    """

    model_config = ConfigDict(extra="forbid")

    numeric_method: Literal["ks", "wasserstein"] = "ks"
    numeric_threshold: float = Field(default=None, validate_default=True, gt=0)
    class_method: Literal["jensenshannon", "psi"] = "jensenshannon"
    class_threshold: float = Field(default=None, validate_default=True, gt=0)
    drift_share_threshold: float = Field(default=0.5, gt=0, le=1)
    # 4, not 3: every report tests three statistics over two or three windows, many times
    # while an alert's `for` runs; at |z| >= 3 one clean window in about 1,000 of 300-1,000
    # rows was a warning (measured on the smoke model), at 4 none in 2,000.
    confidence_z_warning: float = Field(default=4.0, gt=0)
    confidence_z_critical: float = Field(default=6.0, gt=0)
    # ...and the mean confidence must also have moved this much (absolute, 0..1).
    confidence_shift_warning: float = Field(default=0.02, gt=0, le=1)
    confidence_shift_critical: float = Field(default=0.05, gt=0, le=1)
    class_js_warning: float = Field(default=0.1, gt=0, le=1)
    class_js_critical: float = Field(default=0.2, gt=0, le=1)
    # The class mix is graded only when its chi-square test of homogeneity has p <= this.
    class_alpha: float = Field(default=0.001, gt=0, lt=1)

    @field_validator("numeric_threshold", mode="before")
    @classmethod
    def _numeric_default(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return NUMERIC_DEFAULT_THRESHOLD.get(info.data.get("numeric_method", "ks"), 0.05)
        return value

    @field_validator("class_threshold", mode="before")
    @classmethod
    def _class_default(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return CLASS_DEFAULT_THRESHOLD.get(info.data.get("class_method", "jensenshannon"), 0.1)
        return value

    @field_validator("confidence_z_critical", "class_js_critical", "confidence_shift_critical")
    @classmethod
    def _critical_above_warning(cls, value: float, info: ValidationInfo) -> float:
        name = info.field_name or ""
        warning = info.data.get(name.replace("_critical", "_warning"))
        if warning is not None and value < warning:
            raise ValueError(f"{name} must be >= {name.replace('_critical', '_warning')}")
        return value
