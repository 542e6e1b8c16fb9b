"""A seeded, generic binary training loop and the metrics the model cards record.

Inputs are already-preprocessed arrays ``[N, 3, h, w]`` (made with
:func:`model_zoo.preprocess.hu_to_input`, the serving transform) and labels ``[N]`` in {0, 1};
the model returns one logit per image. Metrics are computed in numpy so they do not depend on
an extra library, and the same functions score slices and studies.
"""

from __future__ import annotations

import copy
import io
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_zoo.metrics import expected_calibration_error, roc_auc  # also imported from here

Log = Callable[[str], None]


@dataclass
class History:
    """Per-epoch losses and where early stopping kept the weights."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    seconds: float = 0.0


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch and prefer deterministic kernels, restoring the old mode.

    The deterministic flag is process-global in torch; restoring it keeps a training run inside
    a serving process from changing how that process infers afterwards.
    """
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    random.seed(seed)
    np.random.seed(seed)  # third-party code may use the legacy global RNG
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


def _batch(x: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Gather rows (``x`` may be a broadcast view) into a channels-last tensor on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32)).to(device)
    return t.contiguous(memory_format=torch.channels_last)


def predict_logits(
    model: nn.Module, x: np.ndarray, *, batch_size: int = 32, device: torch.device | None = None
) -> np.ndarray:
    """Logits for preprocessed inputs, in eval mode without autograd."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.empty(len(x), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            idx = np.arange(start, min(start + batch_size, len(x)))
            out[idx] = model(_batch(x, idx, device)).reshape(-1).float().cpu().numpy()
    model.train(was_training)
    return out


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    logits = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(logits)
    pos = logits >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-logits[pos]))
    e = np.exp(logits[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def predict_proba(model: nn.Module, x: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Probabilities for preprocessed inputs."""
    return sigmoid(predict_logits(model, x, batch_size=batch_size))


def _bce(logits: np.ndarray, y: np.ndarray, neg_per_pos: float | None = None) -> float:
    """Mean binary cross-entropy from logits, in numpy (the validation loss).

    With ``neg_per_pos``, negatives are weighted to the class ratio training saw, so early
    stopping judges the model on the prior it was trained for.
    """
    z = np.asarray(logits, dtype=np.float64)
    loss = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    n_pos, n_neg = int((y > 0.5).sum()), int((y <= 0.5).sum())
    if neg_per_pos is None or n_pos == 0 or n_neg == 0:
        return float(np.mean(loss))
    weights = np.where(y > 0.5, 1.0, min(1.0, neg_per_pos * n_pos / n_neg))
    return float(np.sum(weights * loss) / np.sum(weights))


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    order: np.ndarray,
    batch_size: int,
) -> float:
    model.train()
    device = next(model.parameters()).device
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        target = torch.from_numpy(y[idx].astype(np.float32)).to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(_batch(x, idx, device)).reshape(-1), target)
        (loss / len(idx)).backward()
        opt.step()
        total += float(loss.detach())
    return total / len(order)


def _epoch_order(y: np.ndarray, rng: np.random.Generator, neg_per_pos: float | None) -> np.ndarray:
    """Shuffled sample indices for one epoch, negatives subsampled when asked."""
    if neg_per_pos is None:
        return rng.permutation(len(y))
    pos, neg = np.flatnonzero(y > 0.5), np.flatnonzero(y <= 0.5)
    n_neg = min(len(neg), max(1, round(neg_per_pos * len(pos))))
    return rng.permutation(np.concatenate([pos, rng.choice(neg, n_neg, replace=False)]))


def train_binary(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Log = print,
    patience: int = 2,
    neg_per_pos: float | None = None,
    lr_decay: float = 1.0,
) -> History:
    """Adam + BCE-with-logits, seeded; keeps the weights of the epoch with the best val loss.

    Stops after ``patience`` epochs without improvement. ``neg_per_pos`` draws, each epoch, a
    fresh random subset of that many negatives per positive (all positives are kept): with rare
    positives this spends the compute where the signal is. The learning rate is multiplied by
    ``lr_decay`` after every epoch (large steps early, settling late). The model is modified in
    place (and converted to channels-last memory, ~2x faster convolutions on CPU).
    """
    hist, t0 = History(), time.perf_counter()
    y_train, y_val = np.asarray(y_train, np.float32), np.asarray(y_val, np.float32)
    with deterministic(seed):
        model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=lr_decay)
        rng, best_state, best = np.random.default_rng(seed), None, np.inf
        for epoch in range(epochs):
            order = _epoch_order(y_train, rng, neg_per_pos)
            hist.train_loss.append(_train_epoch(model, opt, x_train, y_train, order, batch_size))
            schedule.step()
            val_logits = predict_logits(model, x_val, batch_size=max(batch_size, 64))
            hist.val_loss.append(_bce(val_logits, y_val, neg_per_pos))
            log(
                f"epoch {epoch + 1}/{epochs}: train loss {hist.train_loss[-1]:.4f}, "
                f"val loss {hist.val_loss[-1]:.4f} ({time.perf_counter() - t0:.0f} s)"
            )
            if hist.val_loss[-1] < best:
                best, hist.best_epoch = hist.val_loss[-1], epoch
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - hist.best_epoch >= patience:
                hist.stopped_early = True
                break
        if best_state is not None:
            model.load_state_dict(best_state)
    model.eval()
    hist.seconds = time.perf_counter() - t0
    return hist


def save_weights(model: nn.Module, path: Path | str) -> None:
    """Write the state dict (contiguous CPU tensors) for ``torch.load(weights_only=True)``.

    Serialised through a buffer: saved to a path, torch names the archive after the file, so
    the same weights written under a temporary name would hash differently.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(path).write_bytes(buffer.getvalue())


# --- metrics ------------------------------------------------------------------------------


def evaluate(
    probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5
) -> dict[str, float | int | None]:
    """Accuracy, sensitivity, specificity at ``threshold``, plus AUC and ECE."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(bool)
    pred = probs >= threshold
    tp, tn = int((pred & labels).sum()), int((~pred & ~labels).sum())
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return {
        "n": len(labels),
        "n_positive": n_pos,
        "threshold": float(threshold),
        "accuracy": (tp + tn) / len(labels) if len(labels) else None,
        "sensitivity": tp / n_pos if n_pos else None,
        "specificity": tn / n_neg if n_neg else None,
        "auc": roc_auc(probs, labels),
        "ece": expected_calibration_error(probs, labels) if len(labels) else None,
    }
