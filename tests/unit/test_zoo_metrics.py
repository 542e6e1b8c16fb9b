"""Confidence intervals and study-score calibration (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from model_zoo import calibration, metrics


def test_wilson_matches_the_papers_vgg19_interval() -> None:
    low, high = metrics.wilson(69, 73)
    assert (round(low, 3), round(high, 3)) == (0.867, 0.978)  # notes: 86.7-97.8
    assert metrics.wilson(0, 0) is None
    assert metrics.wilson(10, 10)[1] == pytest.approx(1.0)


def test_score_counts_and_intervals() -> None:
    probs = np.array([0.9, 0.8, 0.3, 0.2, 0.7, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    s = metrics.score(probs, labels, 0.5)
    assert (s.tp, s.fn, s.fp, s.tn) == (2, 1, 1, 2)
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.auc == pytest.approx(8 / 9)
    assert s.accuracy_ci[0] < s.accuracy < s.accuracy_ci[1]
    assert s.f1_ci == metrics.score(probs, labels, 0.5).f1_ci  # seeded bootstrap


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_lowers_the_error_of_an_overconfident_score(method: str) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    truth = np.where(labels == 1, 0.7, 0.3)  # the score says ~0.95 / ~0.05 instead
    raw = np.clip(np.where(rng.random(400) < truth, 0.95, 0.05) + rng.normal(0, 0.01, 400), 0, 1)
    labels = (rng.random(400) < truth).astype(int)
    cal = calibration.fit(method, raw, labels)
    before = metrics.expected_calibration_error(raw, labels)
    after = metrics.expected_calibration_error(cal.apply(raw), labels)
    assert after < before / 2
    again = calibration.calibrator_from_dict(cal.to_dict())
    assert np.allclose(again.apply(raw), cal.apply(raw))
    assert np.all(np.diff(cal.apply(np.linspace(0, 1, 50))) >= -1e-12)  # monotone


def test_calibration_errors_say_why() -> None:
    with pytest.raises(calibration.CalibrationError, match="both classes"):
        calibration.fit("platt", np.array([0.2, 0.4]), np.array([1, 1]))
    with pytest.raises(calibration.CalibrationError, match=r"card\.x: method"):
        calibration.calibrator_from_dict({"method": "beta"}, "card.x")
