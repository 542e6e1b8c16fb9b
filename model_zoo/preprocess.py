"""The one HU → network-input transform, shared by training and serving.

Training and serving call exactly this function with the parameters recorded in the model card,
so a model never sees a slice prepared differently from the ones it learned on. Steps:

1. lung window W1500/L-600 mapped to [0, 1] with clipping — always, whatever window preset the
   file carries (scanners ship soft-tissue or head presets that would hide ground glass);
2. body crop: threshold the HU image, drop thin structures (the table, cables) with a box
   opening, take the bounding box, square it with a margin, pad with the window minimum;
3. resize to the model's input size with antialiased bilinear interpolation (torch, CPU,
   deterministic);
4. replicate to 3 channels and normalise with (mean, std).

Serving may pass a slice as its stored integers plus an exact ``offset`` (the rescale
intercept, when the slope is 1): ``hu = image + offset``. Each step then adds the offset only
to the pixels it reads (the crop), so the full float32 HU image is never made; every float32
value, and so the result, is the same to the bit.

8-bit images that were already windowed (the COVID-CT PNGs, ``png-8bit`` models) enter after
step 1 (:func:`image_to_input`); the body crop then works on the window's pseudo-HU, so both
domains share steps 2-4 to the bit. :func:`lung_fraction` is the cheap HU-based lung-presence
gate the study aggregation uses (slices above and below the lungs do not vote).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from types import EllipsisType
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)

LUNG_WINDOW_CENTER = -600.0
LUNG_WINDOW_WIDTH = 1500.0
BODY_THRESHOLD_HU = -500.0
#: side of the opening's square, as a fraction of the image side: structures thinner than this
#: (the table, ~1 cm at 512x512 / 35 cm FOV) do not count as body.
OPENING_FRACTION = 0.03
CROP_MARGIN = 0.05

Norm = float | Sequence[float]
#: ``(r0, r1, c0, c1)``, half-open: the body's bounding box (:func:`body_box`)
Box = tuple[int, int, int, int]
#: "not computed yet": callers that already ran :func:`body_box` on a slice pass its result
#: (a box, or None for no body) so that the crop and the lung gate share one search
UNKNOWN: EllipsisType = ...


def lung_window(hu: np.ndarray, center: float, width: float, offset: float = 0.0) -> np.ndarray:
    """Map HU (``hu + offset``) to [0, 1] through the window (clipped), as float32."""
    low = center - width / 2.0
    out = (as_hu(hu, offset) - np.float32(low)) / np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def as_hu(image: np.ndarray, offset: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """``image + offset`` as float32 (in ``out`` when given): the HU of stored integers.

    The integers convert to float32 exactly and the sum is rounded once, as when the HU
    image is made whole first, so the same bits. Without an offset or ``out``, a float32
    image is returned as it is.
    """
    if offset == 0.0 and out is None:
        return np.asarray(image, dtype=np.float32)
    if out is None:
        out = np.empty(np.shape(image), dtype=np.float32)
    return np.add(image, np.float32(offset), out=out, dtype=np.float32)


def _above(image: np.ndarray, threshold: float) -> np.ndarray:
    """``image > threshold``; on integers without a float pass (``x > t`` ⟺ ``x > floor(t)``)."""
    if image.dtype.kind not in "iu":
        return image > threshold
    info, bound = np.iinfo(image.dtype), math.floor(threshold)
    if bound < info.min:
        return np.ones(image.shape, dtype=bool)
    if bound >= info.max:
        return np.zeros(image.shape, dtype=bool)
    return image > image.dtype.type(bound)


def _full_boxes(mask: np.ndarray, k: int) -> np.ndarray:
    """For every k x k window position (top-left), whether the mask is set in all of it.

    The union of those windows is the morphological opening of the mask. Computed as runs of
    k set pixels along the rows, then runs of k such positions down the columns, each by
    doubling (a run of 2L is two overlapping runs of L): a few boolean ANDs, whatever k is.
    """
    return _runs(_runs(mask, k, axis=1), k, axis=0)


def _runs(mask: np.ndarray, k: int, axis: int) -> np.ndarray:
    """``out[i] = all(mask[i : i + k])`` along ``axis`` (that axis shrinks by k - 1)."""

    def head(a: np.ndarray, n: int) -> np.ndarray:  # all but the last n along axis
        return a[:-n] if axis == 0 else a[:, :-n]

    def tail(a: np.ndarray, n: int) -> np.ndarray:  # all but the first n along axis
        return a[n:] if axis == 0 else a[:, n:]

    run, length = mask, 1
    while 2 * length <= k:
        run = head(run, length) & tail(run, length)
        length *= 2
    if length < k:  # two runs of `length` overlapping by 2 * length - k cover k
        run = head(run, k - length) & tail(run, k - length)
    return run


def body_box(
    hu: np.ndarray, threshold: float = BODY_THRESHOLD_HU, offset: float = 0.0
) -> Box | None:
    """Bounding box ``(r0, r1, c0, c1)`` (half-open) of the body, ignoring thin structures.

    Padding outside the scan circle (-2000, -3024 HU...) lies below any body threshold and is
    ignored. None when nothing thick enough is found (a slice of air): nothing to crop to.
    Large images are searched on a decimated grid (every 2nd pixel for 512x512): the box only
    has to be right to a pixel or two, and this keeps it well under a millisecond.
    ``offset``: ``hu`` holds stored integers, ``hu + offset`` the HU (compared as integers).
    """
    hu = np.asarray(hu)
    step = max(1, min(hu.shape) // 256)
    mask = _above(hu[::step, ::step], threshold - offset)
    k = max(2, round(OPENING_FRACTION * min(mask.shape)))
    if min(mask.shape) <= k:
        return None
    full = _full_boxes(mask, k)
    rows = np.flatnonzero(full.any(axis=1))
    cols = np.flatnonzero(full.any(axis=0))
    if rows.size == 0:
        return None
    r1 = min(hu.shape[0], (int(rows[-1]) + k) * step)
    c1 = min(hu.shape[1], (int(cols[-1]) + k) * step)
    return int(rows[0]) * step, r1, int(cols[0]) * step, c1


def square_window(box: tuple[int, int, int, int], margin: float) -> tuple[int, int, int]:
    """``(top, left, side)`` of the square around ``box``: centre kept, side = longer edge +
    margin. It may reach past the image edges (that part is padded when cropping)."""
    r0, r1, c0, c1 = box
    side = round(max(r1 - r0, c1 - c0) * (1.0 + 2.0 * margin))
    return (r0 + r1 - side) // 2, (c0 + c1 - side) // 2, side


def crop_window(
    hu: np.ndarray,
    *,
    body_crop: bool = True,
    box: Box | EllipsisType | None = UNKNOWN,
    offset: float = 0.0,
) -> tuple[int, int, int] | None:
    """The square ``(top, left, side)`` of ``hu`` that :func:`hu_to_input` resizes to the
    network input, or None when it resizes the whole slice (no crop, or no body found).

    Public so that outputs in input space (e.g. Grad-CAM maps) can be mapped back onto the
    slice through exactly the crop the model saw. ``box``: ``body_box(hu)`` if already known.
    """
    if not body_crop:
        return None
    if box is UNKNOWN:
        box = body_box(hu, offset=offset)
    return None if box is None else square_window(box, CROP_MARGIN)


def square_crop(img: np.ndarray, box: tuple[int, int, int, int], margin: float) -> np.ndarray:
    """Crop a square around ``box`` (see :func:`square_window`), zero-padded.

    Zero is the window minimum after :func:`lung_window`, i.e. air.
    """
    return _cut(img, square_window(box, margin))


def _cut(img: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """The ``side`` x ``side`` square at ``(top, left)``; outside the image it is zero."""
    top, left, side = window
    out = np.zeros((side, side), dtype=np.float32)
    sr0, sr1 = max(top, 0), min(top + side, img.shape[0])
    sc0, sc1 = max(left, 0), min(left + side, img.shape[1])
    out[sr0 - top : sr1 - top, sc0 - left : sc1 - left] = img[sr0:sr1, sc0:sc1]
    return out


def _window_cut(
    hu: np.ndarray, window: tuple[int, int, int], center: float, width: float, offset: float = 0.0
) -> np.ndarray:
    """``_cut(lung_window(hu, center, width, offset), window)`` over the crop only: the same
    float32 operations on the same pixels, so the same bits."""
    top, left, side = window
    sr0, sr1 = max(top, 0), min(top + side, hu.shape[0])
    sc0, sc1 = max(left, 0), min(left + side, hu.shape[1])
    inside_image = (sr0, sr1, sc0, sc1) == (top, top + side, left, left + side)
    # only the part of the square outside the image needs its zeros written
    out = (np.empty if inside_image else np.zeros)((side, side), dtype=np.float32)
    part = out[sr0 - top : sr1 - top, sc0 - left : sc1 - left]
    low = center - width / 2.0
    inside = hu[sr0:sr1, sc0:sc1]
    if _exact_sum(inside, offset - low, offset, low):
        # stored integers: (x + offset) - low is the exact integer x + (offset - low), so
        # one pass gives the bits of two
        np.add(inside, np.float32(offset - low), out=part, dtype=np.float32)
    else:
        if offset != 0.0:
            inside = as_hu(inside, offset, out=part)
        np.subtract(np.asarray(inside, dtype=np.float32), np.float32(low), out=part)
    np.divide(part, np.float32(width), out=part)
    np.clip(part, 0.0, 1.0, out=part)
    return out


#: float32 holds every integer of magnitude up to 2**24 exactly
_FLOAT32_EXACT = 2**24


def _exact_sum(values: np.ndarray, constant: float, *terms: float) -> bool:
    """Whether ``values + constant`` and every partial sum of ``values`` with ``terms`` are
    integers float32 holds exactly (16-bit integers and integer terms), so that adding
    ``constant`` in one step rounds nothing that the steps would have rounded."""
    if values.dtype.kind not in "iu" or values.dtype.itemsize > 2:
        return False
    numbers = (constant, *terms)
    if not all(float(t).is_integer() for t in numbers):
        return False
    return 2**16 + sum(abs(t) for t in numbers) < _FLOAT32_EXACT


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize on CPU; deterministic, so training and serving agree."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].numpy()


def _channel_vector(value: Norm, name: str) -> np.ndarray:
    """A scalar or 3 values, as a [3, 1, 1] float32 array for broadcasting (read-only)."""
    if np.ndim(value) == 0:
        return _vector(float(cast(float, value)), name)
    return _vector(tuple(float(v) for v in cast(Sequence[float], value)), name)


@functools.lru_cache(maxsize=64)
def _vector(value: float | tuple[float, ...], name: str) -> np.ndarray:
    """Made once per card's (mean, std): building it took 0.04 ms of every slice's 0.7 ms."""
    vec = np.broadcast_to(np.asarray(value, dtype=np.float32).reshape(-1), (3,))
    if name == "std" and np.any(vec <= 0):
        raise ValueError(f"std must be positive, got {value!r}")
    out = np.array(vec.reshape(3, 1, 1))
    out.flags.writeable = False
    return out


def hu_to_input(
    hu: np.ndarray,
    input_size: tuple[int, int],
    *,
    window_center: float = LUNG_WINDOW_CENTER,
    window_width: float = LUNG_WINDOW_WIDTH,
    mean: Norm,
    std: Norm,
    body_crop: bool = True,
) -> np.ndarray:
    """One HU slice ``[H, W]`` → network input ``float32 [3, h, w]`` (see the module docstring)."""
    image = hu_to_image(
        hu, input_size, window_center=window_center, window_width=window_width,
        body_crop=body_crop,
    )  # fmt: skip
    return normalise(image, mean, std)


def hu_to_image(
    hu: np.ndarray,
    input_size: tuple[int, int],
    *,
    window_center: float = LUNG_WINDOW_CENTER,
    window_width: float = LUNG_WINDOW_WIDTH,
    body_crop: bool = True,
    box: Box | EllipsisType | None = UNKNOWN,
    offset: float = 0.0,
) -> np.ndarray:
    """Steps 1-3: one HU slice → window fraction ``float32 [h, w]`` in [0, 1].

    Training keeps this single channel (a third of the memory) and applies :func:`normalise`
    per batch; serving applies both at once in :func:`hu_to_input`. Same functions, same bits.
    ``box``: ``body_box(hu)`` when the caller already has it. ``offset``: see the module.
    """
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"expected one 2-D HU slice, got shape {hu.shape}")
    window = crop_window(hu, body_crop=body_crop, box=box, offset=offset)
    if window is None:
        img = lung_window(hu, window_center, window_width, offset)
    else:  # window only the pixels inside the crop, straight into the padded square
        img = _window_cut(hu, window, window_center, window_width, offset)
    return resize(img, (int(input_size[0]), int(input_size[1])))


def image_to_input(
    image: np.ndarray,
    input_size: tuple[int, int],
    *,
    window_center: float = LUNG_WINDOW_CENTER,
    window_width: float = LUNG_WINDOW_WIDTH,
    mean: Norm,
    std: Norm,
    body_crop: bool = False,
) -> np.ndarray:
    """An already-windowed 8-bit grey image ``uint8 [H, W]`` → ``float32 [3, h, w]``.

    The image enters after the window step of :func:`hu_to_input` (value/255 is the window
    fraction). The body crop, when asked for, runs on the pseudo-HU the window maps back to, so
    a PNG made from a slice through the same window is cropped like that slice. Its HU are lost
    (clipped, re-quantised, windowed by an unknown preset): the reason a ``png-8bit`` model is
    not served on DICOM unless ``model.allow_domain_shift``.
    """
    image01 = gray8_to_image(
        image, input_size, window_center=window_center, window_width=window_width,
        body_crop=body_crop,
    )  # fmt: skip
    return normalise(image01, mean, std)


def gray8_to_image(
    image: np.ndarray,
    input_size: tuple[int, int],
    *,
    window_center: float = LUNG_WINDOW_CENTER,
    window_width: float = LUNG_WINDOW_WIDTH,
    body_crop: bool = False,
) -> np.ndarray:
    """Steps 2-3 for an 8-bit windowed image: → window fraction ``float32 [h, w]``."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected one 2-D grey image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image (uint8), got {image.dtype}")
    img = image.astype(np.float32) / np.float32(255.0)
    window = None
    if body_crop:
        low = window_center - window_width / 2.0
        window = crop_window(low + img * np.float32(window_width), body_crop=True)
    return _crop_resize(img, window, input_size)


