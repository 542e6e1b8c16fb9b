"""Dataset items → window-fraction images, through the serving preprocessing.

Training and evaluation read pixels here and nowhere else: 8-bit images (COVID-CT, folder per
class) through :func:`model_zoo.preprocess.gray8_to_image`, DICOM series through the node's own
HU reader and :func:`model_zoo.preprocess.hu_to_image` — the functions the node serves with —
so a model is evaluated on exactly the tensors it will see in production. Images stay one grey
channel (a third of the memory); :func:`model_zoo.trainer.normalise_batch` adds the channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_zoo.card import Preprocessing
from model_zoo.datasets import Dataset, DatasetError, Item
from model_zoo.preprocess import gray8_to_image, hu_to_image, lung_fraction


@dataclass(frozen=True)
class Arrays:
    """One split, slice by slice."""

    images: np.ndarray  # float32 [N, h, w] window fractions
    labels: np.ndarray  # float32 [N]: the image's label (DICOM: its study's label)
    groups: tuple[str, ...]  # patient or study of each slice
    group_label: dict[str, int]
    lung: np.ndarray | None  # lung fraction per slice (HU data only)
    slice_labels: bool  # False when slices only inherit their study's label


def read_gray8(path: Path) -> np.ndarray:
    """An image file as 8-bit grey (RGB figure crops are averaged by PIL's luma transform)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None


def read_series_hu(folder: Path) -> list[np.ndarray]:
    """A series folder's slices in HU, sorted along the slice normal (the node's reader)."""
    from scpnode.infer.dicom_slices import SliceReadError, read_slices_hu

    paths = sorted(folder.glob("*.dcm"))
    try:
        return [s.hu for s in read_slices_hu(paths)]
    except SliceReadError as exc:
        raise DatasetError(f"{folder}: a slice cannot be read as HU: {exc}") from None


def load(
    data: Dataset,
    items: Sequence[Item],
    input_size: tuple[int, int],
    pre: Preprocessing,
) -> Arrays:
    """Preprocess ``items`` of ``data`` for a model with ``input_size`` and ``pre``."""
    if not items:
        raise DatasetError(f"{data.root}: the requested split has no images")
    size = (int(input_size[0]), int(input_size[1]))
    images: list[np.ndarray] = []
    labels: list[float] = []
    groups: list[str] = []
    lung: list[float] = []
    center, width = pre.window_center, pre.window_width
    for item in items:
        if data.domain == "dicom-hu":
            for hu in read_series_hu(item.path):
                images.append(hu_to_image(hu, size, window_center=center, window_width=width,
                                          body_crop=pre.body_crop))  # fmt: skip
                lung.append(lung_fraction(hu))
                labels.append(float(item.label))
                groups.append(item.group)
        else:
            gray = read_gray8(item.path)
            images.append(gray8_to_image(gray, size, window_center=center, window_width=width,
                                         body_crop=pre.body_crop))  # fmt: skip
            labels.append(float(item.label))
            groups.append(item.group)
    group_label: dict[str, int] = {}
    for item in items:
        group_label[item.group] = max(group_label.get(item.group, 0), item.label)
    return Arrays(
        images=np.stack(images).astype(np.float32, copy=False),
        labels=np.asarray(labels, np.float32),
        groups=tuple(groups),
        group_label=group_label,
        lung=np.asarray(lung, np.float64) if data.domain == "dicom-hu" else None,
        slice_labels=data.domain != "dicom-hu",
    )
