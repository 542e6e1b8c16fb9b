"""`scpnode models train --model NAME --data DIR`: any registry model on a user's dataset.

Reads the dataset through the serving preprocessing (:mod:`scpnode.zoo_data`), trains with
:class:`model_zoo.trainer.Trainer` (seeded, resumable, early stopping, mixed precision on
CUDA), then, on the validation split only: fits a study-score calibrator for every
aggregation strategy and chooses the decision threshold on the calibrated score of the card's
own strategy. Writes the weights and their card; nothing else decides how they are served.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_zoo import paper_models as pm
from model_zoo.card import (
    Aggregation,
    Calibration,
    ModelCard,
    Preprocessing,
    TrainingData,
    save_card,
    sha256_file,
)
from model_zoo.datasets import Dataset, DatasetError, open_dataset
from model_zoo.metrics import choose_threshold, expected_calibration_error, score
from model_zoo.preprocess import LUNG_MIN_FRACTION
from model_zoo.registry import ModelSpec, get_spec
from model_zoo.train import deterministic, save_weights
from model_zoo.trainer import FitConfig, FitHistory, Trainer, predict_logits
from scpnode import __version__
from scpnode.zoo_data import Arrays, load
from scpnode.zoo_study import Strategy, fit_calibrators, strategies, study_scores

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainRequest:
    """What `models train` was asked (None: the registry spec's recipe)."""

    model: str
    data: Path
    out: Path
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    patience: int = 5
    device: str = "auto"
    pretrained: str | None = None  # "imagenet"
    checkpoint: Path | None = None
    split: str = "official"
    calibration: str = "platt"
    augment: bool = True
    version: str = "1"
    positive: str | None = None
    progress: bool = True


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def _training_set(arrays: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """HU series: only lung-bearing slices train (a slice above the lungs carries no sign of
    its study's label); image datasets: every image."""
    if arrays.lung is None:
        return arrays.images, arrays.labels
    keep = arrays.lung >= LUNG_MIN_FRACTION
    return arrays.images[keep], arrays.labels[keep]


def _build(spec: ModelSpec, req: TrainRequest, log: Log) -> torch.nn.Module:
    with deterministic(req.seed):
        model = spec.build()
    if req.pretrained == "imagenet":
        fresh = pm.load_imagenet(spec.name, model)  # PretrainedWeightsMissing: offline error
        log(f"ImageNet backbone loaded; trained from scratch: {', '.join(fresh)}")
    elif req.pretrained is not None:
        raise ValueError(f"--pretrained must be 'imagenet', got {req.pretrained!r}")
    return model


def _preprocessing(spec: ModelSpec, data: Dataset, pretrained: bool) -> Preprocessing:
    mean, std = spec.normalisation(pretrained)
    return Preprocessing(mean=mean, std=std, body_crop=data.domain == "dicom-hu")


def train_model(req: TrainRequest, *, device: torch.device, log: Log = print) -> ModelCard:
    """Train, calibrate, write ``req.out`` and its card; returns the card."""
    started = time.perf_counter()
    spec = get_spec(req.model)
    data = open_dataset(req.data, split=req.split, seed=req.seed, positive=req.positive)
    log(data.summary())
    for note in data.notes:
        log(f"note: {note}")
    leak = data.shared_groups("train", "val") | data.shared_groups("train", "test")
    if leak:
        log(f"WARNING: {len(leak)} patient(s)/studies are in train and in val/test")
    pre = _preprocessing(spec, data, req.pretrained is not None)
    train = load(data, data.subset("train"), spec.input_size, pre)
    val = load(data, data.subset("val"), spec.input_size, pre)
    x_train, y_train = _training_set(train)
    log(f"{len(x_train)} training images, {len(val.images)} validation images")
    model = _build(spec, req, log)
    req.out.parent.mkdir(parents=True, exist_ok=True)
    if req.checkpoint is not None:
        req.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    cfg = FitConfig(
        epochs=req.epochs or spec.epochs,
        batch_size=req.batch_size or spec.batch_size,
        lr=req.lr or spec.lr,
        optimizer=req.optimizer or spec.optimizer,
        seed=req.seed,
        mean=pre.mean,
        std=pre.std,
        patience=req.patience,
        augment=req.augment,
        penalties=spec.penalties,
        progress=req.progress,
    )
    trainer = Trainer(model, cfg, device, req.checkpoint, log)
    trainer.resume()
    history = trainer.fit(x_train, y_train, val.images, val.labels)
    val_probs = _sigmoid(predict_logits(trainer.model, val.images, pre.mean, pre.std))
    card = _card(req, spec, data, pre, val, val_probs, history, started)
    save_weights(trainer.model, req.out)
    card = _with_sha(card, sha256_file(req.out))
    save_card(card, req.out)
    log(f"wrote {req.out} and its card: threshold {card.threshold:.3f} "
        f"({card.aggregation.method}, calibration {card.calibration.method})")  # fmt: skip
    return card


def _card(req: TrainRequest, spec: ModelSpec, data: Dataset, pre: Preprocessing, val: Arrays,
          val_probs: np.ndarray, history: FitHistory, started: float) -> ModelCard:  # fmt: skip
    gate = val.lung is not None
    own = Strategy("mean_top_fraction", lung_gate=gate)
    order = sorted(val.group_label)
    labels = np.asarray([val.group_label[g] for g in order])
    raw = {s.key: study_scores(val_probs, val.groups, val.lung, s, order) for s in strategies(gate)}
    fitted = fit_calibrators(req.calibration, raw, labels)
    method = req.calibration if fitted else "none"
    own_scores = raw[own.key]
    if fitted:
        from model_zoo.calibration import calibrator_from_dict

        own_scores = calibrator_from_dict(fitted[own.key]).apply(own_scores)
    threshold = choose_threshold(own_scores, labels)
    study_val = score(own_scores, labels, threshold).as_dict()
    metrics = {
        "study_val": study_val,
        "training": {
            "epochs_run": len(history.train_loss),
            "best_epoch": history.best_epoch + 1,
            "stopped_early": history.stopped_early,
            "val_loss": [round(v, 5) for v in history.val_loss],
            "wall_s": round(time.perf_counter() - started, 1),
        },
    }
    if val.slice_labels:
        metrics["slice_val"] = score(val_probs, val.labels, 0.5).as_dict()
    return ModelCard(
        name=spec.name,
        version=req.version,
        architecture=spec.name,
        input_size=spec.input_size,
        preprocessing=pre,
        training_domain=data.domain,
        slice_thickness_mm=(0.5, 5.0),
        threshold=round(threshold, 6),
        aggregation=Aggregation(own.method, own.top_fraction, gate),
        calibration=Calibration(
            method=method,
            ece=round(expected_calibration_error(own_scores, labels), 6),
            fitted_on=f"validation split: {len(labels)} patients/studies",
            study=fitted,
        ),
        training_data=TrainingData(
            description=f"{data.kind} dataset at {data.root} ({data.domain})",
            seed=req.seed,
            split=f"{req.split}: {data.summary()}",
        ),
        weights_sha256="0" * 64,
        synthetic=data.kind == "synthetic-dicom",
        created_by=f"scpnode {__version__}: {shlex.join(sys.orig_argv)}",
        metrics=metrics,
        gpu_recommended=spec.gpu_recommended,
    )


def _with_sha(card: ModelCard, sha: str) -> ModelCard:
    from dataclasses import replace

    return replace(card, weights_sha256=sha)


__all__ = ["DatasetError", "TrainRequest", "train_model"]
