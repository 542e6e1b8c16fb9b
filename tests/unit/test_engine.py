"""The inference engine: device choice, verified loading, predict with the card's preprocessing."""

from pathlib import Path

import numpy as np
import pytest
import torch

from model_zoo.card import (
    Aggregation,
    Calibration,
    ModelCard,
    ModelCardError,
    Preprocessing,
    TrainingData,
    WeightsMismatch,
    save_card,
    sha256_file,
)
from model_zoo.ctnet10 import CTNet10
from model_zoo.preprocess import hu_to_input
from model_zoo.train import save_weights
from scpnode.infer.engine import DeviceError, ModelLoadError, load_model, predict, resolve_device


def make_card(sha: str, architecture: str = "ctnet10") -> ModelCard:
    return ModelCard(
        name="ctnet10-test",
        version="0.0.1",
        architecture=architecture,
        input_size=(128, 128),
        preprocessing=Preprocessing(mean=(0.3, 0.3, 0.3), std=(0.2, 0.2, 0.2)),
        training_domain="dicom-hu",
        slice_thickness_mm=(0.5, 5.0),
        threshold=0.5,
        aggregation=Aggregation(),
        calibration=Calibration(),
        training_data=TrainingData("random init"),
        weights_sha256=sha,
        synthetic=True,
        created_by="pytest",
        intended_use="research; not a medical device — test weights",
    )


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "ctnet10-test.pt"
    save_weights(CTNet10(), path)
    save_card(make_card(sha256_file(path)), path)
    return path


def slices(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        hu = np.full((96, 96), -1000.0, np.float32)
        hu[20:80, 10:86] = rng.normal(-300, 400, (60, 76))
        out.append(hu)
    return out


def test_resolve_device_cpu_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_resolve_device_cuda_without_gpu_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA device is available"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu:0", ""])
def test_resolve_device_rejects_unknown(spec: str) -> None:
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_load_model_identity_from_card(weights: Path) -> None:
    model = load_model("ctnet10", weights, "cpu")
    assert model.device == torch.device("cpu")
    assert model.identity.tag == "ctnet10-test@0.0.1"
    assert model.identity.weights_sha256 == sha256_file(weights)
    assert model.identity.synthetic is True
    assert model.identity.intended_use.startswith("research")
    assert not model.module.training


def test_predict_matches_manual_forward(weights: Path) -> None:
    model = load_model("ctnet10", weights, torch.device("cpu"))
    hu = slices(5)
    probs = predict(model, hu, batch_size=2)
    assert probs.shape == (5,) and probs.dtype == np.float64
    assert np.all((probs >= 0) & (probs <= 1))
    reference = CTNet10().eval()
    reference.load_state_dict(torch.load(weights, weights_only=True))
    x = np.stack([hu_to_input(h, (128, 128), mean=0.3, std=0.2) for h in hu])
    with torch.inference_mode():
        expected = torch.sigmoid(reference(torch.from_numpy(x))).reshape(-1).numpy()
    assert np.allclose(probs, expected, atol=1e-5)
    assert np.allclose(predict(model, hu, batch_size=32), probs, atol=1e-6)
    assert predict(model, []).shape == (0,)


def test_tampered_weights_refused(weights: Path) -> None:
    expected = sha256_file(weights)
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsMismatch) as err:
        load_model("ctnet10", weights, "cpu")
    assert expected in str(err.value) and sha256_file(weights) in str(err.value)


def test_missing_card_refused(tmp_path: Path) -> None:
    path = tmp_path / "orphan.pt"
    save_weights(CTNet10(), path)
    with pytest.raises(ModelCardError, match="not found"):
        load_model("ctnet10", path, "cpu")


def test_card_for_another_architecture_refused(weights: Path) -> None:
    save_card(make_card(sha256_file(weights), architecture="vgg19"), weights)
    with pytest.raises(ModelLoadError, match="architecture 'vgg19'"):
        load_model("ctnet10", weights, "cpu")


def test_weights_that_do_not_fit_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    torch.save({"w": torch.zeros(3)}, path)
    save_card(make_card(sha256_file(path)), path)
    with pytest.raises(ModelLoadError, match="do not fit ctnet10"):
        load_model("ctnet10", path, "cpu")
