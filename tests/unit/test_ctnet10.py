"""CTnet-10 matches the paper's layer sizes and parameter count."""

import pytest
import torch

from model_zoo.ctnet10 import CPU_TRUNK_SLICES, FLAT_FEATURES, PARAMETER_COUNT, CTNet10
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


def test_serving_on_a_cpu_runs_the_convolutions_a_few_slices_at_a_time() -> None:
    """Inference mode splits the trunk (cache-sized passes); the logits do not change."""
    torch.manual_seed(0)
    model = CTNet10().eval().to(memory_format=torch.channels_last)
    x = (torch.randn(11, 3, 128, 128) * 3).contiguous(memory_format=torch.channels_last)
    passes: list[int] = []
    model.features.register_forward_hook(lambda _m, inputs, _o: passes.append(len(inputs[0])))
    with torch.no_grad():  # gradients possible (training, Grad-CAM): one pass
        whole = model(x)
    assert passes == [11]
    passes.clear()
    with torch.inference_mode():
        split = model(x)
    assert passes == [len(part) for part in torch.arange(11).split(CPU_TRUNK_SLICES)]
    assert len(passes) > 1
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
