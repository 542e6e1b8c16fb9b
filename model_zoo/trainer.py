"""The zoo's training loop: any registry model, CPU or CUDA (mixed precision), seeded, resumable.

Inputs are window-fraction images ``float32 [N, h, w]`` made by the serving transform
(:func:`model_zoo.preprocess.hu_to_image` / ``gray8_to_image``); each batch is augmented (on
the device, in the window domain, where 0 is air: rotations, zoom, shifts, contrast) and
normalised per channel exactly like :func:`model_zoo.preprocess.normalise`.

Reproducibility: every epoch seeds its own shuffle, augmentation and dropout from
``(seed, epoch)``, and a checkpoint after every epoch holds model, optimizer, scaler, history
and the best weights, so a run resumed from any epoch ends with the weights an uninterrupted
run would have had (bit for bit on CPU). Early stopping keeps the weights of the epoch with the
best validation loss, like Keras' ``EarlyStopping(restore_best_weights=True)``.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model_zoo.metrics import roc_auc
from model_zoo.registry import Penalty
from model_zoo.train import deterministic

Log = Callable[[str], None]
Norm3 = tuple[float, float, float]


@dataclass(frozen=True)
class FitConfig:
    """How to train; the defaults of each model come from its registry spec."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str  # adam | rmsprop
    seed: int
    mean: Norm3
    std: Norm3
    patience: int = 5
    augment: bool = True
    amp: bool = True  # mixed precision where it pays (CUDA); ignored on CPU
    neg_per_pos: float | None = None  # draw this many negatives per positive each epoch
    lr_decay: float = 1.0  # multiply the learning rate by this after every epoch
    penalties: tuple[Penalty, ...] = ()
    trainable: tuple[str, ...] = ()  # only these state-dict prefixes train (empty: all)
    progress: bool = True


@dataclass
class FitHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_auc: list[float | None] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    resumed_at_epoch: int | None = None
    seconds: float = 0.0


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """Adam or RMSprop with Keras' defaults (rho 0.9, epsilon 1e-7), as the paper used them."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, eps=1e-7)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)
    raise ValueError(f"optimizer must be adam or rmsprop, got {name!r}")


def normalise_batch(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[B, h, w]`` window fractions → ``[B, 3, h, w]``: preprocess.normalise, in torch."""
    m = torch.tensor(mean, dtype=torch.float32, device=x01.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x01.device).view(1, 3, 1, 1)
    return (x01.float().unsqueeze(1).expand(-1, 3, -1, -1) - m) / s


