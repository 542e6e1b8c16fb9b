"""CTnet-10 matches the paper's layer sizes and parameter count."""

import pytest
import torch

from model_zoo.ctnet10 import FLAT_FEATURES, PARAMETER_COUNT, CTNet10
from model_zoo.registry import UnknownModelError, count_parameters, get_spec, names


def test_parameter_count_is_the_papers() -> None:
    assert PARAMETER_COUNT == 6_918_625
    assert count_parameters(CTNet10()) == 6_918_625


def test_activation_sizes_follow_the_paper() -> None:
    model = CTNet10().eval()
    x = torch.zeros(2, 3, 128, 128)
    sizes = []
    with torch.inference_mode():
        for layer in model.features:
            x = layer(x)
            if not isinstance(layer, torch.nn.ReLU):
                sizes.append(tuple(x.shape[1:]))
    assert sizes == [
        (32, 126, 126),
        (32, 124, 124),
        (32, 62, 62),
        (32, 60, 60),
        (32, 58, 58),
        (32, 29, 29),
    ]
    assert FLAT_FEATURES == 26_912


def test_output_is_one_logit_per_image_and_sigmoid_in_range() -> None:
    torch.manual_seed(0)
    model = CTNet10().eval()
    with torch.inference_mode():
        logits = model(torch.randn(4, 3, 128, 128) * 3)
    assert logits.shape == (4, 1)
    probs = torch.sigmoid(logits)
    assert torch.all((probs >= 0) & (probs <= 1))


def test_registry_builds_ctnet10() -> None:
    assert "ctnet10" in names()
    spec = get_spec("ctnet10")
    assert spec.input_size == (128, 128)
    assert count_parameters(spec.build()) == PARAMETER_COUNT


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError, match=r"known models: .*ctnet10"):
        get_spec("vgg99")
