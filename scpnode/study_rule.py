"""How this node turns slice probabilities into a decision: configuration over model card.

The card says how the model was validated (its aggregation, lung gate, calibrators and the
threshold chosen on the calibrated score); ``[model]`` may choose another strategy. This module
settles, once per worker, which rule, which calibrator and which threshold apply, and where
each came from (the audit records the threshold's source).
"""

from __future__ import annotations

from dataclasses import dataclass

from model_zoo.calibration import Calibrator
from model_zoo.card import ModelCard
from scpnode.aggregate import strategy_key
from scpnode.config import ModelSettings


@dataclass(frozen=True)
class StudyRule:
    method: str
    top_fraction: float
    slice_threshold: float
    lung_gate: bool
    lung_min_fraction: float
    key: str  # the card's name for this strategy (its calibrator's key)
    calibrator: Calibrator | None
    threshold: float
    threshold_source: str


def study_rule(settings: ModelSettings, card: ModelCard) -> StudyRule:
    gate = card.aggregation.lung_gate if settings.lung_gate is None else settings.lung_gate
    key = strategy_key(
        settings.aggregation,
        top_fraction=settings.top_fraction,
        slice_threshold=settings.slice_threshold,
        lung_gate=gate,
        lung_min_fraction=settings.lung_min_fraction,
    )
    calibrator = card.calibration.calibrator(key) if settings.calibration == "card" else None
    own = (settings.aggregation, gate) == (card.aggregation.method, card.aggregation.lung_gate)
    if settings.threshold is not None:
        threshold, source = settings.threshold, "config"
    elif calibrator is not None and not own:
        threshold, source = 0.5, "calibrated probability (0.5)"
    else:
        threshold, source = card.threshold, "model card"
    return StudyRule(
        method=settings.aggregation,
        top_fraction=settings.top_fraction,
        slice_threshold=settings.slice_threshold,
        lung_gate=gate,
        lung_min_fraction=settings.lung_min_fraction,
        key=key,
        calibrator=calibrator,
        threshold=threshold,
        threshold_source=source,
    )
