"""Grad-CAM: slice geometry, range, determinism, no side effects on the model, localisation."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model_zoo.ctnet10 import CTNet10
from model_zoo.preprocess import crop_window
from model_zoo.registry import ModelSpec
from scpnode import synth
from scpnode.domain import ModelIdentity
from scpnode.infer.engine import LoadedModel, load_model
from scpnode.infer.gradcam import grad_cam
from tests.unit import test_engine
from tests.unit.test_engine import make_card, slices

weights = test_engine.weights  # fixture: a random CTnet-10 with its card, as the engine tests
IDENTITY = ModelIdentity("tiny", "0", "0" * 64, synthetic=True)


def _wrap(module: nn.Module, input_size: tuple[int, int] = (128, 128)) -> LoadedModel:
    """Serve any module under the test card (grad_cam reads only card, module and device)."""
    card = dataclasses.replace(make_card("0" * 64), input_size=input_size)
    spec = ModelSpec("tiny", input_size, lambda: module, "test module")
    return LoadedModel(module.eval(), spec, card, torch.device("cpu"), IDENTITY)


def _outside(window: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    top, left, side = window
    mask = np.ones(shape, dtype=bool)
    mask[max(top, 0) : top + side, max(left, 0) : left + side] = False
    return mask


@pytest.fixture(scope="module")
def ct_slice() -> np.ndarray:
    """A synthetic 512x512 chest slice (HU), as the node receives them."""
    vol, _ = synth.render_volume(synth.make_study_spec(3, n_slices=1))
    return vol[0]


def test_shape_range_and_zero_outside_the_crop(weights: Path, ct_slice: np.ndarray) -> None:
    model = load_model("ctnet10", weights, "cpu")
    wide = np.full((80, 120), -1000.0, np.float32)
    wide[10:70, 30:110] = -300.0
    hu = [ct_slice, *slices(2), wide]
    maps = grad_cam(model, hu)
    assert len(maps) == len(hu)
    for heat, h in zip(maps, hu, strict=True):
        assert heat.shape == h.shape and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() <= 1.0
        assert heat.max() == pytest.approx(1.0) or not heat.any()
        window = crop_window(h)
        assert window is not None
        assert not heat[_outside(window, h.shape)].any()


def test_deterministic_and_the_model_is_left_alone(weights: Path) -> None:
    model = load_model("ctnet10", weights, "cpu")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    first = model.module.features[0]
    first.weight.requires_grad_(False)  # a mixed state must come back as it was
    flags = [p.requires_grad for p in model.module.parameters()]
    model.module.train()
    hu = slices(3)
    a = grad_cam(model, hu)
    with torch.inference_mode():  # callers inside inference mode still get their maps
        b = grad_cam(model, hu, batch_size=2)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, grad_cam(model, hu), strict=True))
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(a, b, strict=True))
    assert model.module.training  # mode restored
    assert [p.requires_grad for p in model.module.parameters()] == flags
    assert all(p.grad is None for p in model.module.parameters())
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_no_evidence_gives_an_all_zero_map(weights: Path) -> None:
    model = load_model("ctnet10", weights, "cpu")
    module = copy.deepcopy(model.module)
    with torch.no_grad():
        module.classifier[-1].weight.zero_()  # the logit no longer depends on the features
    (heat,) = grad_cam(_wrap(module), slices(1))
    assert heat.shape == (96, 96) and not heat.any() and not np.isnan(heat).any()


def _bright_only() -> nn.Sequential:
    """Feature map = bright pixels only (a 3x3 valid identity tap, a threshold via the bias),
    pooled and tapped again: stride 2 and a 3-pixel margin on the input grid, like CTnet-10."""
    module = nn.Sequential(
        nn.Conv2d(3, 1, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(1, 1, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(61 * 61, 1),
    )  # fmt: skip
    with torch.no_grad():
        for conv in (module[0], module[3]):
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = 1.0 / conv.in_channels
            conv.bias.zero_()
        module[0].bias.fill_(-2.5)  # body (-450 HU → 1.5 after the card's norm) stays dark
        module[6].weight.fill_(1.0)
    return module


def test_heat_lands_on_the_slice_pixels_it_came_from() -> None:
    """Off-centre, non-square slice whose crop reaches past the image edge: the heat of a small
    bright blob must come back on the blob (centroid within a pixel)."""
    hu = np.full((150, 220), -1000.0, np.float32)
    hu[5:145, 20:120] = -450.0
    yy, xx = np.mgrid[:150, :220]
    blob = (yy - 100) ** 2 + (xx - 60) ** 2 <= 5**2
    hu[blob] = 300.0
    (heat,) = grad_cam(_wrap(_bright_only()), [hu])
    centroid = np.array([(yy * heat).sum(), (xx * heat).sum()]) / heat.sum()
    assert np.abs(centroid - [100, 60]).max() < 1.0
    window = crop_window(hu)
    assert window is not None and window[0] < 0  # the padded part of the crop was exercised
    assert not heat[_outside(window, hu.shape)].any()


def _ggo_ctnet10() -> CTNet10:
    """CTnet-10 with hand-set weights whose logit is the amount of ground glass in the slice.

    Conv channel 0 is a band detector (denser than lung, lighter than soft tissue, and not next
    to soft tissue, so partial-volume edges stay dark); channel 1 detects soft tissue, fires
    over the whole body wall and is carried to the last feature map, but the dense head never
    reads it: Grad-CAM must weight it zero.
    """
    model = CTNet10()
    conv1, conv2, conv3, conv4 = (model.features[i] for i in (0, 2, 5, 7))
    dense, out = model.classifier[1], model.classifier[4]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        conv1.weight[:2, :, 1, 1] = 1.0 / 3.0  # the 3 input channels are the same grey
        conv1.bias[:2] = torch.tensor([-1.0, -2.5])  # > lung (0.17) / > GGO (2.0) after norm
        conv2.weight[0, 0], conv2.weight[0, 1] = 1.0 / 9.0, -8.0 / 9.0
        conv2.weight[1, 1, 1, 1] = 1.0
        for conv in (conv3, conv4):
            conv.weight[0, 0, 1, 1] = conv.weight[1, 1, 1, 1] = 1.0
        dense.weight[0, : 29 * 29] = 1.0  # channel 0 of the flattened 32x29x29 map
        dense.bias[0] = 0.1  # keep the unit active without ground glass too
        out.weight[0, 0] = 1.0
    return model


def _phantom_with_ggo() -> tuple[np.ndarray, np.ndarray]:
    """512x512 HU: body, two lungs, one ground-glass blob (-300 HU) in one lung, noise."""
    yy, xx = np.mgrid[:512, :512] / 512
    hu = np.full((512, 512), -1000.0, np.float32)
    hu[((yy - 0.5) / 0.32) ** 2 + ((xx - 0.5) / 0.42) ** 2 < 1] = 40.0
    for cx in (0.32, 0.68):
        hu[((yy - 0.5) / 0.22) ** 2 + ((xx - cx) / 0.13) ** 2 < 1] = -850.0
    blob = (yy - 0.45) ** 2 + (xx - 0.3) ** 2 < 0.05**2
    hu[blob] = -300.0
    return hu + np.random.default_rng(0).normal(0, 20, hu.shape).astype(np.float32), blob


def test_heat_concentrates_where_the_logit_looks() -> None:
    hu, blob = _phantom_with_ggo()
    model = _wrap(_ggo_ctnet10())
    (heat,) = grad_cam(model, [hu])
    assert heat[blob].mean() > 0.5
    assert heat[blob].mean() > 10.0 * heat[~blob].mean()
    assert blob[np.unravel_index(np.argmax(heat), heat.shape)]
    # the soft-tissue channel is the most active feature, but the logit ignores it
    assert heat[hu > -100].mean() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(weights: Path, ct_slice: np.ndarray) -> None:
    cpu = grad_cam(load_model("ctnet10", weights, "cpu"), [ct_slice, *slices(2)])
    gpu = grad_cam(load_model("ctnet10", weights, "cuda"), [ct_slice, *slices(2)])
    assert all(np.allclose(a, b, atol=2e-3) for a, b in zip(cpu, gpu, strict=True))
