"""The zoo's trainer: seeded, resumable to the bit, early stopping keeps the best epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model_zoo.trainer import FitConfig, Trainer


def _data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.float32)
    x = rng.random((n, 16, 16), dtype=np.float32) * 0.5
    x[y == 1, 4:10, 4:10] += 0.5  # a bright square makes a positive
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 1))  # fmt: skip


def _cfg(epochs: int, patience: int = 10) -> FitConfig:
    return FitConfig(
        epochs=epochs, batch_size=8, lr=1e-2, optimizer="adam", seed=5,
        mean=(0.5,) * 3, std=(0.25,) * 3, patience=patience, progress=False,
    )  # fmt: skip


def _fit(epochs: int, ckpt: Path | None, resume: bool = False) -> Trainer:
    trainer = Trainer(_model(), _cfg(epochs), torch.device("cpu"), ckpt, log=lambda _m: None)
    if resume:
        assert trainer.resume()
    trainer.fit(*_data(0, 48), *_data(1, 16))
    return trainer


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    whole = _fit(4, None)
    _fit(2, tmp_path / "run.ckpt")  # "interrupted" after epoch 2
    resumed = _fit(4, tmp_path / "run.ckpt", resume=True)
    assert resumed.history.resumed_at_epoch == 2
    assert resumed.history.val_loss == whole.history.val_loss
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    assert whole.history.val_accuracy[-1] > 0.8  # it learned the square


def test_early_stopping_restores_the_best_epoch() -> None:
    trainer = Trainer(_model(), _cfg(30, patience=1), torch.device("cpu"), None, lambda _m: None)
    x, y = _data(0, 48)
    xv, yv = _data(1, 16)
    h = trainer.fit(x, y, xv, 1.0 - yv)  # validation labels flipped: it only gets worse
    assert h.stopped_early and len(h.val_loss) < 30
    assert h.best_epoch == int(np.argmin(h.val_loss))


def test_keras_style_penalties_on_the_named_layers_weights() -> None:
    from model_zoo.registry import Penalty, get_spec
    from model_zoo.trainer import penalty

    model = _model()
    w, w0 = model[4].weight.detach(), model[0].weight.detach()
    got = penalty(model, [Penalty("4", "l1", 0.01), Penalty("0", "l2", 0.5)])
    assert float(torch.as_tensor(got).detach()) == pytest.approx(
        0.01 * float(w.abs().sum()) + 0.5 * float(w0.pow(2).sum()), rel=1e-5
    )
    assert [p.module for p in get_spec("inception_v3").penalties] == ["fc.0", "fc.2"]
