"""The shared HU → input transform: window, body crop, determinism, train/serve identity."""

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from model_zoo.preprocess import (
    _block_mean,
    _cut,
    _window_cut,
    body_box,
    hu_batch_to_input,
    hu_to_input,
    lung_fraction,
    lung_window,
)
from scpnode.infer.dicom_slices import read_slices_hu

PARAMS: dict[str, Any] = {"mean": 0.5, "std": 0.25}


def phantom(n: int = 256, padding: float = -3024.0, table: bool = True) -> np.ndarray:
    """Integer-HU chest phantom: scan circle, body, two lungs, a GGO blob, a thin table."""
    yy, xx = np.mgrid[:n, :n] / n
    hu = np.full((n, n), padding, dtype=np.float32)
    hu[(yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.49**2] = -1000
    hu[((yy - 0.47) / 0.3) ** 2 + ((xx - 0.5) / 0.4) ** 2 < 1] = 40
    for cx in (0.35, 0.65):
        hu[((yy - 0.47) / 0.2) ** 2 + ((xx - cx) / 0.11) ** 2 < 1] = -850
    hu[(yy - 0.4) ** 2 + (xx - 0.28) ** 2 < 0.03**2] = -550
    if table:
        hu[int(0.85 * n) : int(0.85 * n) + 3, int(0.1 * n) : int(0.9 * n)] = 200
    return hu + np.round(np.random.default_rng(0).normal(0, 8, hu.shape)).astype(np.float32)


def write_ct(path: Path, hu: np.ndarray, *, window: tuple[float, float]) -> None:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.Rows, ds.Columns = hu.shape
    ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = window
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(path)


def test_shape_dtype_and_channels() -> None:
    x = hu_to_input(phantom(), (128, 128), **PARAMS)
    assert x.shape == (3, 128, 128)
    assert x.dtype == np.float32
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])
    assert x.min() >= (0 - 0.5) / 0.25 and x.max() <= (1 - 0.5) / 0.25


def test_per_channel_normalisation() -> None:
    x = hu_to_input(phantom(), (64, 96), mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 4.0))
    assert x.shape == (3, 64, 96)
    assert np.allclose(x[0] * 1.0 + 0.1, x[1] * 2.0 + 0.2, atol=1e-6)
    assert np.allclose(x[0] * 1.0 + 0.1, x[2] * 4.0 + 0.3, atol=1e-6)


def test_lung_window_maps_w1500_l600() -> None:
    out = lung_window(np.array([-3024, -1350, -600, 150, 3000]), -600, 1500)
    assert np.allclose(out, [0, 0, 0.5, 1, 1])


def test_file_window_preset_is_ignored(tmp_path: Path) -> None:
    hu = phantom()
    write_ct(tmp_path / "soft.dcm", hu, window=(40, 400))
    write_ct(tmp_path / "bone.dcm", hu, window=(500, 2000))
    soft, bone = read_slices_hu([tmp_path / "soft.dcm", tmp_path / "bone.dcm"])
    a, b = hu_to_input(soft.hu, (128, 128), **PARAMS), hu_to_input(bone.hu, (128, 128), **PARAMS)
    assert np.array_equal(a, b)


def test_padding_outside_scan_circle_does_not_break_crop() -> None:
    boxes = {body_box(phantom(padding=p)) for p in (-1024.0, -2000.0, -3024.0)}
    assert len(boxes) == 1 and None not in boxes
    # both padding values sit below the window: identical network input
    a = hu_to_input(phantom(padding=-2000.0), (128, 128), **PARAMS)
    assert np.array_equal(a, hu_to_input(phantom(padding=-3024.0), (128, 128), **PARAMS))


def test_crop_ignores_the_table_and_keeps_the_body() -> None:
    box = body_box(phantom(256))
    assert box is not None
    r0, r1, c0, c1 = box
    # body ellipse: rows 0.17..0.77, cols 0.1..0.9 of 256; the table sits at row 0.85
    assert abs(r0 - 0.17 * 256) <= 4 and abs(r1 - 0.77 * 256) <= 4
    assert abs(c0 - 0.1 * 256) <= 4 and abs(c1 - 0.9 * 256) <= 4
    assert body_box(phantom(256, table=False)) == (r0, r1, c0, c1)


