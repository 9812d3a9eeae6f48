"""One drift report: Evidently's DataDriftPreset plus statistics we compute ourselves.

`run_drift` compares a window of recent per-request features (`current`) with the
reference profile saved at training time (`reference`) over `ALL_FEATURES`:
``predicted_class`` is categorical, everything else numerical. The statistical method and
threshold of every column are pinned from `DriftMethods`, so Evidently never picks one
by itself (its automatic choice depends on the sample size, and chi-square for
categoricals is not what we want to alert on).

Two statistics are computed by us, not by Evidently, because they are graded into
warning/critical and are cheap enough to compute even when Evidently is too slow:

* `confidence_zscore`: how many standard errors the mean confidence moved (Welch: the
  reference's own sampling error counts as much as the window's). It is graded together
  with the size of the move (`confidence_shift`): a level is reached only when both the
  z-score and the shift reach it. The reference profile is one sample, drawn once per
  model: its mean is off by its own error for the model's whole life, so every window is
  measured against the same offset and a significance test alone fires on some models.
* `class_distribution`: Jensen-Shannon distance (base 2, 0..1) of the predicted-class mix,
  graded only when a chi-square test of homogeneity says the two mixes really differ
  (`class_mix_p_value` <= `class_alpha`).

Why both a distance and a test for the class mix: the JS distance between two samples of
the same mix is not 0, it shrinks like sqrt((K-1)/8 * (1/n_ref + 1/n_cur)). With a
1,200-row reference and a 300-row window it averages 0.07 over 10 classes and passed the
0.1 warning on 6-7% of clean held-out windows (measured with `atelier bench drift`), which
raised DriftDetected on clean traffic. The test is what knows the sample sizes; the
distance stays the effect size a person reads.

Score directions (what "drifted" means for a column):

* ``ks``: the score is a p-value; drifted when ``p <= threshold`` (default 0.05). Lower is
  more drift. Evidently counts ``p <= threshold``; we follow it so that our drifted count
  equals Evidently's.
* ``wasserstein`` (normed by the reference std), ``jensenshannon``, ``psi``: the score is a
  distance; drifted when ``distance >= threshold``. Higher is more drift.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp

from atelier.drift.methods import DriftMethods
from atelier.runtime.errors import DriftInputError, NotEnoughDataError
from atelier.runtime.features import ALL_FEATURES

Severity = Literal["ok", "warning", "critical"]
SEVERITY_LEVEL: dict[str, int] = {"ok": 0, "warning": 1, "critical": 2}

CATEGORICAL_FEATURES: tuple[str, ...] = ("predicted_class",)
NUMERICAL_FEATURES: tuple[str, ...] = tuple(
    f for f in ALL_FEATURES if f not in CATEGORICAL_FEATURES
)
# Methods whose score is a p-value (drift when small); all others are distances.
P_VALUE_METHODS = frozenset({"ks"})

# Name under which our asymptotic KS test is registered with Evidently (see
# `_register_fast_ks`). Evidently's own "ks" calls scipy's ks_2samp with method="auto",
# which is *exact* while both samples have <= 10,000 rows: ~0.12 s per column on a 10k x 6k
# window, and DataDriftPreset computes every column three times, so > 4 s per report.
# The asymptotic p-value is indistinguishable from the exact one at these sample sizes.
EVIDENTLY_KS = "atelier_ks_asymp"


@dataclass(frozen=True)
class FeatureDrift:
    """One column: the method's score, whether it crossed the threshold, and which one."""

    score: float
    drifted: bool
    method: str
    threshold: float


@dataclass
class DriftResult:
    """Everything one report says, typed; `summary()` is its JSON-able form minus HTML."""

    drift_share: float
    drifted_count: int
    dataset_drift: bool
    per_feature: dict[str, FeatureDrift]
    rows_reference: int
    rows_current: int
    confidence_z: float
    confidence_shift: float
    confidence_severity: Severity
    class_js: float
    class_mix_p_value: float
    class_severity: Severity
    class_share_reference: list[float]
    class_share_current: list[float]
    severity: Severity
    methods: DriftMethods
    elapsed_seconds: float
    html: str | None = None
    evidently_json: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The result as plain JSON-able values, without the HTML and Evidently's snapshot."""
        return {
            "drift_share": self.drift_share,
            "drifted_count": self.drifted_count,
            "dataset_drift": self.dataset_drift,
            "per_feature": {
                name: {
                    "score": finite_or_none(fd.score),
                    "drifted": fd.drifted,
                    "method": fd.method,
                    "threshold": fd.threshold,
                }
                for name, fd in self.per_feature.items()
            },
            "rows_reference": self.rows_reference,
            "rows_current": self.rows_current,
            "confidence_z": finite_or_none(self.confidence_z),
            "confidence_shift": finite_or_none(self.confidence_shift),
            "confidence_severity": self.confidence_severity,
            "class_js": finite_or_none(self.class_js),
            "class_mix_p_value": finite_or_none(self.class_mix_p_value),
            "class_severity": self.class_severity,
            "class_share_reference": self.class_share_reference,
            "class_share_current": self.class_share_current,
            "severity": self.severity,
            "methods": self.methods.model_dump(),
            "elapsed_seconds": self.elapsed_seconds,
        }


