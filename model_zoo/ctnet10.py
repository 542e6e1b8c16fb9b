"""CTnet-10, the seed paper's own small CNN (Shah et al. 2020, Fig. 2), re-implemented.

No code was published, so the layer list is taken from the paper's text and figure:
128x128x3 → conv3x3(32) → conv3x3(32) → maxpool2 (62x62) → conv3x3(32) → conv3x3(32)
→ maxpool2 (29x29x32) → flatten 26,912 → dense 256 → dropout 0.3 → dense 1.
"Valid" (unpadded) 3x3 convolutions reproduce every activation size the paper gives, and the
parameter count is 6,918,625. The model returns a logit; the sigmoid is applied at prediction
(and inside ``BCEWithLogitsLoss`` in training) for numerical stability.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SIZE: tuple[int, int] = (128, 128)
PARAMETER_COUNT = 6_918_625
FLAT_FEATURES = 29 * 29 * 32
#: slices per pass of the convolutions when serving on a CPU (see :meth:`CTNet10.forward`)
CPU_TRUNK_SLICES = 2


def _conv_block(in_channels: int) -> list[nn.Module]:
    """Two valid 3x3 convolutions with ReLU, then a 2x2 max-pool (the paper's 'block')."""
    return [
        nn.Conv2d(in_channels, 32, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


class CTNet10(nn.Module):
    """CTnet-10: input ``[N, 3, 128, 128]``, output logits ``[N, 1]``."""

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(*_conv_block(3), *_conv_block(32))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(FLAT_FEATURES, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch; the same numbers whichever way the batch is split.

        Serving on a CPU (inference mode), the convolutions take :data:`CPU_TRUNK_SLICES`
        slices at a time: each slice's activations are 2 MB a layer, so a whole batch's spill
        out of the caches (and two scoring lanes evict each other's), while a few slices stay
        in them. The dense layer still takes the whole batch, reading its 27.5 MB of weights
        once per batch. Measured on a 2-core CPU, batch 16 in two lanes: 308 → 388 slices/s
        (docs/performance.md). Training and Grad-CAM (which need gradients) take one pass.
        """
        if (
            x.device.type == "cpu"
            and torch.is_inference_mode_enabled()
            and x.shape[0] > CPU_TRUNK_SLICES
        ):
            trunk = torch.cat([self.features(part) for part in x.split(CPU_TRUNK_SLICES)])
        else:
            trunk = self.features(x)
        return self.classifier(trunk)


def build_ctnet10() -> CTNet10:
    """Registry factory: a freshly initialised CTnet-10 (weights are loaded by the caller)."""
    return CTNet10()
