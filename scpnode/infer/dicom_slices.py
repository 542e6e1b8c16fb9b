"""DICOM CT slices → Hounsfield-unit arrays in anatomical order.

Pixels are decoded by pydicom's plugins (gdcm, pyjpegls, openjpeg, rle are installed for the
compressed syntaxes scanners use), converted to HU with the modality LUT (rescale slope and
intercept, or a LUT), and ordered by position along the slice normal — not by file name or
InstanceNumber, which scanners number in either direction.

Most CT arrives uncompressed and little-endian. Those pixels are read straight from the
Pixel Data bytes (:func:`_native_stored_values`), with pydicom's own corrections: the same
values, 0.1 ms instead of 0.7 ms per 512x512 slice. A spooled slice whose instance row
holds its pixel layout (`scpnode.pixel_layout`, noted by the SCP) is not parsed at all:
:func:`read_pixels` takes identity and geometry from the row and reads only the pixel bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from scpnode.pixel_layout import (
    STORED_DTYPES,
    PixelLayout,
    correct_unused_bits,
    read_stored,
    usable_rescale,
)

T = TypeVar("T")

_NATIVE_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})
_GREYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
#: |values| below this are integers that float32 holds exactly
_FLOAT32_EXACT = 2**24
#: the pixels of a slice that is only an identity (its pixels were used and dropped)
NO_PIXELS = np.empty((0, 0), dtype=np.float32)


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
    return _projected(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"))


def _projected(ipp: Sequence[float] | None, iop: Sequence[float] | None) -> float | None:
    """None for geometry that is missing or not numbers (a malformed DS the reader kept as
    text): the series is then ordered by InstanceNumber, never half by one key."""
    if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
        return None
    try:
        cosines = np.asarray(iop, dtype=np.float64)
        position = np.asarray(ipp, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    normal = np.cross(cosines[:3], cosines[3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        return None
    return float(np.dot(position, normal))


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
    _check_rescale(ds, path)
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


def _check_rescale(ds: Dataset, path: Path) -> None:
    """A rescale the modality LUT can apply: one finite number each, a slope other than 0.
    Anything else (empty, several values, text) is a slice we cannot turn into HU, said so,
    rather than a TypeError that fails the job without a report."""
    if ds.get("ModalityLUTSequence") or "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return  # the LUT applies, or no rescale at all: the stored values are the HU
    if usable_rescale(ds.RescaleSlope, ds.RescaleIntercept) is None:
        shown = " / ".join(str(ds.get(k))[:32] for k in ("RescaleSlope", "RescaleIntercept"))
        raise SliceReadError(path, f"unusable Rescale Slope / Intercept ({shown})")


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
        single = int(ds.SamplesPerPixel) == 1 and ds.PhotometricInterpretation in _GREYSCALE
    except (AttributeError, TypeError, ValueError):
        return None
    data = ds.PixelData
    dtype = STORED_DTYPES.get((allocated, int(ds.PixelRepresentation)))
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
    return correct_unused_bits(values, allocated, stored)


def _stored_to_hu(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """``apply_modality_lut`` as float32, the same bits (:func:`rescaled_hu` for a rescale)."""
    if ds.get("ModalityLUTSequence") or "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    return rescaled_hu(stored, float(ds.RescaleSlope), float(ds.RescaleIntercept))


def rescaled_hu(stored: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    """What ``apply_modality_lut`` gives for a rescale (None: none), as float32, the same
    bits; without its float64 pass for the usual slope 1 and integer intercept (exact in
    float32 either way)."""
    if slope is None or intercept is None:
        return stored.astype(np.float32)
    if _integer_offset(slope, intercept):
        hu = stored.astype(np.float32)
        return np.add(hu, np.float32(intercept), out=hu)
    wide = stored.astype(np.float64) * slope  # apply_modality_lut's own steps
    wide += intercept
    return wide.astype(np.float32)


def _integer_offset(slope: float, intercept: float) -> bool:
    """Whether HU = stored + intercept: slope 1 and an integer intercept, so that the HU of
    16-bit stored values are integers float32 holds exactly."""
    return slope == 1.0 and intercept.is_integer() and abs(intercept) < _FLOAT32_EXACT - 2**16


@dataclass(frozen=True)
class HUPixels:
    """A slice's HU as ``values + offset``, the form `model_zoo.preprocess` takes.

    For nearly every CT (16-bit stored values, slope 1, an integer intercept) these are the
    stored integers and the intercept: the preprocessing adds the intercept only to the
    pixels it reads (the body's crop), the same float32 bits, and the full float32 HU image
    (1 MB at 512x512) is never made. Otherwise the HU themselves and 0.
    """

    values: np.ndarray
    offset: float = 0.0

    def hu(self) -> np.ndarray:
        """The whole float32 HU image, as `read_slice` gives it."""
        if self.offset == 0.0:
            return self.values.astype(np.float32, copy=False)
        return rescaled_hu(self.values, 1.0, self.offset)


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


@dataclass(frozen=True)
class KnownSlice:
    """A spooled slice with what the SCP already read from its header (its instance row):
    only its pixel bytes are left to read."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    position: float | None
    instance_number: float
    layout: PixelLayout


#: what the scoring paths read: a file, or a spooled slice whose row has its pixel layout
SliceSource = Path | KnownSlice


class SpooledInstance(Protocol):
    """The instance row's fields `known_slice` uses (scpnode.db.models.InstanceRow)."""

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    position: str
    orientation: str
    instance_number: int | None
    pixel_layout: str | None


def known_slice(row: SpooledInstance) -> SliceSource:
    """The row as a `KnownSlice` when it holds a usable pixel layout, else its file path."""
    layout = PixelLayout.decode(row.pixel_layout)
    if layout is None:
        return Path(row.path)
    ipp, iop = _numbers(row.position), _numbers(row.orientation)
    position = _projected(ipp, iop) if ipp is not None and iop is not None else None
    number = float(row.instance_number or 0)
    return KnownSlice(Path(row.path), row.sop_instance_uid, row.sop_class_uid, position, number,
                      layout)  # fmt: skip


def _numbers(text: str) -> list[float] | None:
    """A backslash-separated DS value as the header summary keeps it, or None."""
    try:
        return [float(v) for v in text.split("\\")] if text else None
    except ValueError:
        return None


def read_known(known: KnownSlice) -> tuple[SliceHU, float | None, float]:
    """`read_slice` for a slice whose row has its pixel layout: only the pixel bytes are
    read. A file that no longer matches the layout is read the long way. (The scorers use
    `read_pixels`, which this completes with the whole HU image.)"""
    item, position, number, pixels = read_pixels(known)
    return replace(item, hu=pixels.hu()), position, number


def _known_item(known: KnownSlice, hu: np.ndarray) -> SliceHU:
    position = known.position
    return SliceHU(
        sop_instance_uid=known.sop_instance_uid,
        sop_class_uid=known.sop_class_uid,
        path=known.path,
        z=known.instance_number if position is None else position,
        hu=hu,
    )


def read_pixels(source: SliceSource) -> tuple[SliceHU, float | None, float, HUPixels]:
    """What the scorers read of a file or a `KnownSlice`: the slice (its ``hu`` left empty),
    its position and InstanceNumber, and its pixels as `HUPixels`."""
    if isinstance(source, KnownSlice):
        stored = read_stored(source.path, source.layout)
        if stored is not None:
            pixels = _stored_pixels(stored, source.layout.slope, source.layout.intercept)
            return _known_item(source, NO_PIXELS), source.position, source.instance_number, pixels
    item, position, number = read_slice(source.path if isinstance(source, KnownSlice) else source)
    return replace(item, hu=NO_PIXELS), position, number, HUPixels(item.hu)


def _stored_pixels(stored: np.ndarray, slope: float | None, intercept: float | None) -> HUPixels:
    """The HU of `rescaled_hu`, kept as the stored integers and the intercept when exact."""
    if stored.dtype.itemsize <= 2:
        if slope is None or intercept is None:
            return HUPixels(stored)
        if _integer_offset(slope, intercept):
            return HUPixels(stored, intercept)
    return HUPixels(rescaled_hu(stored, slope, intercept))


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
