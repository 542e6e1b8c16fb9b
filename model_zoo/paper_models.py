"""The five torchvision networks Shah et al. 2020 compare with CTnet-10, with the paper's heads.

torchvision architectures, not re-implementations; only the classifier heads change, to what
the paper's methodology section describes (each returns one logit; the sigmoid is applied at
prediction and inside ``BCEWithLogitsLoss``, as for CTnet-10):

- VGG-19, 224x224: ImageNet convolutional blocks, two new FC-4096 layers with dropout 0.3,
  one output. torchvision's ``vgg19(dropout=0.3, num_classes=1)`` is exactly that head.
- VGG-16, 150x150: "2 FC and a softmax, the softmax replaced by a sigmoid": torchvision's
  classifier with its last layer made ``Linear(4096, 1)``. Its adaptive 7x7 pool takes the
  4x4 map a 150x150 input leaves, so the ImageNet FC layers still fit.
- DenseNet-169, 224x224: ``Linear(1664, 1)``.
- ResNet-50, 224x224, "no top": the ImageNet 1000-way layer dropped, a new head
  ``Dropout(0.5) → Linear(2048, 1)`` (the paper's "50 layers of dropout" read as rate 0.5).
- InceptionV3 at 224x224 as the paper: new head ``Linear(2048, 1000) → ReLU → Linear(1000, 500)
  → ReLU → Linear(500, 1)`` with L1 0.01 on the first and L2 0.01 on the second dense layer's
  weights (applied by the trainer, as Keras regularizers). The auxiliary classifier is left
  out: Keras' InceptionV3 has none, and torchvision's cannot run on a 224 input (its 5x5
  convolution meets a 3x3 map); its ImageNet weights are skipped when loading.

``--pretrained imagenet`` loads torchvision's ImageNet weights (the enums below) from the torch
hub cache only — this project downloads nothing — and checks the hash prefix in the file name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Google's Inception weights expect [-1, 1]: torchvision's ``transform_input`` does this for
#: ImageNet-normalised input; we normalise straight to it (transform_input stays off).
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


class PretrainedWeightsMissing(FileNotFoundError):
    """The ImageNet checkpoint is not in the torch hub cache; the message says where to put it."""


@dataclass(frozen=True)
class ImagenetWeights:
    """Which torchvision enum provides a model's ImageNet weights, and which keys not to load."""

    enum: str  # e.g. "VGG19_Weights.IMAGENET1K_V1"
    skip: tuple[str, ...]  # state-dict key prefixes replaced by the paper's head (or dropped)

    def weights(self) -> tvm.WeightsEnum:
        cls, member = self.enum.split(".")
        return getattr(getattr(tvm, cls), member)  # type: ignore[no-any-return]

    @property
    def file_name(self) -> str:
        return str(self.weights().url).rsplit("/", 1)[-1]


def build_vgg19() -> nn.Module:
    return tvm.vgg19(weights=None, dropout=0.3, num_classes=1)


def build_vgg16() -> nn.Module:
    return tvm.vgg16(weights=None, num_classes=1)


def build_densenet169() -> nn.Module:
    return tvm.densenet169(weights=None, num_classes=1)


def build_resnet50() -> nn.Module:
    model = tvm.resnet50(weights=None)
    model.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(2048, 1))
    return model


def build_inception_v3() -> nn.Module:
    model = tvm.inception_v3(
        weights=None, aux_logits=False, transform_input=False, init_weights=True
    )
    model.fc = nn.Sequential(
        nn.Linear(2048, 1000),
        nn.ReLU(inplace=True),
        nn.Linear(1000, 500),
        nn.ReLU(inplace=True),
        nn.Linear(500, 1),
    )
    return model


IMAGENET: dict[str, ImagenetWeights] = {
    "vgg19": ImagenetWeights("VGG19_Weights.IMAGENET1K_V1", ("classifier.",)),
    "vgg16": ImagenetWeights("VGG16_Weights.IMAGENET1K_V1", ("classifier.6.",)),
    "densenet169": ImagenetWeights("DenseNet169_Weights.IMAGENET1K_V1", ("classifier.",)),
    "resnet50": ImagenetWeights("ResNet50_Weights.IMAGENET1K_V1", ("fc.",)),
    "inception_v3": ImagenetWeights("Inception_V3_Weights.IMAGENET1K_V1", ("fc.", "AuxLogits.")),
}

# torchvision's DenseNet checkpoints predate a rename ("norm.1" → "norm1"); its own loader
# rewrites the keys with this pattern (torchvision/models/densenet.py, _load_state_dict).
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's default cache: ``~/.cache/torch``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_checkpoint(name: str) -> Path:
    """The cached ImageNet checkpoint of ``name``; a clear error when it is not there."""
    source = IMAGENET.get(name)
    if source is None:
        raise ValueError(f"{name} has no ImageNet weights in torchvision (train it from scratch)")
    folder = hub_checkpoint_dir()
    path = folder / source.file_name
    if not path.is_file():
        raise PretrainedWeightsMissing(
            f"ImageNet weights for {name} ({source.enum}) not found: put the file "
            f"{source.file_name} into {folder} (torchvision's URL: {source.weights().url}; "
            "copy it from a machine with internet access, or set TORCH_HOME to the folder "
            "above hub/checkpoints). Nothing is downloaded here."
        )
    return path


def _check_hash_prefix(path: Path) -> None:
    """torchvision names its files ``<arch>-<first hex digits of the SHA-256>.pth``."""
    match = re.search(r"-([a-f0-9]{6,})\.", path.name)
    if match is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise ValueError(
            f"{path} is corrupt: its SHA-256 {digest.hexdigest()} does not start with "
            f"{match.group(1)} as its name says; delete it and copy it again"
        )


def load_imagenet(name: str, model: nn.Module, path: Path | None = None) -> list[str]:
    """Load the ImageNet backbone into ``model`` (the paper's head keeps its fresh weights).

    Returns the state-dict keys left at their initial values (the head), so callers can show
    what is being trained from scratch.
    """
    source = IMAGENET[name]
    path = imagenet_checkpoint(name) if path is None else path
    _check_hash_prefix(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if name == "densenet169":
        state = {_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    kept = {k: v for k, v in state.items() if not k.startswith(source.skip)}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    stray = [k for k in missing if not k.startswith(source.skip)]
    if stray or unexpected:
        raise ValueError(
            f"{path} does not fit {name}: missing {stray[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return list(missing)