def augment_batch(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (±10°), zoom (0.9-1.1), shift (±6 %) and contrast/brightness jitter.

    Geometry is resampled with zero padding, and zero is air in the window domain, so nothing
    that is not anatomy enters the picture. No flips: a chest is not left-right symmetric.
    """
    b = x01.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * (hi - lo) + lo).to(x01.device)

    angle = uniform(-10.0, 10.0) * math.pi / 180.0
    scale = uniform(0.9, 1.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, uniform(-0.06, 0.06)], 1),
         torch.stack([sin, cos, uniform(-0.06, 0.06)], 1)], 1,
    )  # fmt: skip
    grid = nn.functional.affine_grid(theta, [b, 1, *x01.shape[1:]], align_corners=False)
    out = nn.functional.grid_sample(
        x01.float().unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).squeeze(1)
    contrast, brightness = uniform(0.9, 1.1), uniform(-0.04, 0.04)
    return (out * contrast.view(b, 1, 1) + brightness.view(b, 1, 1)).clamp_(0.0, 1.0)


def penalty(model: nn.Module, penalties: Sequence[Penalty]) -> torch.Tensor | float:
    """Keras-style kernel regularizers: coef * sum|w| (l1) or coef * sum w² (l2)."""
    total: torch.Tensor | float = 0.0
    for p in penalties:
        weight = model.get_submodule(p.module).get_parameter("weight")
        term = weight.abs().sum() if p.kind == "l1" else weight.pow(2).sum()
        total = total + p.coef * term
    return total


def logits_of(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Main and auxiliary logits: Inception-style outputs carry an aux head in training."""
    if isinstance(output, torch.Tensor):
        return output.reshape(-1), None
    main, aux = output[0], output[1] if len(output) > 1 else None
    return main.reshape(-1), None if aux is None else aux.reshape(-1)


def _autocast(device: torch.device, amp: bool) -> tuple[Any, torch.dtype | None]:
    """(context, dtype): bf16 autocast on CUDA GPUs that have it, else fp16; off on CPU."""
    if not amp or device.type != "cuda":
        return torch.autocast(device.type, enabled=False), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _epoch_order(y: np.ndarray, rng: np.random.Generator, neg_per_pos: float | None) -> np.ndarray:
    if neg_per_pos is None:
        return rng.permutation(len(y))
    pos, neg = np.flatnonzero(y > 0.5), np.flatnonzero(y <= 0.5)
    n_neg = min(len(neg), max(1, round(neg_per_pos * max(1, len(pos)))))
    return rng.permutation(np.concatenate([pos, rng.choice(neg, n_neg, replace=False)]))


def predict_logits(
    model: nn.Module, images: np.ndarray, mean: Norm3, std: Norm3, *, batch_size: int = 64
) -> np.ndarray:
    """Logits of window-fraction images in eval mode (no augmentation, no autograd)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.empty(len(images), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            x = normalise_batch(chunk.to(device), mean, std)
            main, _ = logits_of(model(x.contiguous(memory_format=torch.channels_last)))
            out[start : start + len(chunk)] = main.float().cpu().numpy()
    model.train(was_training)
    return out


def _bce(logits: np.ndarray, y: np.ndarray) -> float:
    z = np.asarray(logits, np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


class Trainer:
    """One training run (see the module docstring); ``fit`` returns its history."""

    def __init__(self, model: nn.Module, cfg: FitConfig, device: torch.device,
                 checkpoint: Path | None = None, log: Log = print) -> None:  # fmt: skip
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.cfg, self.device, self.checkpoint, self.log = cfg, device, checkpoint, log
        if cfg.trainable:
            for name, param in self.model.named_parameters():
                param.requires_grad_(name.startswith(cfg.trainable))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(cfg.optimizer, params, cfg.lr)
        self.schedule = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=cfg.lr_decay)
        self.autocast, self.amp_dtype = _autocast(device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.history = FitHistory()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.start_epoch = 0

    # -- checkpoints --------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from ``checkpoint`` if it exists; True when it did."""
        if self.checkpoint is None or not self.checkpoint.is_file():
            return False
        state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        if state.get("seed") != self.cfg.seed:
            raise ValueError(
                f"checkpoint {self.checkpoint} is from seed {state.get('seed')}, not "
                f"{self.cfg.seed}; delete it or train with that seed"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = FitHistory(**state["history"])
        self.best_state = state["best_state"]
        self.start_epoch = int(state["epoch"]) + 1
        self.history.resumed_at_epoch = self.start_epoch
        self.log(f"resumed from {self.checkpoint} after epoch {self.start_epoch}")
        return True

    def _save_checkpoint(self, epoch: int) -> None:
        if self.checkpoint is None:
            return
        state = {
            "seed": self.cfg.seed,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": asdict(self.history),
            "best_state": self.best_state,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(self.checkpoint)

    # -- the loop -----------------------------------------------------------------------
    def fit(self, x_train: np.ndarray, y_train: np.ndarray,
            x_val: np.ndarray, y_val: np.ndarray) -> FitHistory:  # fmt: skip
        """Train until ``epochs`` or early stopping; the model ends with the best weights."""
        started = time.perf_counter() - self.history.seconds
        y_train, y_val = np.asarray(y_train, np.float32), np.asarray(y_val, np.float32)
        with deterministic(self.cfg.seed):
            for epoch in range(self.start_epoch, self.cfg.epochs):
                if self._stop_now(epoch):
                    break
                self.history.train_loss.append(self._train_epoch(x_train, y_train, epoch))
                self.schedule.step()
                self._validate(x_val, y_val, epoch, started)
                self.history.seconds = time.perf_counter() - started
                self._save_checkpoint(epoch)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        return self.history

    def _stop_now(self, epoch: int) -> bool:
        h = self.history
        if h.best_epoch >= 0 and epoch - 1 - h.best_epoch >= self.cfg.patience:
            h.stopped_early = True
            return True
        return False

    def _train_epoch(self, x: np.ndarray, y: np.ndarray, epoch: int) -> float:
        cfg, seed = self.cfg, _epoch_seed(self.cfg.seed, epoch)
        torch.manual_seed(seed)  # dropout
        order = _epoch_order(y, np.random.default_rng(seed), cfg.neg_per_pos)
        gen = torch.Generator().manual_seed(seed)
        loss_fn, total = nn.BCEWithLogitsLoss(), 0.0
        self.model.train()
        batches = range(0, len(order), cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not cfg.progress, unit="batch")  # fmt: skip
        for start in bar:
            idx = np.sort(order[start : start + cfg.batch_size])
            xb = torch.from_numpy(np.ascontiguousarray(x[idx])).to(self.device)
            xb = augment_batch(xb, gen) if cfg.augment else xb
            xb = normalise_batch(xb, cfg.mean, cfg.std)
            xb = xb.contiguous(memory_format=torch.channels_last)
            target = torch.from_numpy(y[idx]).to(self.device)
            self.opt.zero_grad(set_to_none=True)
            with self.autocast:
                main, aux = logits_of(self.model(xb))
                loss = loss_fn(main.float(), target)
                if aux is not None:  # Inception's auxiliary classifier, weight 0.4
                    loss = loss + 0.4 * loss_fn(aux.float(), target)
            loss = loss + penalty(self.model, cfg.penalties)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            total += float(loss.detach()) * len(idx)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        return total / max(1, len(order))

    def _validate(self, x: np.ndarray, y: np.ndarray, epoch: int, started: float) -> None:
        cfg, h = self.cfg, self.history
        batch = max(64, cfg.batch_size)
        logits = predict_logits(self.model, x, cfg.mean, cfg.std, batch_size=batch)
        h.val_loss.append(_bce(logits, y))
        h.val_accuracy.append(float(((logits >= 0) == (y > 0.5)).mean()) if len(y) else math.nan)
        h.val_auc.append(roc_auc(logits, y))
        if h.best_epoch < 0 or h.val_loss[-1] < h.val_loss[h.best_epoch]:
            h.best_epoch = epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        auc = h.val_auc[-1]
        self.log(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {h.train_loss[-1]:.4f}, val loss "
            f"{h.val_loss[-1]:.4f}, val acc {h.val_accuracy[-1]:.3f}, val AUC "
            f"{'n/a' if auc is None else f'{auc:.3f}'}"
            f"{' *' if h.best_epoch == epoch else ''} ({time.perf_counter() - started:.0f} s)"
        )
