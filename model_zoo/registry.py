"""The model zoo's table of architectures, looked up by name (``[model] name`` in the config).

A :class:`ModelSpec` is all the node and the trainer need to know about an architecture: its
input size, a factory returning an untrained ``nn.Module`` whose output is one logit per image,
and the paper's training recipe (optimizer, learning rate, regularization). Weights and how to
feed them come from the model card, not from here.

Recipes follow the paper where it says something (VGG-19: Adam at Keras' default rate, batch
32; VGG-16: RMSprop 2e-5; DenseNet-169: RMSprop 1e-4; InceptionV3: L1/L2 0.01 on its dense
layers) and are marked as our choice where it does not (CTnet-10, ResNet-50, InceptionV3's
optimizer: Adam 1e-3 or 1e-4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from model_zoo import paper_models as pm
from model_zoo.ctnet10 import INPUT_SIZE as CTNET10_INPUT_SIZE
from model_zoo.ctnet10 import build_ctnet10

Norm3 = tuple[float, float, float]


class UnknownModelError(KeyError):
    """No architecture of that name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class Penalty:
    """A Keras-style weight regularizer: ``coef * sum(|w|)`` (l1) or ``coef * sum(w**2)`` (l2)
    over the weight (not bias) of the module at ``module``."""

    module: str
    kind: str
    coef: float


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: ``build()`` returns a fresh, untrained module producing ``[N, 1]``."""

    name: str
    input_size: tuple[int, int]
    build: Callable[[], nn.Module]
    description: str
    optimizer: str = "adam"  # adam | rmsprop
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 30
    head: tuple[str, ...] = ()  # state-dict prefixes of the layers the paper adds
    penalties: tuple[Penalty, ...] = ()
    gpu_recommended: bool = False
    paper_accuracy: float | None = None  # Shah et al. 2020, 73-image random test split
    recipe_source: str = "paper"
    mean: Norm3 = (0.5, 0.5, 0.5)  # normalisation when trained from scratch
    std: Norm3 = (0.25, 0.25, 0.25)

    @property
    def imagenet(self) -> pm.ImagenetWeights | None:
        return pm.IMAGENET.get(self.name)

    def normalisation(self, pretrained: bool) -> tuple[Norm3, Norm3]:
        """(mean, std) of the input: the checkpoint's own when fine-tuning ImageNet weights."""
        if not pretrained:
            return self.mean, self.std
        if self.name == "inception_v3":
            return pm.INCEPTION_MEAN, pm.INCEPTION_STD
        return pm.IMAGENET_MEAN, pm.IMAGENET_STD


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="ctnet10",
        input_size=CTNET10_INPUT_SIZE,
        build=build_ctnet10,
        description=(
            "CTnet-10 (Shah et al. 2020): 4 valid 3x3 convs (32), 2 max-pools, "
            "dense 256, dropout 0.3, 1 logit; 6,918,625 parameters"
        ),
        head=("classifier.",),
        paper_accuracy=0.821,
        recipe_source="ours (the paper gives no optimizer for CTnet-10)",
        std=(0.3, 0.3, 0.3),
    ),
    ModelSpec(
        name="vgg19",
        input_size=(224, 224),
        build=pm.build_vgg19,
        description="VGG-19 (torchvision), ImageNet conv blocks, 2x FC-4096 dropout 0.3, 1 logit",
        head=("classifier.",),
        gpu_recommended=True,
        paper_accuracy=0.9452,
    ),
    ModelSpec(
        name="vgg16",
        input_size=(150, 150),
        build=pm.build_vgg16,
        description="VGG-16 (torchvision) at 150x150, 2x FC-4096, last layer 1 logit (sigmoid)",
        optimizer="rmsprop",
        lr=2e-5,
        head=("classifier.6.",),
        gpu_recommended=True,
        paper_accuracy=0.89,
    ),
    ModelSpec(
        name="densenet169",
        input_size=(224, 224),
        build=pm.build_densenet169,
        description="DenseNet-169 (torchvision), classifier Linear(1664, 1)",
        optimizer="rmsprop",
        lr=1e-4,
        head=("classifier.",),
        paper_accuracy=0.9315,
    ),
    ModelSpec(
        name="resnet50",
        input_size=(224, 224),
        build=pm.build_resnet50,
        description="ResNet-50 (torchvision) without its top, new head dropout 0.5 + 1 logit",
        lr=1e-4,
        head=("fc.",),
        paper_accuracy=0.60,
        recipe_source="ours for the optimizer (the paper gives none for ResNet-50)",
    ),
    ModelSpec(
        name="inception_v3",
        input_size=(224, 224),
        build=pm.build_inception_v3,
        description=(
            "InceptionV3 (torchvision) at 224x224, no aux head, dense 1000 (L1 0.01) "
            "+ 500 (L2 0.01) + 1 logit"
        ),
        lr=1e-4,
        head=("fc.",),
        penalties=(Penalty("fc.0", "l1", 0.01), Penalty("fc.2", "l2", 0.01)),
        paper_accuracy=0.534,
        recipe_source="paper for the head; ours for the optimizer",
    ),
)


def names() -> list[str]:
    """Registered architecture names, in registration order."""
    return [spec.name for spec in _SPECS]


def get_spec(name: str) -> ModelSpec:
    """The spec called ``name``; an unknown name raises :class:`UnknownModelError`."""
    for spec in _SPECS:
        if spec.name == name:
            return spec
    raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(names())}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not), as `models list` reports it."""
    return sum(p.numel() for p in model.parameters())


def parameter_count(spec: ModelSpec) -> int:
    """Parameters of ``spec`` without allocating them (built on the meta device, ~0.1 s even
    for VGG-19's 140 M): `models list` stays instant."""
    with torch.device("meta"):
        return count_parameters(spec.build())