def test_crop_is_a_zoom_on_the_body() -> None:
    cropped = hu_to_input(phantom(), (128, 128), **PARAMS)
    full = hu_to_input(phantom(), (128, 128), **PARAMS, body_crop=False)
    air = (0 - 0.5) / 0.25
    assert (cropped == air).mean() < (full == air).mean()


def test_air_only_slice_is_handled() -> None:
    assert body_box(np.full((512, 512), -1000.0, np.float32)) is None
    x = hu_to_input(np.full((512, 512), -1050.0, np.float32), (128, 128), **PARAMS)
    assert x.shape == (3, 128, 128) and np.allclose(x, (0.2 - 0.5) / 0.25, atol=1e-5)


def test_deterministic_and_batch_equals_single() -> None:
    hu = phantom(512)
    a, b = hu_to_input(hu, (128, 128), **PARAMS), hu_to_input(hu.copy(), (128, 128), **PARAMS)
    assert a.tobytes() == b.tobytes()
    batch = hu_batch_to_input([hu, phantom(256)], (128, 128), **PARAMS)
    assert batch.shape == (2, 3, 128, 128)
    assert np.array_equal(batch[0], a)


def test_training_path_equals_serving_path(tmp_path: Path) -> None:
    """Training feeds the HU array; serving reads the DICOM written from it: same tensor."""
    hu = phantom(512)
    write_ct(tmp_path / "slice.dcm", hu, window=(40, 400))
    (served,) = read_slices_hu([tmp_path / "slice.dcm"])
    trained = hu_to_input(hu, (128, 128), **PARAMS)
    assert np.array_equal(hu_to_input(served.hu, (128, 128), **PARAMS), trained)


def test_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        hu_to_input(np.zeros((2, 8, 8)), (8, 8), **PARAMS)


def test_a_shared_body_box_gives_the_same_crop_and_lung_fraction() -> None:
    """The worker finds each slice's body box once for the crop and the lung gate."""
    slices = [phantom(512), phantom(256, table=False), np.full((64, 64), -1000.0, np.float32)]
    boxes = [body_box(hu) for hu in slices]
    assert boxes[2] is None  # air: no crop, lung fraction 0
    alone = hu_batch_to_input(slices, (128, 128), **PARAMS)
    shared = hu_batch_to_input(slices, (128, 128), boxes=boxes, **PARAMS)
    assert alone.tobytes() == shared.tobytes()
    assert [lung_fraction(hu, box) for hu, box in zip(slices, boxes, strict=True)] == [
        lung_fraction(hu) for hu in slices
    ]
    assert 0.05 < lung_fraction(slices[0]) < 0.6 and lung_fraction(slices[2]) == 0.0
    with pytest.raises(ValueError, match="2 boxes for 3 slices"):
        hu_batch_to_input(slices, (128, 128), boxes=boxes[:2], **PARAMS)


@pytest.mark.parametrize("f", [1, 3, 6])
def test_block_mean_equals_the_mean_over_both_block_axes(f: int) -> None:
    h, w = 300 // f * f, 200 // f * f
    image = np.ascontiguousarray(phantom(512)[100 : 100 + h, 150 : 150 + w])
    reference = image.reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    assert np.array_equal(_block_mean(image, f), reference)  # integer HU: the same bits


@pytest.mark.parametrize(
    ("dtype", "offset"),
    [(np.int16, -1024.0), (np.uint16, -1024.0), (np.int16, 0.0), (np.uint16, -1024.5),
     (np.int32, -1024.0)],
)  # fmt: skip
@pytest.mark.parametrize("window", [(40, 30, 180), (-20, -15, 240), (100, 120, 200)])
def test_windowing_the_crop_of_stored_integers_gives_the_bits_of_the_whole_hu_image(
    dtype: type, offset: float, window: tuple[int, int, int]
) -> None:
    """The crop's window in one pass (integer offset and window) or in steps, inside the
    image or reaching past its edges (zeros there), equals windowing the whole HU image."""
    rng = np.random.default_rng(3)
    low = 0 if dtype in (np.uint16,) else -2000
    values = rng.integers(low, 4000, (256, 256)).astype(dtype)
    hu = values.astype(np.float32) + np.float32(offset)
    for center, width in ((-600.0, 1500.0), (-600.5, 1500.0), (40.0, 400.0)):
        expected = _cut(lung_window(hu, center, width), window)
        got = _window_cut(values, window, center, width, offset)
        assert got.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), (center, offset)