def finite_or_none(value: float) -> float | None:
    """NaN/inf are not JSON; they become null."""
    return value if math.isfinite(value) else None


# --- Our own statistics ---------------------------------------------------------------


def confidence_zscore(reference_conf: Sequence[float], current_conf: Sequence[float]) -> float:
    """Welch's z of the mean confidence: (mean_cur - mean_ref) / sqrt(var_ref / n_ref +
    var_cur / n_cur). Negative = less confident.

    Both samples' errors count: the reference profile is a sample too (1,200 rows for the
    smoke config), and a window of 10,000 measured against it with the reference's error
    left out reads a difference of half a point of confidence as 2.6 standard errors.
    NaNs are dropped. With no spread on either side any change is infinitely significant
    (+/-inf) and no change is 0; with no data on either side it is 0.
    """
    ref = np.asarray(reference_conf, dtype=np.float64)
    cur = np.asarray(current_conf, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    cur = cur[np.isfinite(cur)]
    if ref.size == 0 or cur.size == 0:
        return 0.0
    diff = float(cur.mean() - ref.mean())
    var_ref = float(ref.var(ddof=1)) if ref.size > 1 else 0.0
    var_cur = float(cur.var(ddof=1)) if cur.size > 1 else 0.0
    se = math.sqrt(var_ref / ref.size + var_cur / cur.size)
    if se <= 0.0 or not math.isfinite(se):
        return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / se


def class_distribution(
    reference_classes: Sequence[float],
    current_classes: Sequence[float],
    num_classes: int,
) -> tuple[float, list[float], list[float]]:
    """Jensen-Shannon distance (base 2, so 0..1) between the class mixes, and both mixes
    (``num_classes`` shares each, class 0 first).

    NaNs are ignored; a value that is not a class id 0..num_classes-1 raises
    `DriftInputError` (it is not dropped: the shares would silently stop adding up to the
    traffic). Raises `ValueError` when a side has no class at all (a distance against
    nothing means nothing).
    """
    ref_counts = _class_counts(reference_classes, num_classes)
    cur_counts = _class_counts(current_classes, num_classes)
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        raise ValueError("class_distribution needs at least one valid class on each side")
    ref_share = ref_counts / ref_counts.sum()
    cur_share = cur_counts / cur_counts.sum()
    js = float(jensenshannon(ref_share, cur_share, base=2))
    return js, [float(x) for x in ref_share], [float(x) for x in cur_share]


def class_mix_p_value(
    reference_classes: Sequence[float],
    current_classes: Sequence[float],
    num_classes: int,
) -> float:
    """p-value of the chi-square test that both samples come from one class mix (1.0 when
    fewer than two classes occur at all: nothing to compare). Classes as in
    `class_distribution`."""
    table = np.stack(
        [_class_counts(reference_classes, num_classes), _class_counts(current_classes, num_classes)]
    )
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(chi2_contingency(table, correction=False)[1])


def _class_counts(classes: Sequence[float], num_classes: int) -> np.ndarray:
    if num_classes < 1:
        raise DriftInputError(f"num_classes must be at least 1, got {num_classes}")
    values = np.asarray(classes, dtype=np.float64)
    values = values[~np.isnan(values)]
    bad = values[(values != np.floor(values)) | (values < 0) | (values >= num_classes)]
    if len(bad):
        raise DriftInputError(
            f"{len(bad)} predicted classes are not class ids 0 to {num_classes - 1} "
            f"(e.g. {bad[0]:g}): the model has {num_classes} classes",
            hint="pass the served version's class count (Reference.num_classes)",
        )
    return np.bincount(values.astype(np.int64), minlength=num_classes).astype(np.float64)


def grade(value: float, warning: float, critical: float) -> Severity:
    """ok / warning / critical by the absolute value (z-scores drift both ways)."""
    magnitude = abs(value)
    if math.isnan(magnitude):
        return "ok"
    if magnitude >= critical:
        return "critical"
    if magnitude >= warning:
        return "warning"
    return "ok"


def min_severity(*levels: Severity) -> Severity:
    """The mildest of several severities: a level that every one of them reaches."""
    return min(levels, key=SEVERITY_LEVEL.__getitem__, default="ok")


def max_severity(*levels: Severity) -> Severity:
    """The worst of several severities ("ok" for none)."""
    worst: Severity = "ok"
    for level in levels:
        if SEVERITY_LEVEL[level] > SEVERITY_LEVEL[worst]:
            worst = level
    return worst


# --- Evidently --------------------------------------------------------------------------


def _fast_ks(
    reference: pd.Series, current: pd.Series, feature_type: object, threshold: float
) -> tuple[float, bool]:
    """Two-sided two-sample KS with the asymptotic p-value (see `EVIDENTLY_KS`)."""
    p_value = float(ks_2samp(reference, current, method="asymp")[1])
    return p_value, p_value <= threshold


def _register_fast_ks() -> None:
    """Register `EVIDENTLY_KS` with Evidently once (its stattest registry is global)."""
    from evidently.legacy.calculations.stattests.registry import (
        StatTest,
        _registered_stat_tests,
        register_stattest,
    )
    from evidently.legacy.core import ColumnType

    if EVIDENTLY_KS in _registered_stat_tests:
        return
    register_stattest(
        StatTest(
            name=EVIDENTLY_KS,
            display_name="K-S p_value (asymptotic)",
            allowed_feature_types=[ColumnType.Numerical],
            default_threshold=0.05,
        ),
        _fast_ks,
    )


def _evidently_method(method: str) -> str:
    return EVIDENTLY_KS if method == "ks" else method


def _prepare(frame: pd.DataFrame, name: str, min_rows: int) -> pd.DataFrame:
    """Only the feature columns, numeric, predicted_class as int; refuses short frames."""
    missing = [c for c in ALL_FEATURES if c not in frame.columns]
    if missing:
        raise DriftInputError(
            f"the {name} frame lacks feature columns {missing}",
            hint="pass frames with atelier.runtime.features.ALL_FEATURES columns",
        )
    out = frame.loc[:, list(ALL_FEATURES)].apply(pd.to_numeric, errors="coerce")
    out = out.replace([np.inf, -np.inf], np.nan).dropna()
    if len(out) < min_rows:
        raise NotEnoughDataError(
            f"the {name} window has {len(out)} usable rows, fewer than the {min_rows} needed "
            "for a drift report",
            hint="wait for more traffic or lower min_rows",
        )
    out["predicted_class"] = out["predicted_class"].round().astype(np.int64)
    return out.reset_index(drop=True)


def _per_feature(snapshot_dict: dict[str, Any], methods: DriftMethods) -> dict[str, FeatureDrift]:
    """Per-column scores from the ValueDrift metrics of a snapshot's dict()."""
    scores: dict[str, float] = {}
    for metric in snapshot_dict.get("metrics", []):
        config = metric.get("config", {})
        if str(config.get("type", "")).endswith(":ValueDrift"):
            scores[str(config["column"])] = float(metric["value"])
    out: dict[str, FeatureDrift] = {}
    for column in ALL_FEATURES:
        if column not in scores:
            raise RuntimeError(f"Evidently returned no ValueDrift for {column!r}")
        categorical = column in CATEGORICAL_FEATURES
        method = methods.class_method if categorical else methods.numeric_method
        threshold = methods.class_threshold if categorical else methods.numeric_threshold
        score = scores[column]
        if method in P_VALUE_METHODS:
            drifted = bool(score <= threshold)
        else:
            drifted = bool(score >= threshold)
        out[column] = FeatureDrift(score=score, drifted=drifted, method=method, threshold=threshold)
    return out


def json_safe(value: Any) -> Any:
    """Recursively replace NaN/inf by None so the dict is strict JSON."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def run_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    methods: DriftMethods,
    *,
    num_classes: int,
    with_html: bool = True,
    min_rows: int = 30,
) -> DriftResult:
    """Compare `current` with `reference` over ALL_FEATURES and grade the result.

    ``num_classes`` is the model's class count (`Reference.num_classes`): the class mix has
    that many shares, and a predicted class outside 0..num_classes-1 on either side is
    refused with `DriftInputError`, before Evidently runs.

    With ``with_html`` the report is Evidently's DataDriftPreset (its HTML is kept in
    ``result.html``). Without it, only the metrics the preset is made of are run
    (DriftedColumnsCount plus one ValueDrift per column), which skips the preset's
    dataset-level tables and about a third of the time; the scores are identical.

    Raises `NotEnoughDataError` when either frame has fewer than `min_rows` usable rows
    and `DriftInputError` when a feature column is missing.
    """
    # Importing Evidently takes seconds (5-6 s cold here): only when a report is run.
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    ref = _prepare(reference, "reference", min_rows)
    cur = _prepare(current, "current", min_rows)
    for name, frame in (("reference", ref), ("current", cur)):
        try:
            _class_counts(frame["predicted_class"], num_classes)
        except DriftInputError as exc:
            raise DriftInputError(f"the {name} frame: {exc.message}", hint=exc.hint) from None
    _register_fast_ks()

    columns = list(ALL_FEATURES)
    num_method = _evidently_method(methods.numeric_method)
    cat_method = methods.class_method
    per_column_method = {
        c: (cat_method if c in CATEGORICAL_FEATURES else num_method) for c in columns
    }
    per_column_threshold = {
        c: (methods.class_threshold if c in CATEGORICAL_FEATURES else methods.numeric_threshold)
        for c in columns
    }
    # The same pinned methods and thresholds, with or without the HTML preset.
    options: dict[str, Any] = {
        "columns": columns,
        "drift_share": methods.drift_share_threshold,
        "num_method": num_method,
        "cat_method": cat_method,
        "per_column_method": dict(per_column_method),
        "num_threshold": methods.numeric_threshold,
        "cat_threshold": methods.class_threshold,
        "per_column_threshold": dict(per_column_threshold),
    }
    items: list[Any]
    if with_html:
        items = [DataDriftPreset(**options)]
    else:
        items = [
            DriftedColumnsCount(**options),
            *(
                ValueDrift(column=c, method=per_column_method[c], threshold=per_column_threshold[c])
                for c in columns
            ),
        ]
    definition = DataDefinition(
        numerical_columns=list(NUMERICAL_FEATURES),
        categorical_columns=list(CATEGORICAL_FEATURES),
    )
    snapshot = Report(items).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    evidently_json = json_safe(json.loads(snapshot.json()))
    html = snapshot.get_html_str(as_iframe=False) if with_html else None

    per_feature = _per_feature(evidently_json, methods)
    drifted_count = sum(1 for fd in per_feature.values() if fd.drifted)
    drift_share = drifted_count / len(per_feature)
    dataset_drift = drift_share >= methods.drift_share_threshold

    confidence_z = confidence_zscore(ref["confidence"], cur["confidence"])
    class_js, ref_share, cur_share = class_distribution(
        ref["predicted_class"], cur["predicted_class"], num_classes
    )
    class_p = class_mix_p_value(ref["predicted_class"], cur["predicted_class"], num_classes)
    confidence_shift = float(cur["confidence"].mean() - ref["confidence"].mean())
    confidence_severity = min_severity(
        grade(confidence_z, methods.confidence_z_warning, methods.confidence_z_critical),
        grade(
            confidence_shift, methods.confidence_shift_warning, methods.confidence_shift_critical
        ),
    )
    class_severity: Severity = "ok"
    if class_p <= methods.class_alpha:
        class_severity = grade(class_js, methods.class_js_warning, methods.class_js_critical)
    severity = max_severity(
        confidence_severity, class_severity, "warning" if dataset_drift else "ok"
    )
    return DriftResult(
        drift_share=drift_share,
        drifted_count=drifted_count,
        dataset_drift=dataset_drift,
        per_feature=per_feature,
        rows_reference=len(ref),
        rows_current=len(cur),
        confidence_z=confidence_z,
        confidence_shift=confidence_shift,
        confidence_severity=confidence_severity,
        class_js=class_js,
        class_mix_p_value=class_p,
        class_severity=class_severity,
        class_share_reference=ref_share,
        class_share_current=cur_share,
        severity=severity,
        methods=methods,
        elapsed_seconds=time.perf_counter() - started,
        html=html,
        evidently_json=evidently_json,
    )
