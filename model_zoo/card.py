"""Model cards: what a weights file is, how to feed it, and whether it is the file we think.

A card lives beside its weights as ``<weights>.card.json``. The node reads everything it needs
to serve a model from it — preprocessing, decision threshold, aggregation, accepted slice
thickness, study-score calibration, training domain, intended use — and refuses weights whose
SHA-256 differs from the card's, so a swapped or truncated file can never report under another
model's name. Fields added after the first cards (``gpu_recommended``, the aggregation's lung
gate, ``calibration.study``) are optional with the old meaning as default, so every card
written before still loads.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model_zoo.calibration import CalibrationError, Calibrator, calibrator_from_dict

TRAINING_DOMAINS = ("dicom-hu", "png-8bit")
CALIBRATION_METHODS = ("none", "platt", "isotonic")
DEFAULT_INTENDED_USE = "research; not a medical device"


class ModelCardError(ValueError):
    """A card is missing, unreadable, or says something impossible; the message names it."""


class WeightsMismatch(ModelCardError):
    """The weights file is not the one the card describes (both hashes are in the message)."""


@dataclass(frozen=True)
class Preprocessing:
    """Parameters of :func:`model_zoo.preprocess.hu_to_input` the model was trained with."""

    window_center: float = -600.0
    window_width: float = 1500.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    body_crop: bool = True


@dataclass(frozen=True)
class Aggregation:
    """The study aggregation the card's threshold was chosen with (see scpnode.aggregate)."""

    method: str = "mean_top_fraction"
    top_fraction: float = 0.1
    lung_gate: bool = False  # cards before the gate: every slice voted
    slice_threshold: float = 0.5  # what counts as a positive slice (fraction_positive)


@dataclass(frozen=True)
class Calibration:
    """How study scores become probabilities.

    ``method`` and ``ece`` describe the card's own aggregation; ``study`` holds one fitted
    calibrator per aggregation strategy (key: ``scpnode.aggregate.strategy_key``), each a
    :meth:`Calibrator.to_dict` plus its validation ECE before/after, so the node can calibrate
    whichever strategy is configured; a strategy without one is reported uncalibrated.
    """

    method: str = "none"
    ece: float | None = None
    fitted_on: str = ""
    study: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def calibrator(self, strategy: str) -> Calibrator | None:
        """The calibrator fitted for ``strategy``, or None."""
        raw = self.study.get(strategy)
        return None if raw is None else calibrator_from_dict(raw, f"calibration.study.{strategy}")


@dataclass(frozen=True)
class TrainingData:
    description: str
    seed: int | None = None
    split: str = ""


