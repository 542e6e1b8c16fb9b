"""``[model] precision``: fp32 on CPUs unless asked, bf16 autocast on CUDA, same probabilities
to ~1e-2; and predict's batching/look-ahead changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_zoo.preprocess import hu_batch_to_input
from scpnode.infer import engine
from scpnode.infer.engine import (
    LoadedModel,
    load_model,
    predict,
    prepare,
    resolve_batch_size,
    resolve_precision,
)
from tests.unit import test_engine
from tests.unit.test_engine import slices

weights = test_engine.weights  # fixture: a random CTnet-10 with its card

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_config_key_defaults_to_auto_and_takes_only_known_values() -> None:
    from scpnode.config import ModelSettings  # here: the GPU check runs this file without pydantic

    assert ModelSettings().precision == "auto"
    assert ModelSettings(precision="bf16").precision == "bf16"
    with pytest.raises(ValueError):
        ModelSettings(precision="fp16")


@pytest.mark.parametrize(
    ("spec", "expected"), [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"), (" BF16 ", "bf16")]
)
def test_cpu_is_fp32_unless_bf16_is_explicit(spec: str, expected: str) -> None:
    assert resolve_precision(spec, torch.device("cpu")) == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_cuda_auto_is_bf16_or_fp16_without_it(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(engine, "_cuda_bf16", lambda device: bf16)
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("bf16", "cuda:0") == expected
    assert resolve_precision("fp32", "cuda") == "fp32"


def test_unknown_precision_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.precision"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match=r"model\.precision"):
        load_model("ctnet10", tmp_path / "missing.pt", "cpu", precision="half")


def test_loaded_model_checks_its_precision(weights: Path) -> None:
    model = load_model("ctnet10", weights, "cpu")
    assert model.precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        LoadedModel(model.module, model.spec, model.card, model.device, model.identity, "fp64")


def test_fp32_predict_is_the_plain_forward_of_the_card_preprocessing(weights: Path) -> None:
    model = load_model("ctnet10", weights, "cpu", precision="fp32")
    hu = slices(5)
    pre = model.card.preprocessing
    x = hu_batch_to_input(
        hu, (128, 128), window_center=pre.window_center, window_width=pre.window_width,
        mean=pre.mean, std=pre.std, body_crop=pre.body_crop,
    )  # fmt: skip
    assert np.array_equal(prepare(model, hu), x)
    with torch.inference_mode():
        logits = model.module(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
    expected = torch.sigmoid(logits.reshape(-1).double()).numpy()
    probs = predict(model, hu, batch_size=5)
    assert probs.dtype == np.float64
    assert np.array_equal(probs, expected)
    assert np.array_equal(engine.score(model, x), expected)


def test_auto_batch_size_is_per_device_and_a_number_is_kept() -> None:
    assert resolve_batch_size("auto", "cpu") == 16  # before CTnet-10's activations leave cache
    assert resolve_batch_size("auto", torch.device("cuda:0")) == 64
    assert resolve_batch_size(24, "cpu") == 24
    with pytest.raises(ValueError, match=r"model\.batch_size"):
        resolve_batch_size(0, "cpu")


def test_look_ahead_batches_keep_order_and_values(weights: Path) -> None:
    model = load_model("ctnet10", weights, "cpu")
    hu = slices(7, seed=3)
    one_by_one = np.concatenate([predict(model, [s], batch_size=1) for s in hu])
    assert np.allclose(predict(model, hu, batch_size=3), one_by_one, rtol=0, atol=1e-6)
    assert predict(model, [], batch_size=3).shape == (0,)
    with pytest.raises(ValueError, match="batch_size"):
        predict(model, hu, batch_size=0)


def test_bf16_on_cpu_when_asked_is_close_to_fp32(weights: Path) -> None:
    hu = slices(6, seed=1)
    fp32 = predict(load_model("ctnet10", weights, "cpu", precision="fp32"), hu, batch_size=4)
    bf16_model = load_model("ctnet10", weights, "cpu", precision="bf16")
    assert bf16_model.precision == "bf16"
    bf16 = predict(bf16_model, hu, batch_size=4)
    assert bf16.dtype == np.float64
    assert not np.array_equal(bf16, fp32)  # autocast did act
    assert np.abs(bf16 - fp32).max() < 1e-2


@CUDA
def test_cuda_auto_is_bf16_and_close_to_cpu_fp32(weights: Path) -> None:
    hu = slices(9, seed=2)
    cpu = predict(load_model("ctnet10", weights, "cpu"), hu, batch_size=4)
    gpu_model = load_model("ctnet10", weights, "cuda")
    assert gpu_model.precision in ("bf16", "fp16")
    gpu = predict(gpu_model, hu, batch_size=4)
    assert gpu.dtype == np.float64
    assert np.abs(gpu - cpu).max() < 1e-2
    gpu_fp32 = predict(load_model("ctnet10", weights, "cuda", precision="fp32"), hu, batch_size=4)
    assert np.abs(gpu_fp32 - cpu).max() < 1e-4
