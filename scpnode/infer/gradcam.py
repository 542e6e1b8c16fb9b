"""Grad-CAM heat maps of the served model, in each slice's own pixel geometry.

Grad-CAM (Selvaraju et al. 2017): weight each channel ``k`` of the last convolutional feature
map ``A`` (after its activation: for CTnet-10 the 4th conv's ReLU output, 58x58x32) by the
spatial mean of d(logit)/dA_k, sum, ReLU, and normalise to [0, 1] per slice. The heat map is
only useful next to the slice it explains, so it is mapped back through the same geometry the
model saw:

1. feature grid → network input grid by receptive-field centres: stride = input // feature,
   centred (valid 3x3 convolutions leave a margin: CTnet-10's 58 cells sit at stride 2 inside
   a 6-pixel border of the 128x128 input; padded networks get stride 16 or 32 and no margin);
2. network input → slice through the square crop window ``hu_to_input`` cut from it
   (``model_zoo.preprocess.crop_window``, the same function), zero outside that window.

Gradients: ``torch.autograd.grad`` with respect to the captured feature map only, so nothing
accumulates in any parameter's ``.grad`` and the parameters' ``requires_grad`` flags are never
touched (toggling them on a module shared with other threads would race); the input tensor
carries the graph. Forward hooks are removed afterwards and ignore other threads' passes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType

import numpy as np
import torch
from torch import nn

from model_zoo.preprocess import crop_window, resize
from scpnode.infer.engine import LoadedModel, prepare_for_card

Window = tuple[int, int, int]  # (top, left, side) of the square crop, in slice pixels


def grad_cam(
    model: LoadedModel, hu_slices: Sequence[np.ndarray], batch_size: int = 16
) -> list[np.ndarray]:
    """One float32 heat map in [0, 1] per HU slice, shaped and aligned like that slice.

    Preprocessing is the card's, exactly as :func:`scpnode.infer.engine.predict` applies it.
    Zero outside the body crop; an all-zero map (no positive evidence) stays zero.
    """
    pre, (rows, cols) = model.card.preprocessing, model.card.input_size
    size = (int(rows), int(cols))
    out: list[np.ndarray] = []
    with _eval_mode(model.module):
        for start in range(0, len(hu_slices), batch_size):
            chunk = hu_slices[start : start + batch_size]
            batch = prepare_for_card(model.card, chunk)
            cams = _feature_cams(model, batch)
            for hu, cam in zip(chunk, cams, strict=True):
                hu = np.asarray(hu)
                window = crop_window(hu, body_crop=pre.body_crop)
                out.append(_to_slice(_on_input_grid(cam, size), window, hu.shape))
    return out


def _feature_cams(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """Grad-CAM maps on the feature grid (ReLU, not yet normalised), ``float32 [N, hf, wf]``."""
    with torch.inference_mode(False), torch.enable_grad(), _full_fp32(model.device):
        x = torch.from_numpy(batch).to(model.device)  # not an inference tensor: made here
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        with _FeatureTap(model.module) as tap:
            logits = model.module(x)
        if tap.feature is None:
            raise RuntimeError("grad_cam: the model's last Conv2d did not run in its forward")
        if logits.numel() != len(batch):
            raise ValueError(f"grad_cam needs one logit per slice, got {tuple(logits.shape)}")
        # Slices are independent in eval mode, so the gradient of the sum is per-slice.
        (grads,) = torch.autograd.grad(logits.sum(), tap.feature)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * tap.feature.detach()).sum(dim=1))
    return cam.float().cpu().numpy()


@contextmanager
def _full_fp32(device: torch.device) -> Iterator[None]:
    """cuDNN convolutions without TF32 (on by default on Ampere and later): the heat map of a
    few key slices costs nothing in full fp32 and then matches the CPU's."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def _on_input_grid(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Place a feature-grid map on the network input grid at its receptive-field centres."""
    (hf, wf), (h, w) = cam.shape, size
    if hf > h or wf > w:  # not a downsampling feature map: nothing to align, just stretch
        return resize(cam, size)
    sy, sx = h // hf, w // wf
    up = resize(cam, (hf * sy, wf * sx))
    out = np.zeros(size, dtype=np.float32)
    top, left = (h - up.shape[0]) // 2, (w - up.shape[1]) // 2
    out[top : top + up.shape[0], left : left + up.shape[1]] = up
    return out


def _to_slice(cam: np.ndarray, window: Window | None, shape: tuple[int, ...]) -> np.ndarray:
    """Undo the crop and resize of ``hu_to_input``: the input-grid map on the slice's pixels."""
    rows, cols = int(shape[0]), int(shape[1])
    if window is None:
        out = resize(cam, (rows, cols))
    else:
        top, left, side = window
        square = resize(cam, (side, side))
        out = np.zeros((rows, cols), dtype=np.float32)
        r0, r1 = max(top, 0), min(top + side, rows)
        c0, c1 = max(left, 0), min(left + side, cols)
        out[r0:r1, c0:c1] = square[r0 - top : r1 - top, c0 - left : c1 - left]
    np.clip(out, 0.0, None, out=out)
    peak = float(out.max()) if out.size else 0.0
    # Normalised last, on the slice grid: interpolation lowers the peak of the feature map.
    if peak > 0.0 and np.isfinite(peak):
        out /= peak
    else:
        out[...] = 0.0
    return out.astype(np.float32, copy=False)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the computation; the previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class _FeatureTap:
    """Forward hooks that catch the last Conv2d's output after its element-wise activation.

    Every leaf module is hooked; after the last ``nn.Conv2d`` fires, each following leaf whose
    output has the same shape (ReLU, batch norm, dropout) replaces the captured tensor, and the
    first other one (pooling, flatten) ends the chain. In-place ReLU returns the conv's own
    tensor, now holding the activation; ``autograd.grad`` on it gives d(logit)/dA.
    """

    def __init__(self, module: nn.Module) -> None:
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"grad_cam: {type(module).__name__} has no Conv2d layer")
        self.conv = convs[-1]
        self.leaves = [m for m in module.modules() if next(m.children(), None) is None]
        self.feature: torch.Tensor | None = None
        self._chain_open = False
        self._thread = threading.get_ident()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _FeatureTap:
        self._handles = [m.register_forward_hook(self._hook) for m in self.leaves]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, module: nn.Module, _inputs: object, output: object) -> None:
        if threading.get_ident() != self._thread:  # another thread's pass on a shared module
            return
        if module is self.conv and isinstance(output, torch.Tensor):
            self.feature, self._chain_open = output, True
        elif (
            self._chain_open
            and isinstance(output, torch.Tensor)
            and self.feature is not None
            and output.shape == self.feature.shape
        ):
            self.feature = output
        else:
            self._chain_open = False