def _crop_resize(
    img: np.ndarray, window: tuple[int, int, int] | None, input_size: tuple[int, int]
) -> np.ndarray:
    """Steps 2-3 on a window fraction image in [0, 1]."""
    if window is not None:
        img = _cut(img, window)
    return resize(img, (int(input_size[0]), int(input_size[1])))


def normalise(image: np.ndarray, mean: Norm, std: Norm) -> np.ndarray:
    """Step 4: ``[..., h, w]`` window fractions → ``float32 [..., 3, h, w]``, grey replicated
    to the three channels the networks take, then ``(x - mean) / std`` per channel."""
    image = np.asarray(image, dtype=np.float32)
    out = np.empty((*image.shape[:-2], 3, *image.shape[-2:]), dtype=np.float32)
    return _normalise_into(image, _channel_vector(mean, "mean"), _channel_vector(std, "std"), out)


def _normalise_into(
    image: np.ndarray, mean: np.ndarray, std: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """:func:`normalise` written into ``out`` (float32 ops throughout: the same bits)."""
    np.subtract(np.expand_dims(image, axis=-3), mean, out=out)
    return np.divide(out, std, out=out)


# --- lung-presence gate ---------------------------------------------------------------------

#: aerated lung after block averaging (the noise of a sharp kernel is averaged away, so air
#: outside the body, ~-1000 HU, stays below the band and soft tissue above it)
LUNG_BAND_HU = (-950.0, -400.0)
#: the gate's default: a slice votes when aerated lung fills this much of the body's box
#: (slices above the apex and below the bases measure 0.005-0.025 on the phantoms: trachea,
#: partial volume; slices through the lungs 0.04-0.4)
LUNG_MIN_FRACTION = 0.03
_LUNG_GRID = 64


def _enclosed(mask: np.ndarray) -> np.ndarray:
    """Pixels with ``mask`` somewhere to their left, right, above and below (inside the body)."""
    left = np.maximum.accumulate(mask, axis=1)
    right = np.maximum.accumulate(mask[:, ::-1], axis=1)[:, ::-1]
    up = np.maximum.accumulate(mask, axis=0)
    down = np.maximum.accumulate(mask[::-1], axis=0)[::-1]
    return left & right & up & down


def lung_fraction(
    hu: np.ndarray, box: Box | EllipsisType | None = UNKNOWN, offset: float = 0.0
) -> float:
    """Fraction of the body's bounding box that is aerated lung inside the body (~0.5 ms).

    The box is averaged down to a ~64-cell grid (noise), cells in :data:`LUNG_BAND_HU` count
    when soft tissue surrounds them in all four directions, so the air around the body and the
    partial-volume rim at the skin do not. Not a segmentation: a gate deciding which slices
    may vote in the study aggregation. ``box``: ``body_box(hu)`` when the caller has it;
    ``offset``: see the module.
    """
    hu = np.asarray(hu)
    if box is UNKNOWN:
        box = body_box(hu, offset=offset)
    if box is None:
        return 0.0
    r0, r1, c0, c1 = box
    crop = as_hu(hu[r0:r1, c0:c1], offset)
    f = max(1, min(crop.shape) // _LUNG_GRID)
    h, w = crop.shape[0] // f * f, crop.shape[1] // f * f
    if h == 0 or w == 0:
        return 0.0
    pooled = _block_mean(crop[:h, :w], f)
    lung = (pooled > LUNG_BAND_HU[0]) & (pooled < LUNG_BAND_HU[1])
    return float((lung & _enclosed(pooled > BODY_THRESHOLD_HU)).mean())


def _block_mean(image: np.ndarray, f: int) -> np.ndarray:
    """Mean of each ``f`` x ``f`` block of ``image`` (its sides multiples of ``f``).

    Rows of blocks first, then the columns: twice as fast as one reduction over both block
    axes, and the same bits for CT (integer HU sums are exact in float32 in any order).
    """
    h, w = image.shape
    rows = image.reshape(h // f, f, w).sum(axis=1)
    return rows.reshape(h // f, w // f, f).sum(axis=2) / np.float32(f * f)


def hu_batch_to_input(
    slices: Sequence[np.ndarray],
    input_size: tuple[int, int],
    *,
    window_center: float = LUNG_WINDOW_CENTER,
    window_width: float = LUNG_WINDOW_WIDTH,
    mean: Norm,
    std: Norm,
    body_crop: bool = True,
    boxes: Sequence[Box | None] | None = None,
) -> np.ndarray:
    """Several slices → ``float32 [N, 3, h, w]``; each slice gets its own body crop
    (``boxes``: each slice's :func:`body_box`, when the caller already has them)."""
    out = np.empty((len(slices), 3, int(input_size[0]), int(input_size[1])), dtype=np.float32)
    if boxes is not None and len(boxes) != len(slices):
        raise ValueError(f"{len(boxes)} boxes for {len(slices)} slices")
    for i, hu in enumerate(slices):
        hu_to_input_into(
            hu, out[i], window_center=window_center, window_width=window_width, mean=mean,
            std=std, body_crop=body_crop, box=UNKNOWN if boxes is None else boxes[i],
        )  # fmt: skip
    return out


def hu_to_input_into(
    hu: np.ndarray,
    out: np.ndarray,
    *,
    window_center: float = LUNG_WINDOW_CENTER,
    window_width: float = LUNG_WINDOW_WIDTH,
    mean: Norm,
    std: Norm,
    body_crop: bool = True,
    box: Box | EllipsisType | None = UNKNOWN,
    offset: float = 0.0,
) -> np.ndarray:
    """:func:`hu_to_input` written into ``out`` (``float32 [3, h, w]``, one slice of a batch):
    a batch can then be filled one slice at a time, each slice's HU dropped before the next
    is read. ``box``: ``body_box(hu)`` when the caller already has it; ``offset``: see the
    module."""
    image = hu_to_image(
        hu, out.shape[-2:], window_center=window_center, window_width=window_width,
        body_crop=body_crop, box=box, offset=offset,
    )  # fmt: skip
    return _normalise_into(image, _channel_vector(mean, "mean"), _channel_vector(std, "std"), out)
