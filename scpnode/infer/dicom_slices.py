"""DICOM CT slices → Hounsfield-unit arrays in anatomical order.

Pixels are decoded by pydicom's plugins (gdcm, pyjpegls, openjpeg, rle are installed for the
compressed syntaxes scanners use), converted to HU with the modality LUT (rescale slope and
intercept, or a LUT), and ordered by position along the slice normal — not by file name or
InstanceNumber, which scanners number in either direction.

Most CT arrives uncompressed and little-endian. Those pixels are read straight from the
Pixel Data bytes (:func:`_native_stored_values`), with pydicom's own corrections: the same
values, 0.1 ms instead of 0.7 ms per 512x512 slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

T = TypeVar("T")

_NATIVE_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})
_GREYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
_STORED_DTYPES = {(8, 0): "u1", (8, 1): "i1", (16, 0): "<u2", (16, 1): "<i2"}
#: |values| below this are integers that float32 holds exactly
_FLOAT32_EXACT = 2**24


class SliceReadError(Exception):
    """A file that cannot become an HU slice; ``reason`` says why (for the not-analysed SR)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type[SliceReadError], tuple[Path, str]]:
        return (SliceReadError, (self.path, self.reason))  # raised in a decoder process


@dataclass(frozen=True, eq=False)
class SliceHU:
    """One decoded slice. ``z`` is the position along the slice normal in mm (the
    InstanceNumber when the file carries no usable geometry)."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    z: float
    hu: np.ndarray


def normal_position(ds: Dataset) -> float | None:
    """ImagePositionPatient projected on the slice normal (row x column cosines), or None."""
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
        return None
    cosines = np.asarray(iop, dtype=np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        return None
    return float(np.dot(np.asarray(ipp, dtype=np.float64), normal))


def _instance_number(ds: Dataset) -> float:
    try:
        return float(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def _decode_hu(ds: Dataset, path: Path) -> np.ndarray:
    """Decode the pixel data and apply the modality LUT; failures become SliceReadError."""
    if "PixelData" not in ds:
        raise SliceReadError(path, "no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise SliceReadError(path, "multi-frame image (Enhanced CT is not analysed yet)")
    stored = _native_stored_values(ds)
    if stored is not None:
        return _stored_to_hu(stored, ds)
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many kinds (RuntimeError, ValueError, ...)
        name = getattr(syntax, "name", str(syntax))
        raise SliceReadError(path, f"cannot decode pixel data ({name}): {exc}") from exc
    if pixels.ndim != 2:
        raise SliceReadError(path, f"expected a 2-D greyscale image, got shape {pixels.shape}")
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)


def _native_stored_values(ds: Dataset) -> np.ndarray | None:
    """The stored values of an uncompressed little-endian greyscale slice, read straight from
    the Pixel Data bytes, or None when anything is unusual (pydicom's decoder then handles
    it, and reports what is wrong).

    Gives what ``ds.pixel_array`` gives for these files, including its correction of the
    unused high bits (Bits Stored < Bits Allocated: masked, or sign-extended when signed).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in _NATIVE_LITTLE_ENDIAN:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        dtype = _STORED_DTYPES.get((allocated, int(ds.PixelRepresentation)))
        single = int(ds.SamplesPerPixel) == 1 and ds.PhotometricInterpretation in _GREYSCALE
    except (AttributeError, TypeError, ValueError):
        return None
    data = ds.PixelData
    expected = rows * columns * allocated // 8
    if (
        dtype is None
        or not single
        or not 0 < stored <= allocated
        or rows < 1
        or columns < 1
        or not isinstance(data, bytes)
        or len(data) not in (expected, expected + 1)  # + 1: the even-length padding byte
    ):
        return None
    values = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
    if stored == allocated:
        return values
    shift = allocated - stored
    return np.right_shift(np.left_shift(values, shift), shift)


def _stored_to_hu(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """``apply_modality_lut`` as float32, the same bits, without its float64 pass when the
    rescale is the usual slope 1 and an integer intercept (exact in float32 either way)."""
    if ds.get("ModalityLUTSequence") or "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if slope == 1.0 and intercept.is_integer() and abs(intercept) < _FLOAT32_EXACT - 2**16:
        hu = stored.astype(np.float32)
        return np.add(hu, np.float32(intercept), out=hu)
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)


def read_slice(path: Path | str) -> tuple[SliceHU, float | None, float]:
    """One file → (slice, geometric position or None, InstanceNumber)."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise SliceReadError(path, f"not a readable DICOM file: {exc}") from exc
    hu = _decode_hu(ds, path)
    position, number = normal_position(ds), _instance_number(ds)
    item = SliceHU(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        path=path,
        z=number if position is None else position,
        hu=hu,
    )
    return item, position, number


def order_along_normal(read: Sequence[tuple[T, float | None, float, str]]) -> list[tuple[T, float]]:
    """(item, position or None, InstanceNumber, path) → items with their z, in anatomical order.

    Geometry is used only when every slice has it, so a series is never half-sorted by one
    key and half by another.
    """
    if all(position is not None for _, position, _, _ in read):
        ranked = sorted(read, key=lambda r: (r[1], r[2], r[3]))
        return [(item, float(position)) for item, position, _, _ in ranked]  # type: ignore[arg-type]
    ranked = sorted(read, key=lambda r: (r[2], r[3]))
    return [(item, number) for item, _, number, _ in ranked]


def read_slices_hu(paths: Iterable[Path | str]) -> list[SliceHU]:
    """Read, decode and order slices along the slice normal (InstanceNumber as fallback).

    Holds every slice in memory: for analysing a series the worker uses
    `scpnode.infer.stream.score_series`, which keeps a few batches at a time.
    """
    read = [(s, position, number, str(s.path)) for s, position, number in map(read_slice, paths)]
    return [replace(item, z=z) for item, z in order_along_normal(read)]
