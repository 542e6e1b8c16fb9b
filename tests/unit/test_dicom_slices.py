"""DICOM → HU slices: ordering along the normal, modality LUT, compressed syntaxes."""

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from scpnode.infer import dicom_slices
from scpnode.infer.dicom_slices import SliceReadError, read_slices_hu


def write_ct(
    path: Path,
    hu: np.ndarray,
    *,
    z: float | None = 0.0,
    number: int = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
) -> pydicom.Dataset:
    """Write an HU array as a CT slice (CT_small.dcm's header, new pixels and geometry)."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    stored = np.round((hu - intercept) / slope).astype(np.int16)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if z is None:
        del ds.ImagePositionPatient
    else:
        ds.ImagePositionPatient = [-100.0, -120.0, z]
    ds.InstanceNumber = number
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return ds


def hu_image(seed: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=shape).astype(np.float32)


def test_sorted_along_normal_when_given_shuffled_and_descending(tmp_path: Path) -> None:
    # InstanceNumber counts up while z goes down (head-first, scanning feet-ward)
    zs = [50.0, 47.5, 45.0, 42.5, 40.0]
    paths = []
    for i, z in enumerate(zs):
        paths.append(tmp_path / f"s{i}.dcm")
        write_ct(paths[-1], hu_image(i), z=z, number=i + 1)
    random.Random(4).shuffle(paths)
    slices = read_slices_hu(paths)
    assert [s.z for s in slices] == sorted(zs)
    assert [s.path.name for s in slices] == [f"s{i}.dcm" for i in (4, 3, 2, 1, 0)]
    assert np.array_equal(slices[0].hu, hu_image(4))


def test_oblique_normal_is_used(tmp_path: Path) -> None:
    # rows along y, columns along x: the normal is -z, so higher z comes first
    paths = []
    for i, z in enumerate([0.0, 5.0, 10.0]):
        ds = write_ct(tmp_path / f"o{i}.dcm", hu_image(i), z=z, number=i + 1)
        ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
        ds.save_as(tmp_path / f"o{i}.dcm")
        paths.append(tmp_path / f"o{i}.dcm")
    assert [s.path.name for s in read_slices_hu(paths)] == ["o2.dcm", "o1.dcm", "o0.dcm"]


def test_falls_back_to_instance_number(tmp_path: Path) -> None:
    paths = []
    for number in (3, 1, 2):
        paths.append(tmp_path / f"n{number}.dcm")
        write_ct(paths[-1], hu_image(number), z=None, number=number)
    slices = read_slices_hu(paths)
    assert [s.path.name for s in slices] == ["n1.dcm", "n2.dcm", "n3.dcm"]
    assert [s.z for s in slices] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (0.5, -1000.0), (2.0, 0.0)])
def test_rescale_slope_and_intercept(tmp_path: Path, slope: float, intercept: float) -> None:
    hu = np.round(hu_image(7) / slope) * slope  # representable in the stored integers
    hu = np.maximum(hu, intercept)
    ds = write_ct(tmp_path / "r.dcm", hu, slope=slope, intercept=intercept)
    (s,) = read_slices_hu([tmp_path / "r.dcm"])
    assert s.hu.dtype == np.float32
    assert np.array_equal(s.hu, hu.astype(np.float32))
    assert s.sop_instance_uid == ds.SOPInstanceUID
    assert s.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_file_decodes_to_same_hu(tmp_path: Path, syntax: str) -> None:
    hu = hu_image(9)
    ds = write_ct(tmp_path / "plain.dcm", hu)
    ds.compress(syntax)
    ds.save_as(tmp_path / "packed.dcm")
    (s,) = read_slices_hu([tmp_path / "packed.dcm"])
    assert pydicom.dcmread(s.path).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(s.hu, hu)


def test_undecodable_pixels_raise_slice_read_error(tmp_path: Path) -> None:
    ds = write_ct(tmp_path / "bad.dcm", hu_image(1))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8garbage\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(SliceReadError, match="cannot decode pixel data") as err:
        read_slices_hu([tmp_path / "bad.dcm"])
    assert err.value.path == tmp_path / "bad.dcm"


def test_not_dicom_raises_slice_read_error(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"hello")
    with pytest.raises(SliceReadError, match="not a readable DICOM file"):
        read_slices_hu([tmp_path / "x.dcm"])


def _pydicom_hu(path: Path) -> np.ndarray:
    """What pydicom's general decoder and modality LUT give (the reference for the fast path)."""
    ds = pydicom.dcmread(path)
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)


