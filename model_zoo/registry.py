"""The model zoo's table of architectures, looked up by name (``[model] name`` in the config).

A :class:`ModelSpec` is all the node needs to instantiate an architecture: the input size and
a factory returning an untrained ``nn.Module`` whose output is one logit per image. Weights
and how to feed them come from the model card, not from here. The paper's torchvision models
(vgg19, vgg16, densenet169, resnet50, inception_v3, with the paper's heads) slot in by adding
a spec to ``_SPECS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from model_zoo.ctnet10 import INPUT_SIZE as CTNET10_INPUT_SIZE
from model_zoo.ctnet10 import build_ctnet10


class UnknownModelError(KeyError):
    """No architecture of that name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: ``build()`` returns a fresh, untrained module producing ``[N, 1]``."""

    name: str
    input_size: tuple[int, int]
    build: Callable[[], nn.Module]
    description: str


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="ctnet10",
        input_size=CTNET10_INPUT_SIZE,
        build=build_ctnet10,
        description=(
            "CTnet-10 (Shah et al. 2020): 4 valid 3x3 convs (32), 2 max-pools, "
            "dense 256, dropout 0.3, 1 logit; 6,918,625 parameters"
        ),
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
