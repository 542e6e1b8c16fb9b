"""Study-level scores for training and evaluation, by the node's own aggregation rules.

A :class:`Strategy` is one way ``scpnode.aggregate`` turns slice probabilities into a study
score (rule, its parameter, lung gate); its :attr:`Strategy.key` is the name under which the
model card stores the calibrator fitted for it, and the name the node looks up when that
strategy is configured. Training fits a calibrator per strategy on the validation studies;
evaluation reports every strategy, so the choice in the config is an informed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_zoo import calibration
from model_zoo.calibration import Calibrator
from model_zoo.metrics import expected_calibration_error
from model_zoo.preprocess import LUNG_MIN_FRACTION
from scpnode.aggregate import strategy_key, study_score


@dataclass(frozen=True)
class Strategy:
    method: str
    top_fraction: float = 0.10
    slice_threshold: float = 0.5
    lung_gate: bool = False
    lung_min_fraction: float = LUNG_MIN_FRACTION

    @property
    def key(self) -> str:
        return strategy_key(
            self.method,
            top_fraction=self.top_fraction,
            slice_threshold=self.slice_threshold,
            lung_gate=self.lung_gate,
            lung_min_fraction=self.lung_min_fraction,
        )

    def score(self, probs: np.ndarray, lung: np.ndarray | None) -> float:
        """The raw study score; with the gate, slices without lung do not vote (unless none
        has lung: then all vote, as in the node)."""
        probs = np.asarray(probs, np.float64)
        if self.lung_gate and lung is not None:
            votes = np.asarray(lung) >= self.lung_min_fraction
            if votes.any():
                probs = probs[votes]
        raw, _ = study_score(
            list(probs), self.method,
            top_fraction=self.top_fraction, slice_threshold=self.slice_threshold,
        )  # fmt: skip
        return raw


def strategies(with_gate: bool) -> list[Strategy]:
    """The strategies trained and evaluated: each rule without, and (HU data) with, the gate."""
    rules = [Strategy("mean_top_fraction"), Strategy("max"), Strategy("fraction_positive")]
    if not with_gate:
        return rules
    gated = [Strategy(s.method, s.top_fraction, s.slice_threshold, True) for s in rules]
    return [x for pair in zip(rules, gated, strict=True) for x in pair]


def study_scores(
    probs: np.ndarray,
    groups: Sequence[str],
    lung: np.ndarray | None,
    strategy: Strategy,
    order: Sequence[str],
) -> np.ndarray:
    """One raw score per group in ``order``."""
    groups_arr = np.asarray(groups)
    out = []
    for g in order:
        sel = groups_arr == g
        out.append(strategy.score(probs[sel], None if lung is None else lung[sel]))
    return np.asarray(out, np.float64)


def fit_calibrators(
    method: str,
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
) -> dict[str, dict[str, object]]:
    """Per strategy key: the fitted calibrator and its validation ECE before and after.

    Empty when ``method`` is ``none`` or the validation studies are all of one class (a
    calibrator fitted on one class is a constant, worse than none).
    """
    labels = np.asarray(labels).astype(int)
    if method == "none" or labels.min() == labels.max():
        return {}
    out: dict[str, dict[str, object]] = {}
    for key, raw in scores.items():
        cal: Calibrator = calibration.fit(method, raw, labels)
        entry: dict[str, object] = dict(cal.to_dict())
        entry["val_ece_raw"] = round(expected_calibration_error(raw, labels), 6)
        entry["val_ece"] = round(expected_calibration_error(cal.apply(raw), labels), 6)
        entry["val_studies"] = len(labels)
        out[key] = entry
    return out
