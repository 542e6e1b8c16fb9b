"""Training and serving feed a model identical tensors for the same slice (both domains)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model_zoo.card import Preprocessing
from model_zoo.datasets import open_dataset
from model_zoo.preprocess import hu_batch_to_input, image_to_input
from model_zoo.trainer import normalise_batch
from scpnode import synth
from scpnode.infer.dicom_slices import read_slices_hu
from scpnode.zoo_data import load, read_gray8

PRE = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.3, 0.3, 0.3))


def _train_tensor(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    return normalise_batch(torch.from_numpy(images), pre.mean, pre.std).numpy()


def test_dicom_training_tensor_equals_the_served_tensor(tmp_path: Path) -> None:
    synth.synth(tmp_path, studies=1, slices=3, covid_fraction=1.0, seed=3)
    data = open_dataset(tmp_path)
    arrays = load(data, data.subset("all"), (128, 128), PRE)
    (item,) = data.items
    served = hu_batch_to_input(
        [s.hu for s in read_slices_hu(sorted(item.path.glob("*.dcm")))], (128, 128),
        window_center=PRE.window_center, window_width=PRE.window_width, mean=PRE.mean,
        std=PRE.std, body_crop=PRE.body_crop,
    )  # fmt: skip
    trained = _train_tensor(arrays.images, PRE)
    assert trained.shape == served.shape == (3, 3, 128, 128)
    assert np.array_equal(trained, served)


def test_png_training_tensor_equals_the_served_tensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("covid", "normal"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (90, 70), dtype=np.uint8)
            Image.fromarray(pixels).convert("RGB").save(tmp_path / cls / f"{i}.png")
    data = open_dataset(tmp_path)
    pre = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), body_crop=False)
    items = data.subset("all")
    trained = _train_tensor(load(data, items, (150, 150), pre).images, pre)
    served = np.stack([
        image_to_input(read_gray8(i.path), (150, 150), mean=pre.mean, std=pre.std,
                       body_crop=False)
        for i in items
    ])  # fmt: skip
    assert np.array_equal(trained, served)
