"""atelier.drift.report: Evidently with pinned methods, our own graded statistics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from atelier.drift.report import (
    EVIDENTLY_KS,
    SEVERITY_LEVEL,
    DriftInputError,
    DriftMethods,
    NotEnoughDataError,
    class_distribution,
    class_mix_p_value,
    confidence_zscore,
    grade,
    max_severity,
    min_severity,
    run_drift,
)
from atelier.runtime.features import ALL_FEATURES

pytestmark = pytest.mark.unit

K = 10  # classes of the synthetic frames below (Fashion-MNIST's count)


def synth(
    n: int,
    seed: int,
    *,
    brightness_shift: float = 0.0,
    confidence_drop: float = 0.0,
    class_probs: list[float] | None = None,
    num_classes: int = K,
) -> pd.DataFrame:
    """Feature rows shaped like Fashion-MNIST's: correlated image statistics, a confident
    classifier. Brightness drives contrast, ink and edges, as it does on real images."""
    rng = np.random.default_rng(seed)
    brightness = np.clip(rng.beta(2.0, 5.0, n) + brightness_shift, 0.0, 1.0)
    contrast = np.clip(0.15 + 0.6 * brightness + rng.normal(0, 0.03, n), 0.0, 1.0)
    ink = np.clip(0.2 + 1.1 * brightness + rng.normal(0, 0.05, n), 0.0, 1.0)
    edges = np.clip(0.05 + 0.2 * brightness + rng.normal(0, 0.01, n), 0.0, 1.0)
    probs = class_probs if class_probs is not None else [1 / num_classes] * num_classes
    predicted = rng.choice(num_classes, size=n, p=probs)
    confidence = np.clip(rng.beta(8.0, 1.5, n) - confidence_drop, 1.01 / num_classes, 1.0)
    others = num_classes - 1
    rest = (1.0 - confidence) / others
    entropy = -(confidence * np.log(confidence) + others * rest * np.log(np.clip(rest, 1e-12, 1)))
    return pd.DataFrame(
        {
            "brightness": brightness,
            "contrast": contrast,
            "ink_fraction": ink,
            "edge_density": edges,
            "center_x": np.clip(rng.normal(0.5, 0.03, n), 0, 1),
            "center_y": np.clip(rng.normal(0.5, 0.04, n), 0, 1),
            "predicted_class": predicted.astype(np.float64),
            "confidence": confidence,
            "entropy": entropy,
            "label": predicted,
        }
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return synth(3000, seed=1)


def test_same_distribution_is_ok() -> None:
    sample = synth(4000, seed=7)
    ref, cur = sample.iloc[:2000], sample.iloc[2000:]
    result = run_drift(ref, cur, DriftMethods(), num_classes=K, with_html=False)
    assert not result.dataset_drift
    assert result.severity == "ok"
    assert result.drifted_count < len(ALL_FEATURES) / 2
    assert result.drift_share == pytest.approx(result.drifted_count / len(ALL_FEATURES))
    assert set(result.per_feature) == set(ALL_FEATURES)
    assert result.rows_reference == 2000 and result.rows_current == 2000
    assert result.html is None
    assert abs(result.confidence_z) < 3.0
    assert result.class_js < 0.1


def test_shift_drifts_and_confidence_drop_is_critical(reference: pd.DataFrame) -> None:
    current = synth(2000, seed=2, brightness_shift=0.3, confidence_drop=0.15)
    result = run_drift(reference, current, DriftMethods(), num_classes=K, with_html=True)
    drifted = {name for name, fd in result.per_feature.items() if fd.drifted}
    assert {"brightness", "contrast", "ink_fraction", "edge_density", "confidence"} <= drifted
    assert "center_x" not in drifted
    assert result.dataset_drift
    assert result.confidence_z < -6.0
    assert result.confidence_severity == "critical"
    assert result.severity == "critical"
    assert result.per_feature["brightness"].method == "ks"
    assert result.per_feature["brightness"].score < 0.05
    # The HTML and the snapshot are Evidently's; the snapshot is strict JSON.
    assert result.html is not None and "<html" in result.html.lower()
    json.dumps(result.evidently_json, allow_nan=False)
    json.dumps(result.summary(), allow_nan=False)


def test_dataset_drift_alone_is_a_warning(reference: pd.DataFrame) -> None:
    current = synth(2000, seed=3, brightness_shift=0.3)  # 4 of 9 columns drift
    assert not run_drift(
        reference, current, DriftMethods(), num_classes=K, with_html=False
    ).dataset_drift
    methods = DriftMethods(drift_share_threshold=0.4)
    result = run_drift(reference, current, methods, num_classes=K, with_html=False)
    assert result.drifted_count == 4
    assert result.dataset_drift
    assert result.confidence_severity == "ok" and result.class_severity == "ok"
    assert result.severity == "warning"


def test_class_mix_change_is_graded(reference: pd.DataFrame) -> None:
    probs = [0.3, 0.3, 0.3] + [0.1 / 7] * 7
    current = synth(2000, seed=4, class_probs=probs)
    result = run_drift(reference, current, DriftMethods(), num_classes=K, with_html=False)
    assert result.per_feature["predicted_class"].drifted
    assert result.per_feature["predicted_class"].method == "jensenshannon"
    assert result.class_js >= 0.2
    assert result.class_severity == "critical"
    assert result.severity == "critical"
    assert sum(result.class_share_current) == pytest.approx(1.0)
    assert result.class_share_current[0] > 0.25


def test_methods_are_pinned_never_chi_square(reference: pd.DataFrame) -> None:
    current = synth(500, seed=5)
    result = run_drift(reference, current, DriftMethods(), num_classes=K, with_html=False)
    methods = {
        m["config"]["column"]: m["config"]["method"]
        for m in result.evidently_json["metrics"]
        if m["config"]["type"].endswith(":ValueDrift")
    }
    assert methods["predicted_class"] == "jensenshannon"
    assert {methods[c] for c in ALL_FEATURES if c != "predicted_class"} == {EVIDENTLY_KS}
    assert "chisquare" not in json.dumps(result.evidently_json)


def test_wasserstein_and_psi_paths(reference: pd.DataFrame) -> None:
    methods = DriftMethods(numeric_method="wasserstein", class_method="psi")
    assert methods.numeric_threshold == 0.1 and methods.class_threshold == 0.2
    probs = [0.3, 0.3, 0.3] + [0.1 / 7] * 7
    current = synth(2000, seed=6, brightness_shift=0.3, class_probs=probs)
    result = run_drift(reference, current, methods, num_classes=K, with_html=False)
    bright = result.per_feature["brightness"]
    assert (bright.method, bright.threshold, bright.drifted) == ("wasserstein", 0.1, True)
    assert bright.score >= 0.1  # a distance: drift when >= threshold
    klass = result.per_feature["predicted_class"]
    assert (klass.method, klass.drifted) == ("psi", True)
    assert not result.per_feature["center_y"].drifted
    configs = [m["config"] for m in result.evidently_json["metrics"]]
    assert {"wasserstein", "psi"} <= {c.get("method") for c in configs}


def test_not_enough_data_is_refused(reference: pd.DataFrame) -> None:
    with pytest.raises(NotEnoughDataError) as info:
        run_drift(reference, synth(29, seed=8), DriftMethods(), num_classes=K)
    assert info.value.kind == "not_enough_data" and info.value.http_status == 409
    with pytest.raises(NotEnoughDataError):
        run_drift(reference, synth(60, seed=8), DriftMethods(), num_classes=K, min_rows=100)
    with pytest.raises(NotEnoughDataError):
        run_drift(reference.iloc[:10], synth(60, seed=8), DriftMethods(), num_classes=K)
    with pytest.raises(NotEnoughDataError):
        run_drift(reference, reference.iloc[:0], DriftMethods(), num_classes=K)


def test_missing_column_is_refused(reference: pd.DataFrame) -> None:
    with pytest.raises(DriftInputError, match="entropy"):
        run_drift(
            reference, synth(100, seed=9).drop(columns=["entropy"]), DriftMethods(), num_classes=K
        )


def test_drift_methods_defaults_and_validation() -> None:
    default = DriftMethods()
    assert (default.numeric_method, default.numeric_threshold) == ("ks", 0.05)
    assert (default.class_method, default.class_threshold) == ("jensenshannon", 0.1)
    assert default.drift_share_threshold == 0.5
    assert (
        DriftMethods(numeric_method="wasserstein", numeric_threshold=0.3).numeric_threshold == 0.3
    )
    assert DriftMethods.model_validate({"class_method": "psi"}).class_threshold == 0.2
    with pytest.raises(ValidationError):
        DriftMethods(numeric_method="chisquare")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        DriftMethods(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        DriftMethods(confidence_z_warning=5.0, confidence_z_critical=4.0)


def test_confidence_zscore() -> None:
    ref = [0.8, 0.9, 1.0, 0.9, 0.8, 1.0]  # mean 0.9, std (ddof=1) ~0.0894
    cur = [0.8] * 16
    z = confidence_zscore(ref, cur)
    # Welch: the constant window adds no error; the 6-row reference's own error counts.
    assert z == pytest.approx((0.8 - 0.9) / (np.std(ref, ddof=1) / np.sqrt(6)))
    cur2 = [0.7, 0.8, 0.9, 0.8]
    se = np.sqrt(np.var(ref, ddof=1) / 6 + np.var(cur2, ddof=1) / 4)
    assert confidence_zscore(ref, cur2) == pytest.approx((0.8 - 0.9) / se)
    assert confidence_zscore([0.9] * 5, [0.9] * 5) == 0.0
    assert confidence_zscore([0.9] * 5, [0.8] * 5) == float("-inf")
    assert confidence_zscore([], [0.8]) == 0.0


def test_class_distribution() -> None:
    js, ref_share, cur_share = class_distribution([0, 1, 2, 3], [3, 2, 1, 0], 4)
    assert js == pytest.approx(0.0)
    assert ref_share == cur_share == [0.25] * 4
    js, _, cur_share = class_distribution([0, 0], [1, 1, float("nan")], 2)
    assert js == pytest.approx(1.0)  # base 2: disjoint mixes are at distance 1
    assert cur_share == [0.0, 1.0]  # NaN is no value, not a class
    with pytest.raises(ValueError):
        class_distribution([], [1], 2)


def test_a_big_window_against_a_small_reference_is_not_over_certain() -> None:
    """The same half-point confidence gap: against a 1,200-row reference, a window of 10,000
    cannot be more certain than the reference allows."""
    rng = np.random.default_rng(3)
    ref = np.clip(rng.normal(0.815, 0.2, 1200), 0, 1)
    cur = np.clip(rng.normal(0.810, 0.2, 10_000), 0, 1)
    z = confidence_zscore(ref, cur)
    assert abs(z) < 3
    only_window_error = (cur.mean() - ref.mean()) / (ref.std(ddof=1) / np.sqrt(cur.size))
    assert abs(z) < abs(only_window_error) / 2


def test_confidence_needs_both_a_significant_and_a_large_shift(reference: pd.DataFrame) -> None:
    """A one-point drop over 10,000 rows is significant but not worth a ticket; a
    ten-point drop is both."""
    tiny = synth(10_000, seed=11, confidence_drop=0.01)
    result = run_drift(reference, tiny, DriftMethods(), num_classes=K, with_html=False)
    assert abs(result.confidence_z) >= 3
    assert abs(result.confidence_shift) < DriftMethods().confidence_shift_warning
    assert result.confidence_severity == "ok"
    large = run_drift(reference, synth(1000, seed=12, confidence_drop=0.1), DriftMethods(),
                      num_classes=K, with_html=False)  # fmt: skip
    assert large.confidence_shift < -0.05 and large.confidence_z <= -6
    assert large.confidence_severity == "critical"
    assert large.summary()["confidence_shift"] == pytest.approx(large.confidence_shift)


def test_class_mix_p_value() -> None:
    rng = np.random.default_rng(5)
    same_a, same_b = rng.integers(0, 10, 1200), rng.integers(0, 10, 300)
    assert class_mix_p_value(same_a, same_b, 10) > 0.001
    shifted = np.where(rng.random(300) < 0.5, 3, rng.integers(0, 10, 300))
    assert class_mix_p_value(same_a, shifted, 10) < 1e-6
    assert class_mix_p_value([0, 0, 0], [0, 0], 10) == 1.0  # one class on both sides
    assert class_mix_p_value([0, 1], [float("nan")], 2) == 1.0  # nothing on one side


def test_class_mix_sampling_noise_in_a_small_window_is_not_graded() -> None:
    """300 rows against 1,200 of the same mix: the JS distance alone is often above the
    warning (about 0.07 on average); the test of homogeneity keeps it from being graded."""
    graded = 0
    over_warning = 0
    methods = DriftMethods()
    for seed in range(200):
        rng = np.random.default_rng(seed)
        ref, cur = rng.integers(0, 10, 1200), rng.integers(0, 10, 300)
        js, _, _ = class_distribution(ref, cur, 10)
        over_warning += js >= methods.class_js_warning
        graded += js >= methods.class_js_warning and (
            class_mix_p_value(ref, cur, 10) <= methods.class_alpha
        )
    assert over_warning >= 4  # the false positives the distance alone would raise
    assert graded == 0


def test_a_real_class_shift_in_a_small_window_is_graded(reference: pd.DataFrame) -> None:
    probs = [0.5] + [0.5 / 9] * 9
    result = run_drift(reference, synth(300, seed=9, class_probs=probs), DriftMethods(),
                       num_classes=K, with_html=False)  # fmt: skip
    assert result.class_mix_p_value < 1e-6
    assert result.class_severity in ("warning", "critical")
    assert result.summary()["class_mix_p_value"] == pytest.approx(result.class_mix_p_value)


def test_grade_and_severity() -> None:
    assert grade(2.9, 3.0, 6.0) == "ok"
    assert grade(-3.0, 3.0, 6.0) == "warning"
    assert grade(-7.0, 3.0, 6.0) == "critical"
    assert grade(float("-inf"), 3.0, 6.0) == "critical"
    assert max_severity("ok", "critical", "warning") == "critical"
    assert max_severity() == "ok"
    assert min_severity("critical", "warning") == "warning"
    assert min_severity("critical", "ok") == "ok"
    assert SEVERITY_LEVEL == {"ok": 0, "warning": 1, "critical": 2}


# --- The class count is the model's (3 or 12 classes, not Fashion-MNIST's 10) ------------


@pytest.mark.parametrize("k", [3, 12])
def test_class_mix_has_one_share_per_class_of_the_model(k: int) -> None:
    ref = synth(2000, seed=21, num_classes=k)
    same = run_drift(ref, synth(1000, seed=22, num_classes=k), DriftMethods(), num_classes=k,
                     with_html=False)  # fmt: skip
    assert len(same.class_share_reference) == len(same.class_share_current) == k
    assert sum(same.class_share_current) == pytest.approx(1.0)
    assert same.class_share_current[k - 1] > 0.5 / k  # the last class is counted
    assert same.class_severity == "ok" and same.class_mix_p_value > 0.001
    # Most traffic on the last class: 10 shares would not even see it when k is 12.
    probs = [0.4 / (k - 1)] * (k - 1) + [0.6]
    shifted = run_drift(ref, synth(1000, seed=23, num_classes=k, class_probs=probs),
                        DriftMethods(), num_classes=k, with_html=False)  # fmt: skip
    assert len(shifted.class_share_current) == k
    assert shifted.class_share_current[k - 1] == pytest.approx(0.6, abs=0.05)
    assert shifted.class_mix_p_value < 1e-6
    assert shifted.class_js >= 0.2 and shifted.class_severity == "critical"
    assert shifted.summary()["class_share_current"] == shifted.class_share_current


@pytest.mark.parametrize("k", [3, 12])
def test_js_and_chi_square_over_the_models_classes(k: int) -> None:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    ref = [c for c in range(k) for _ in range(10)]  # uniform, 10 of each
    cur = [k - 1] * 30 + [0] * 10  # only the first and the last class
    js, ref_share, cur_share = class_distribution(ref, cur, k)
    assert ref_share == pytest.approx([1 / k] * k)
    assert cur_share == pytest.approx([0.25] + [0.0] * (k - 2) + [0.75])
    assert js == pytest.approx(float(jensenshannon(ref_share, cur_share, base=2)))
    table = np.array([[10] * k, [10] + [0] * (k - 2) + [30]])
    table = table[:, table.sum(axis=0) > 0]
    expected = float(chi2_contingency(table, correction=False)[1])
    assert class_mix_p_value(ref, cur, k) == pytest.approx(expected)


@pytest.mark.parametrize("k", [3, 12])
def test_a_class_beyond_the_models_count_is_refused_not_dropped(k: int) -> None:
    with pytest.raises(DriftInputError, match=f"0 to {k - 1}"):
        class_distribution([0, 1], [1, k], k)
    with pytest.raises(DriftInputError):
        class_mix_p_value([0, 1], [1, -1], k)
    ref = synth(500, seed=31, num_classes=k)
    cur = synth(500, seed=32, num_classes=k)
    cur.loc[7, "predicted_class"] = k
    with pytest.raises(DriftInputError, match="current") as info:
        run_drift(ref, cur, DriftMethods(), num_classes=k, with_html=False)
    assert info.value.http_status == 400
    # A model with more classes than the count given: its reference is refused too.
    with pytest.raises(DriftInputError, match="reference"):
        run_drift(synth(500, seed=33, num_classes=k + 1), cur.iloc[:10], DriftMethods(),
                  num_classes=k, min_rows=10)  # fmt: skip