@dataclass(frozen=True)
class ModelCard:
    """Everything the node must know about one weights file (see the module docstring)."""

    name: str
    version: str
    architecture: str
    input_size: tuple[int, int]
    preprocessing: Preprocessing
    training_domain: str
    slice_thickness_mm: tuple[float, float]
    threshold: float
    aggregation: Aggregation
    calibration: Calibration
    training_data: TrainingData
    weights_sha256: str
    synthetic: bool
    created_by: str
    intended_use: str = DEFAULT_INTENDED_USE
    metrics: Mapping[str, Any] = field(default_factory=dict)
    gpu_recommended: bool = False  # minutes per study on a 2-core CPU

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def card_path(weights_path: Path | str) -> Path:
    """``model.pt`` → ``model.pt.card.json``."""
    p = Path(weights_path)
    return p.with_name(p.name + ".card.json")


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_card(card: ModelCard, weights_path: Path | str) -> Path:
    """Write the card beside its weights (temp file + rename, so readers never see half)."""
    target = card_path(weights_path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(card.to_json(), encoding="utf-8")
    tmp.replace(target)
    return target


def load_card(weights_path: Path | str) -> ModelCard:
    """Read ``<weights>.card.json``; errors say which file and which field is wrong."""
    path = card_path(weights_path)
    if not path.is_file():
        raise ModelCardError(f"model card {path} not found (every weights file needs one)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"model card {path} is not valid JSON: {exc}") from exc
    try:
        return card_from_dict(raw)
    except ModelCardError as exc:
        raise ModelCardError(f"model card {path}: {exc}") from None


def verify_weights(weights_path: Path | str, card: ModelCard) -> str:
    """Return the weights' SHA-256, or raise :class:`WeightsMismatch` naming both hashes."""
    actual = sha256_file(weights_path)
    check_sha256(actual, card, weights_path)
    return actual


def check_sha256(actual: str, card: ModelCard, weights_path: Path | str) -> None:
    """Raise :class:`WeightsMismatch` unless ``actual`` is the card's hash.

    For callers that hash the bytes they are about to load (no window between check and use).
    """
    if actual != card.weights_sha256:
        raise WeightsMismatch(
            f"weights {weights_path} have sha256 {actual}, but their card "
            f"({card.name}@{card.version}) expects sha256 {card.weights_sha256}; "
            "refusing to load weights that are not the ones the card describes"
        )


# --- parsing: one small checker per kind of field, each naming the field on error ----------


def _get(raw: Mapping[str, Any], key: str, prefix: str, default: Any = ...) -> Any:
    if key in raw:
        return raw[key]
    if default is ...:
        raise ModelCardError(f"field '{prefix}{key}' is missing")
    return default


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ModelCardError(f"field '{name}' must be a string, got {value!r}")
    return value


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelCardError(f"field '{name}' must be a finite number, got {value!r}")
    return float(value)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ModelCardError(f"field '{name}' must be true or false, got {value!r}")
    return value


def _nums(value: Any, name: str, n: int, conv: Callable[[Any, str], Any] = _num) -> tuple:
    if isinstance(value, int | float) and not isinstance(value, bool) and n == 3:
        value = [value] * 3  # a single mean/std for the replicated grey channels
    if not isinstance(value, list | tuple) or len(value) != n:
        raise ModelCardError(f"field '{name}' must be a list of {n} numbers, got {value!r}")
    return tuple(conv(v, f"{name}[{i}]") for i, v in enumerate(value))


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelCardError(f"field '{name}' must be a positive integer, got {value!r}")
    return value


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = _get(raw, key, "")
    if not isinstance(value, Mapping):
        raise ModelCardError(f"field '{key}' must be an object, got {value!r}")
    return value


def _preprocessing(raw: Mapping[str, Any]) -> Preprocessing:
    p, n = _section(raw, "preprocessing"), "preprocessing."
    out = Preprocessing(
        window_center=_num(_get(p, "window_center", n), n + "window_center"),
        window_width=_num(_get(p, "window_width", n), n + "window_width"),
        mean=_nums(_get(p, "mean", n), n + "mean", 3),
        std=_nums(_get(p, "std", n), n + "std", 3),
        body_crop=_bool(_get(p, "body_crop", n), n + "body_crop"),
    )
    if out.window_width <= 0:
        raise ModelCardError(f"field '{n}window_width' must be positive, got {out.window_width}")
    if min(out.std) <= 0:
        raise ModelCardError(f"field '{n}std' must be positive, got {list(out.std)}")
    return out


def _aggregation(raw: Mapping[str, Any]) -> Aggregation:
    a, n = _section(raw, "aggregation"), "aggregation."
    fraction = _num(_get(a, "top_fraction", n), n + "top_fraction")
    if not 0.0 < fraction <= 1.0:
        raise ModelCardError(f"field 'aggregation.top_fraction' must be in (0, 1], got {fraction}")
    slice_threshold = _num(_get(a, "slice_threshold", n, 0.5), n + "slice_threshold")
    if not 0.0 <= slice_threshold <= 1.0:
        raise ModelCardError(f"field '{n}slice_threshold' must be in [0, 1], got {slice_threshold}")
    return Aggregation(
        _str(_get(a, "method", n), n + "method"),
        fraction,
        _bool(_get(a, "lung_gate", n, False), n + "lung_gate"),
        slice_threshold,
    )


def _calibration(raw: Mapping[str, Any]) -> Calibration:
    c, n = _section(raw, "calibration"), "calibration."
    method = _str(_get(c, "method", n), n + "method")
    if method not in CALIBRATION_METHODS:
        raise ModelCardError(f"field '{n}method' must be one of {CALIBRATION_METHODS}")
    ece = _get(c, "ece", n, None)
    study = _get(c, "study", n, {})
    if not isinstance(study, Mapping) or not all(isinstance(v, Mapping) for v in study.values()):
        raise ModelCardError(f"field '{n}study' must map strategies to objects, got {study!r}")
    for key, value in study.items():
        try:
            calibrator_from_dict(value, f"{n}study.{key}")
        except CalibrationError as exc:
            raise ModelCardError(f"field '{n}study.{key}' is not a calibrator: {exc}") from None
    return Calibration(
        method,
        None if ece is None else _num(ece, n + "ece"),
        _str(_get(c, "fitted_on", n, ""), n + "fitted_on"),
        {str(k): dict(v) for k, v in study.items()},
    )


def _training_data(raw: Mapping[str, Any]) -> TrainingData:
    t = _section(raw, "training_data")
    seed = _get(t, "seed", "training_data.", None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ModelCardError(f"field 'training_data.seed' must be an integer, got {seed!r}")
    return TrainingData(
        _str(_get(t, "description", "training_data."), "training_data.description"),
        seed,
        _str(_get(t, "split", "training_data.", ""), "training_data.split"),
    )


def card_from_dict(raw: Any) -> ModelCard:
    """Validate a parsed card; :class:`ModelCardError` names the first bad field."""
    if not isinstance(raw, Mapping):
        raise ModelCardError(f"a model card must be a JSON object, got {type(raw).__name__}")
    domain = _str(_get(raw, "training_domain", ""), "training_domain")
    if domain not in TRAINING_DOMAINS:
        raise ModelCardError(f"field 'training_domain' must be one of {TRAINING_DOMAINS}")
    threshold = _num(_get(raw, "threshold", ""), "threshold")
    if not 0.0 <= threshold <= 1.0:
        raise ModelCardError(f"field 'threshold' must be in [0, 1], got {threshold}")
    sha = _str(_get(raw, "weights_sha256", ""), "weights_sha256").lower()
    if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
        raise ModelCardError(f"field 'weights_sha256' must be 64 hex digits, got {sha!r}")
    metrics = _get(raw, "metrics", "", {})
    if not isinstance(metrics, Mapping):
        raise ModelCardError(f"field 'metrics' must be an object, got {metrics!r}")
    return ModelCard(
        name=_str(_get(raw, "name", ""), "name"),
        version=_str(_get(raw, "version", ""), "version"),
        architecture=_str(_get(raw, "architecture", ""), "architecture"),
        input_size=_nums(_get(raw, "input_size", ""), "input_size", 2, _int),
        preprocessing=_preprocessing(raw),
        training_domain=domain,
        slice_thickness_mm=_nums(_get(raw, "slice_thickness_mm", ""), "slice_thickness_mm", 2),
        threshold=threshold,
        aggregation=_aggregation(raw),
        calibration=_calibration(raw),
        training_data=_training_data(raw),
        weights_sha256=sha,
        synthetic=_bool(_get(raw, "synthetic", ""), "synthetic"),
        created_by=_str(_get(raw, "created_by", ""), "created_by"),
        intended_use=_str(_get(raw, "intended_use", "", DEFAULT_INTENDED_USE), "intended_use"),
        metrics=dict(metrics),
        gpu_recommended=_bool(_get(raw, "gpu_recommended", "", False), "gpu_recommended"),
    )
