"""Model cards: round trip, hash verification, and errors that name the problem."""

import json
import re
from pathlib import Path

import pytest

from model_zoo.card import (
    Aggregation,
    Calibration,
    ModelCard,
    ModelCardError,
    Preprocessing,
    TrainingData,
    WeightsMismatch,
    card_path,
    load_card,
    save_card,
    sha256_file,
    verify_weights,
)


def make_card(sha: str) -> ModelCard:
    return ModelCard(
        name="ctnet10",
        version="test-1",
        architecture="ctnet10",
        input_size=(128, 128),
        preprocessing=Preprocessing(mean=(0.4, 0.4, 0.4), std=(0.3, 0.3, 0.3)),
        training_domain="dicom-hu",
        slice_thickness_mm=(0.5, 5.0),
        threshold=0.42,
        aggregation=Aggregation("mean_top_fraction", 0.1),
        calibration=Calibration("none", 0.05),
        training_data=TrainingData("unit test", seed=3, split="by study"),
        weights_sha256=sha,
        synthetic=True,
        created_by="pytest",
        metrics={"slice": {"auc": 0.9}, "study": {"accuracy": 1.0}},
    )


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.pt"
    path.write_bytes(b"not really weights")
    return path


def test_round_trip(weights: Path) -> None:
    card = make_card(sha256_file(weights))
    written = save_card(card, weights)
    assert written == card_path(weights) == weights.with_name("w.pt.card.json")
    loaded = load_card(weights)
    assert loaded == card
    assert verify_weights(weights, loaded) == card.weights_sha256


def test_tampered_weights_refused_with_both_hashes(weights: Path) -> None:
    card = make_card(sha256_file(weights))
    weights.write_bytes(b"other bytes")
    with pytest.raises(WeightsMismatch) as err:
        verify_weights(weights, card)
    assert card.weights_sha256 in str(err.value)
    assert sha256_file(weights) in str(err.value)


def test_missing_card(weights: Path) -> None:
    with pytest.raises(ModelCardError, match="not found"):
        load_card(weights)


def test_invalid_json(weights: Path) -> None:
    card_path(weights).write_text("{ nope", encoding="utf-8")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_card(weights)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("preprocessing.window_width", "wide"),
        ("preprocessing.std", [0.3, 0.0, 0.3]),
        ("threshold", 1.5),
        ("training_domain", "jpeg"),
        ("input_size", [128]),
        ("synthetic", "yes"),
        ("weights_sha256", "abc"),
        ("aggregation.top_fraction", 0),
    ],
)
def test_malformed_field_is_named(weights: Path, field: str, value: object) -> None:
    raw = json.loads(make_card(sha256_file(weights)).to_json())
    section, _, key = field.rpartition(".")
    (raw[section] if section else raw)[key] = value
    card_path(weights).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ModelCardError, match=re.escape(f"'{field}'")):
        load_card(weights)


def test_missing_field_is_named(weights: Path) -> None:
    raw = json.loads(make_card(sha256_file(weights)).to_json())
    del raw["preprocessing"]["mean"]
    card_path(weights).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ModelCardError, match=r"'preprocessing\.mean' is missing"):
        load_card(weights)
