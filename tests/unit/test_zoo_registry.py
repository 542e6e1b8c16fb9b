"""The six paper architectures: torchvision models with the paper's heads, one logit each."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_zoo import paper_models as pm
from model_zoo.registry import count_parameters, get_spec, names, parameter_count

PAPER = ("ctnet10", "vgg19", "vgg16", "densenet169", "resnet50", "inception_v3")


def test_registry_holds_the_papers_six_models_at_their_input_sizes() -> None:
    assert set(PAPER) <= set(names())
    sizes = {n: get_spec(n).input_size for n in PAPER}
    assert sizes == {
        "ctnet10": (128, 128),
        "vgg19": (224, 224),
        "vgg16": (150, 150),
        "densenet169": (224, 224),
        "resnet50": (224, 224),
        "inception_v3": (224, 224),
    }
    assert parameter_count(get_spec("ctnet10")) == 6_918_625
    assert get_spec("vgg19").gpu_recommended and get_spec("vgg16").gpu_recommended
    assert not get_spec("ctnet10").gpu_recommended


def _linears(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def _head(name: str, model: nn.Module) -> nn.Module:
    return model.fc if name in ("resnet50", "inception_v3") else model.classifier


HEADS = {
    "ctnet10": [(26912, 256), (256, 1)],
    "vgg19": [(25088, 4096), (4096, 4096), (4096, 1)],
    "vgg16": [(25088, 4096), (4096, 4096), (4096, 1)],
    "densenet169": [(1664, 1)],
    "resnet50": [(2048, 1)],
    "inception_v3": [(2048, 1000), (1000, 500), (500, 1)],
}


@pytest.mark.parametrize("name", PAPER)
def test_each_model_has_the_papers_head_and_one_logit_per_image(name: str) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build().eval()
    assert _linears(_head(name, model)) == HEADS[name]
    assert count_parameters(model) == parameter_count(spec)
    if name == "vgg19":  # the paper's dropout 0.3 between the FC-4096 layers
        assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.3, 0.3]
    if name == "inception_v3":
        assert model.AuxLogits is None
    with torch.inference_mode():
        out = model(torch.rand(2, 3, *spec.input_size))
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()


def test_pretrained_weights_missing_names_the_file_and_the_folder(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(pm.PretrainedWeightsMissing) as err:
        pm.imagenet_checkpoint("vgg19")
    text = str(err.value)
    assert "vgg19-dcbb9e9d.pth" in text
    assert str(tmp_path / "hub" / "checkpoints") in text
    assert "Nothing is downloaded" in text
    with pytest.raises(ValueError, match="no ImageNet weights"):
        pm.imagenet_checkpoint("ctnet10")


def test_imagenet_backbone_loads_and_the_paper_head_stays_fresh(tmp_path) -> None:
    """A checkpoint laid out like torchvision's (ImageNet 1000-way top) fits ResNet-50."""
    from torchvision.models import resnet50

    torch.manual_seed(1)
    source = resnet50(weights=None)
    path = tmp_path / "resnet50-any.pth"
    torch.save(source.state_dict(), path)
    model = pm.build_resnet50()
    fresh = model.fc[1].weight.clone()
    left = pm.load_imagenet("resnet50", model, path)
    assert set(left) == {"fc.1.weight", "fc.1.bias"}
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.fc[1].weight, fresh)
