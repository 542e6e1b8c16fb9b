"""Aggregation strategies, the lung gate and calibration, as the node applies them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model_zoo.calibration import Calibrator
from model_zoo.card import Aggregation, Calibration, save_card, sha256_file
from model_zoo.ctnet10 import CTNet10
from model_zoo.preprocess import LUNG_MIN_FRACTION, lung_fraction
from model_zoo.train import save_weights
from scpnode import synth
from scpnode.aggregate import aggregate, strategy_key
from scpnode.cli import main
from scpnode.config import ModelSettings
from scpnode.domain import Finding
from scpnode.study_rule import study_rule
from tests.unit.test_aggregate import scores
from tests.unit.test_engine import make_card
from tests.unit.test_startup import config


def test_fraction_positive_counts_voting_slices_only() -> None:
    probs = [0.9, 0.9, 0.1, 0.1, 0.95, 0.95]  # the last two: above the lungs
    votes = [True, True, True, True, False, False]
    r = aggregate(scores(probs), threshold=0.5, method="fraction_positive", votes=votes)
    assert r.probability == pytest.approx(0.5)
    assert "2 without lung did not vote" in r.aggregation
    assert {s.index for s in r.key_slices} <= {0, 1, 2, 3}
    ungated = aggregate(scores(probs), threshold=0.5, method="fraction_positive")
    assert ungated.probability == pytest.approx(4 / 6)


def test_no_lung_anywhere_falls_back_to_every_slice() -> None:
    r = aggregate(scores([0.2, 0.8]), threshold=0.5, method="max", votes=[False, False])
    assert r.probability == 0.8 and "all voted" in r.aggregation


def test_calibration_maps_the_raw_score_and_says_so() -> None:
    cal = Calibrator("platt", a=1.0, b=-2.0)
    r = aggregate(scores([0.9] * 10), threshold=0.5, method="max", calibrate=cal,
                  calibration="platt")  # fmt: skip
    assert r.probability == pytest.approx(cal(0.9)) and r.probability < 0.9
    assert "calibrated (platt) from raw score 0.9000" in r.aggregation
    assert r.finding is Finding.PRESENT  # sigmoid(logit(.9) - 2) = 0.55


def test_lung_gate_votes_through_the_lungs_only() -> None:
    spec = synth.make_study_spec(5, covid=False, n_slices=40)
    vol, _ = synth.render_volume(spec, 128)
    fractions = np.array([lung_fraction(hu) for hu in vol])
    votes = fractions >= LUNG_MIN_FRACTION
    assert votes[len(vol) // 2]  # mid-chest shows lung
    assert 0 < votes.sum() < len(vol)  # and some slices above/below do not


def _card(**changes: object):  # type: ignore[no-untyped-def]
    key = strategy_key("max", lung_gate=True)
    cal = Calibration("platt", 0.05, "val", {key: {"method": "platt", "a": 2.0, "b": 0.0}})
    card = replace(make_card("0" * 64), threshold=0.7, calibration=cal,
                   aggregation=Aggregation("mean_top_fraction", 0.1, lung_gate=True))  # fmt: skip
    return replace(card, **changes)


def test_rule_follows_the_card_unless_configured() -> None:
    rule = study_rule(ModelSettings(), _card())
    assert (rule.lung_gate, rule.calibrator, rule.threshold, rule.threshold_source) == (
        True, None, 0.7, "model card",
    )  # fmt: skip
    other = study_rule(ModelSettings(aggregation="max"), _card())
    assert other.calibrator is not None and other.calibrator.a == 2.0
    assert (other.threshold, other.threshold_source) == (0.5, "calibrated probability (0.5)")
    assert (
        study_rule(ModelSettings(aggregation="max", calibration="none"), _card()).calibrator is None
    )
    off = study_rule(ModelSettings(aggregation="max", lung_gate=False), _card())
    assert off.calibrator is None and not off.lung_gate  # fitted with the gate: not this one
    assert study_rule(ModelSettings(threshold=0.3), _card()).threshold_source == "config"


def test_png_8bit_model_refused_on_dicom_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    save_weights(CTNet10(), weights)
    card = replace(make_card(sha256_file(weights)), training_domain="png-8bit", synthetic=False)
    save_card(card, weights)
    path = config(tmp_path, f'weights = "{weights}"', destinations=False)
    assert main(["worker", "--config", str(path), "--burst"]) == 2
    assert "model.allow_domain_shift" in capsys.readouterr().err
    allowed = config(tmp_path, f'weights = "{weights}"\nallow_domain_shift = true',
                     destinations=False)  # fmt: skip
    assert main(["worker", "--config", str(allowed), "--burst"]) == 0
