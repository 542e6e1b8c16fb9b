"""The recipe of the synthetic demo weights: phantoms → CTnet-10, evaluated by study.

Split from `demo_weights` (the cache) so that processes which only need the path to the
weights (the SCP of `serve`) never import torch.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_zoo.calibration import calibrator_from_dict
from model_zoo.card import (
    Aggregation,
    Calibration,
    ModelCard,
    Preprocessing,
    TrainingData,
    save_card,
    sha256_file,
)
from model_zoo.metrics import choose_threshold
from model_zoo.preprocess import hu_to_input, lung_fraction
from model_zoo.registry import get_spec
from model_zoo.train import (
    deterministic,
    evaluate,
    expected_calibration_error,
    predict_proba,
    save_weights,
    train_binary,
)
from scpnode import __version__, synth
from scpnode.aggregate import aggregate
from scpnode.demo_weights import ARCHITECTURE, INTENDED_USE, VERSION
from scpnode.domain import Label, SliceScore
from scpnode.zoo_study import Strategy, fit_calibrators, strategies, study_scores

Log = Callable[[str], None]

MATRIX = 256
N_STUDIES = 140
N_SLICES = 24
LESION_FRACTION_MIN = 0.01  # a slice is positive when lesions cover > 1 % of its lung area
SPLIT = (0.5, 0.25, 0.25)  # train / val / test, by study, stratified by study label
EPOCHS, BATCH_SIZE, LR, LR_DECAY, PATIENCE = 5, 8, 1e-3, 0.7, 2
NEG_PER_POS = 1.0  # negatives drawn per positive slice, afresh each epoch
PREPROCESSING = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.3, 0.3, 0.3))
AGGREGATION = Aggregation(method="mean_top_fraction", top_fraction=0.1, lung_gate=True)
CALIBRATION = "platt"  # study scores → probabilities, fitted on the validation studies


@dataclass(frozen=True)
class _Slices:
    """Preprocessed synthetic slices: one grey channel kept (the three are identical)."""

    x: np.ndarray  # float32 [N, h, w]
    y: np.ndarray  # slice label, 0/1
    study: np.ndarray  # study index per slice
    study_label: dict[int, int]  # study index → 1 for covid19
    lung: np.ndarray  # lung-gate measure per slice (model_zoo.preprocess.lung_fraction)

    def inputs(self, studies: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network inputs [n, 3, h, w] (a broadcast view, no copy), labels, study indices."""
        sel = np.isin(self.study, studies)
        x = self.x[sel]
        return np.broadcast_to(x[:, None], (len(x), 3, *x.shape[1:])), self.y[sel], self.study[sel]


def _collect(seed: int, log: Log) -> _Slices:
    """Generate phantoms and preprocess them exactly as serving will (``hu_to_input``)."""
    spec, pre = get_spec(ARCHITECTURE), PREPROCESSING
    xs, ys, studies, study_label, lung = [], [], [], {}, []
    for hu, lesion, study, label in synth.training_slices(seed, N_STUDIES, N_SLICES, MATRIX):
        lung.append(lung_fraction(hu))
        x = hu_to_input(
            hu,
            spec.input_size,
            window_center=pre.window_center,
            window_width=pre.window_width,
            mean=pre.mean,
            std=pre.std,
            body_crop=pre.body_crop,
        )
        xs.append(x[0])
        ys.append(float(lesion > LESION_FRACTION_MIN))
        studies.append(study)
        study_label[study] = int(Label(label) == Label.COVID19)
    log(f"{len(xs)} synthetic slices from {len(study_label)} studies, {int(sum(ys))} positive")
    return _Slices(np.stack(xs), np.asarray(ys, np.float32), np.asarray(studies), study_label,
                   np.asarray(lung))  # fmt: skip