def native_layouts(test: Callable[..., None]) -> Callable[..., None]:
    """The 48 native layouts a test runs on: 8 and 16 bits allocated, 7, 12 and 16 stored,
    signed and unsigned, four rescales (none among them), explicit and implicit VR."""
    for mark in (
        pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        pytest.mark.parametrize("rescale", [(1, -1024), (1, 0), (2.5, -1000.25), None]),
        pytest.mark.parametrize(
            ("bits", "stored", "signed"),
            [(16, 16, 1), (16, 12, 1), (16, 12, 0), (16, 16, 0), (8, 8, 0), (8, 7, 1)],
        ),
    ):
        test = mark(test)
    return test


def _native_variant(
    path: Path, *, bits: int, stored: int, signed: int, syntax: str, rescale: tuple | None
) -> None:
    """A slice in one native layout, with noise in the unused high bits."""
    ds = write_ct(path, hu_image(3))
    rng = np.random.default_rng(bits * 100 + stored + signed)
    dtype = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16}
    info = np.iinfo(dtype[(bits, signed)])
    values = rng.integers(info.min, info.max, size=(64, 64), endpoint=True)
    ds.PixelData = values.astype(dtype[(bits, signed)]).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = signed
    del ds.RescaleSlope, ds.RescaleIntercept
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


@native_layouts
def test_native_pixels_read_directly_match_pydicom(
    tmp_path: Path, bits: int, stored: int, signed: int, rescale: tuple | None, syntax: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    path = tmp_path / "n.dcm"
    _native_variant(path, bits=bits, stored=stored, signed=signed, syntax=syntax,
                    rescale=rescale)  # fmt: skip
    reference = _pydicom_hu(path)
    calls: list[np.ndarray | None] = []
    original = dicom_slices._native_stored_values
    monkeypatch.setattr(dicom_slices, "_native_stored_values",
                        lambda ds: calls.append(original(ds)) or calls[-1])  # fmt: skip
    (s,) = read_slices_hu([path])
    assert calls[0] is not None  # the fast path was taken
    assert s.hu.dtype == np.float32
    assert np.array_equal(s.hu, reference)


def test_unusual_native_layouts_go_through_pydicom(tmp_path: Path) -> None:
    # a Modality LUT Sequence, and pixel data one byte short: read by pydicom, same answer
    ds = write_ct(tmp_path / "lut.dcm", hu_image(5))
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "HU"
    item.add_new("LUTData", "US", list(range(0, 8192, 2)))
    ds.ModalityLUTSequence = [item]
    ds.save_as(tmp_path / "lut.dcm")
    (s,) = read_slices_hu([tmp_path / "lut.dcm"])
    assert np.array_equal(s.hu, _pydicom_hu(tmp_path / "lut.dcm"))
    assert dicom_slices._native_stored_values(pydicom.dcmread(tmp_path / "lut.dcm")) is not None

    ds = write_ct(tmp_path / "short.dcm", hu_image(6))
    ds.PixelData = ds.PixelData[:-2]
    ds.save_as(tmp_path / "short.dcm")
    assert dicom_slices._native_stored_values(pydicom.dcmread(tmp_path / "short.dcm")) is None
    with pytest.raises(SliceReadError, match="cannot decode pixel data"):
        read_slices_hu([tmp_path / "short.dcm"])


@pytest.mark.parametrize(
    ("slope", "intercept"),
    [("1", ["-1024", "0"]), ("1", ""), ("0", "-1024"), (["1", "2"], "-1024")],
    ids=["two-intercepts", "empty-intercept", "zero-slope", "two-slopes"],
)
@pytest.mark.parametrize("compressed", [False, True], ids=["native", "rle"])
def test_an_unusable_rescale_is_a_slice_read_error(
    tmp_path: Path, slope: object, intercept: object, compressed: bool
) -> None:
    """Not a TypeError that fails the job without a report: the study gets a not-analysed SR
    that says why."""
    ds = write_ct(tmp_path / "r.dcm", hu_image(13))
    if compressed:
        ds.compress(RLELossless)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(tmp_path / "r.dcm")
    with pytest.raises(SliceReadError, match="unusable Rescale Slope / Intercept") as err:
        read_slices_hu([tmp_path / "r.dcm"])
    assert err.value.path == tmp_path / "r.dcm"