def split_studies(
    study_label: dict[int, int], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test study indices, stratified by label; a study lies in exactly one part."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for cls in (0, 1):
        ids = rng.permutation(sorted(s for s, lab in study_label.items() if lab == cls))
        n_train, n_val = round(SPLIT[0] * len(ids)), round(SPLIT[1] * len(ids))
        for part, chunk in zip(parts, np.split(ids, [n_train, n_train + n_val]), strict=True):
            part.extend(int(s) for s in chunk)
    return tuple(np.asarray(sorted(p)) for p in parts)  # type: ignore[return-value]


def study_probabilities(probs: np.ndarray, study: np.ndarray, studies: np.ndarray) -> np.ndarray:
    """Aggregate slice probabilities per study with the node's own default rule."""
    out = []
    for s in studies:
        scores = [
            SliceScore("", "", i, float(i), float(p)) for i, p in enumerate(probs[study == s])
        ]
        result = aggregate(
            scores,
            threshold=0.5,  # only the aggregated probability is used here
            method=AGGREGATION.method,
            top_fraction=AGGREGATION.top_fraction,
        )
        out.append(result.probability)
    return np.asarray(out)


def _evaluate_studies(
    proba: Callable[[np.ndarray], np.ndarray], data: _Slices, studies: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Slice probabilities and labels, study probabilities and labels, for some studies."""
    x, y, study = data.inputs(studies)
    probs = proba(x)
    labels = np.asarray([data.study_label[int(s)] for s in studies])
    return probs, y, study_probabilities(probs, study, studies), labels


def train_demo_weights(out_path: Path | str, *, seed: int = 0, log: Log = print) -> ModelCard:
    """Train CTnet-10 on synthetic phantoms; write weights + card at ``out_path``."""
    out_path, started = Path(out_path), time.perf_counter()
    data = _collect(seed, log)
    train, val, test = split_studies(data.study_label, seed)
    log(f"studies: {len(train)} train, {len(val)} val, {len(test)} test (split by study)")
    with deterministic(seed):  # the initial weights come from the seeded torch RNG
        model = get_spec(ARCHITECTURE).build()
    x_tr, y_tr, _ = data.inputs(train)
    x_va, y_va, _ = data.inputs(val)
    history = train_binary(
        model, x_tr, y_tr, x_va, y_va, epochs=EPOCHS, batch_size=BATCH_SIZE, lr=LR, seed=seed,
        log=log, patience=PATIENCE, neg_per_pos=NEG_PER_POS, lr_decay=LR_DECAY,
    )  # fmt: skip

    def proba(x: np.ndarray) -> np.ndarray:
        return predict_proba(model, x, batch_size=64)

    cal = _calibrate(proba, data, val)
    val_study, val_labels = _calibrated_studies(proba, data, val, cal)
    threshold = choose_threshold(val_study, val_labels)
    test_slice, test_y, _, _ = _evaluate_studies(proba, data, test)
    test_study, test_labels = _calibrated_studies(proba, data, test, cal)
    metrics = {
        "slice_test": evaluate(test_slice, test_y, 0.5),
        "study_val": evaluate(val_study, val_labels, threshold),
        "study_test": evaluate(test_study, test_labels, threshold),
        "studies": {"train": len(train), "val": len(val), "test": len(test)},
        "training": {
            "epochs_run": len(history.train_loss),
            "best_epoch": history.best_epoch + 1,
            "train_loss": [round(v, 5) for v in history.train_loss],
            "val_loss": [round(v, 5) for v in history.val_loss],
            "wall_s": round(time.perf_counter() - started, 1),
        },
    }
    save_weights(model, out_path)
    ece = expected_calibration_error(test_study, test_labels)
    card = _card(seed, threshold, ece, metrics, sha256_file(out_path), study_calibration=cal)
    save_card(card, out_path)
    log(_summary(card))
    return card


def _strategies_scores(
    proba: Callable[[np.ndarray], np.ndarray], data: _Slices, studies: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Raw study scores of ``studies`` for every strategy the node offers, and the labels."""
    x, _, study = data.inputs(studies)
    probs = proba(x)
    lung = data.lung[np.isin(data.study, studies)]
    groups = [str(int(s)) for s in study]
    order = [str(int(s)) for s in studies]
    raw = {s.key: study_scores(probs, groups, lung, s, order) for s in strategies(True)}
    return raw, np.asarray([data.study_label[int(s)] for s in studies])


def _calibrate(
    proba: Callable[[np.ndarray], np.ndarray], data: _Slices, val: np.ndarray
) -> dict[str, dict[str, object]]:
    """One Platt calibrator per strategy, fitted on the validation studies."""
    raw, labels = _strategies_scores(proba, data, val)
    return fit_calibrators(CALIBRATION, raw, labels)


def _calibrated_studies(
    proba: Callable[[np.ndarray], np.ndarray], data: _Slices, studies: np.ndarray,
    cal: dict[str, dict[str, object]],
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Calibrated study probabilities of the card's own strategy, and the labels."""
    raw, labels = _strategies_scores(proba, data, studies)
    key = _own().key
    scores = raw[key]
    return (calibrator_from_dict(cal[key]).apply(scores) if key in cal else scores), labels


def _own() -> Strategy:
    a = AGGREGATION
    return Strategy(a.method, a.top_fraction, a.slice_threshold, a.lung_gate)


def _card(seed: int, threshold: float, ece: float, metrics: dict, sha: str,
          study_calibration: dict | None = None) -> ModelCard:  # fmt: skip
    spec = get_spec(ARCHITECTURE)
    return ModelCard(
        name=ARCHITECTURE,
        version=VERSION,
        architecture=ARCHITECTURE,
        input_size=spec.input_size,
        preprocessing=PREPROCESSING,
        training_domain="dicom-hu",
        slice_thickness_mm=(0.5, 5.0),
        threshold=round(threshold, 6),
        aggregation=AGGREGATION,
        calibration=Calibration(
            method=CALIBRATION if study_calibration else "none",
            ece=round(ece, 6),
            fitted_on="validation studies" if study_calibration else "",
            study=study_calibration or {},
        ),
        training_data=TrainingData(
            description=(
                f"scpnode.synth.training_slices: {N_STUDIES} synthetic chest-CT phantom studies "
                f"x {N_SLICES} slices, {MATRIX}x{MATRIX}; slice positive when lesion fraction "
                f"> {LESION_FRACTION_MIN}; no patient data"
            ),
            seed=seed,
            split=(
                f"by study, stratified, train/val/test = {SPLIT}; calibration and threshold "
                "chosen on val"
            ),
        ),
        weights_sha256=sha,
        synthetic=True,
        created_by=f"scpnode {__version__}: {shlex.join(sys.orig_argv)}",
        intended_use=INTENDED_USE,
        metrics=metrics,
    )


def _summary(card: ModelCard) -> str:
    s, t = card.metrics["slice_test"], card.metrics["study_test"]
    return (
        f"{card.name}@{card.version}: held-out slice AUC {s['auc']:.3f}; study accuracy "
        f"{t['accuracy']:.3f} (sens {t['sensitivity']:.3f}, spec {t['specificity']:.3f}, "
        f"AUC {t['auc']:.3f}, n={t['n']}) at threshold {card.threshold:.3f}; "
        f"{card.metrics['training']['wall_s']} s"
    )
