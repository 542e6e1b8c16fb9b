"""Where an uncompressed slice's pixels lie in its file, found once, when it is received.

The worker reads every slice of a study; parsing each file's header again cost it more than
reading the pixels (0.6 of 0.75 ms per 512x512 slice, docs/performance.md). The SCP parses
the header anyway, so it also notes where the Pixel Data value starts and how its stored
values become HU; the instance row keeps that note (`instances.pixel_layout`), and the worker
reads the pixel bytes straight from there (`scpnode.infer.dicom_slices.read_pixels`).

Only the plain case gets a layout: native little-endian, one greyscale sample, one frame, a
rescale or none, no Modality LUT Sequence. The Pixel Data element header is checked when the
layout is found and again at every read, with the file's inode: a file that no longer
matches (a re-sent version replaced it) is read the long way, as before.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from scpnode import raw_values

_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
_GREYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
STORED_DTYPES = {(8, 0): "u1", (8, 1): "i1", (16, 0): "<u2", (16, 1): "<i2"}
_VERSION = 1


@dataclass(frozen=True)
class PixelLayout:
    """The Pixel Data value of one native greyscale frame: where it is and what it holds."""

    offset: int  # of the value, in bytes from the start of the file
    length: int  # of the value, with its even-length padding byte if any
    vr: str  # "OW" or "OB"; "" for implicit VR
    rows: int
    columns: int
    dtype: str  # of the stored values (a key of STORED_DTYPES' values)
    bits_stored: int
    slope: float | None  # None: no rescale in the header (stored values are the HU)
    intercept: float | None
    inode: int  # of the file it was found in: a replaced file is another one

    @property
    def element_header(self) -> bytes:
        """The bytes just before the value: tag, VR (explicit) and the value length."""
        length = struct.pack("<I", self.length)
        if not self.vr:
            return _PIXEL_DATA_TAG + length
        return _PIXEL_DATA_TAG + self.vr.encode("ascii") + b"\x00\x00" + length

    @property
    def bits_allocated(self) -> int:
        return np.dtype(self.dtype).itemsize * 8

    def encode(self) -> str:
        return json.dumps({"v": _VERSION, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> PixelLayout | None:
        """The layout a row holds, or None (none recorded, or one this version cannot use)."""
        if not text:
            return None
        try:
            fields = json.loads(text)
            if fields.pop("v") != _VERSION:
                return None
            layout = cls(**fields)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return layout if layout.dtype in STORED_DTYPES.values() else None


def find_layout(ds: Dataset, fp: BinaryIO) -> PixelLayout | None:
    """The layout of the open file `fp`, whose header `ds` pydicom has just read up to the
    pixels (`stop_before_pixels`: `fp` is left at the Pixel Data element); None when it is
    not the plain case or the element there is not the Pixel Data it should be."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    try:
        rows, columns = _count(ds, "Rows"), _count(ds, "Columns")
        allocated, stored = _count(ds, "BitsAllocated"), _count(ds, "BitsStored")
        dtype = STORED_DTYPES.get((allocated, _count(ds, "PixelRepresentation")))
        plain = (
            _count(ds, "SamplesPerPixel") == 1
            and _code(ds, "PhotometricInterpretation") in _GREYSCALE
            and _frames(ds) == 1
            and not ds.get("ModalityLUTSequence")
        )
        rescale = _rescale(ds)
    except (AttributeError, TypeError, ValueError, KeyError):
        return None
    if dtype is None or not plain or not 0 < stored <= allocated or rows < 1 or columns < 1:
        return None
    if rescale is None:
        return None
    try:
        at = fp.tell()
        head = fp.read(12)
        inode = os.fstat(fp.fileno()).st_ino
    except (OSError, ValueError):
        return None
    size = rows * columns * allocated // 8
    for length in (size, size + 1) if size % 2 else (size,):
        for vr in ("",) if syntax == ImplicitVRLittleEndian else ("OW", "OB"):
            layout = PixelLayout(
                offset=0, length=length, vr=vr, rows=rows, columns=columns, dtype=dtype,
                bits_stored=stored, slope=rescale[0], intercept=rescale[1], inode=inode,
            )  # fmt: skip
            if head.startswith(layout.element_header):
                return replace(layout, offset=at + len(layout.element_header))
    return None


def _rescale(ds: Dataset) -> tuple[float | None, float | None] | None:
    """(slope, intercept); (None, None) without a full rescale (pydicom then applies none);
    None for one that is present but unusable (the long path says what is wrong)."""
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return None, None
    return usable_rescale(_decimal(ds, "RescaleSlope"), _decimal(ds, "RescaleIntercept"))


# Header values from the raw bytes where `raw_values` can give pydicom's answer (a tenth of
# the time, on the SCP's association thread), else from pydicom.


def _count(ds: Dataset, keyword: str) -> int:
    fast = raw_values.unsigned_short(ds, keyword)
    return fast if fast is not None else int(getattr(ds, keyword))


def _code(ds: Dataset, keyword: str) -> object:
    fast = raw_values.text(ds, keyword, plain_charset=False)
    return fast if fast is not None and fast else getattr(ds, keyword)


def _frames(ds: Dataset) -> int:
    fast = raw_values.text(ds, "NumberOfFrames", plain_charset=False)
    if fast is not None and (fast == "" or fast.isdigit()):
        return int(fast or 1) or 1
    return int(ds.get("NumberOfFrames", 1) or 1)


def _decimal(ds: Dataset, keyword: str) -> object:
    """A DS value as pydicom gives it to `usable_rescale`: one number, or something that is
    not one (text, several values), which it refuses."""
    fast = raw_values.text(ds, keyword, plain_charset=False)
    if fast is None:
        return ds.get(keyword)
    try:
        return float(fast)
    except ValueError:
        return fast


def usable_rescale(slope: object, intercept: object) -> tuple[float, float] | None:
    """The header's Rescale Slope and Intercept as numbers, or None unless each is one
    finite number and the slope is not 0 (empty, several values, text: not a rescale)."""
    numbers = [_one_number(slope), _one_number(intercept)]
    if numbers[0] is None or numbers[1] is None:
        return None
    if not (math.isfinite(numbers[0]) and math.isfinite(numbers[1])) or numbers[0] == 0.0:
        return None
    return numbers[0], numbers[1]


def _one_number(value: object) -> float | None:
    """A DS value pydicom parsed into one number (float, or Decimal with `use_DS_decimal`)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return float(value)


def read_stored(path: Path, layout: PixelLayout) -> np.ndarray | None:
    """The stored values, as ``pixel_array`` gives them (unused high bits corrected), or None
    when the file no longer matches the layout (the caller then reads it the long way)."""
    head = layout.element_header
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_ino != layout.inode:
                return None  # another file now (a re-sent version): its layout may differ
            f.seek(layout.offset - len(head))
            data = f.read(len(head) + layout.length)
    except OSError:
        return None
    if len(data) != len(head) + layout.length or not data.startswith(head):
        return None
    count = layout.rows * layout.columns
    values = np.frombuffer(data, dtype=layout.dtype, count=count, offset=len(head))
    return correct_unused_bits(
        values.reshape(layout.rows, layout.columns), layout.bits_allocated, layout.bits_stored
    )


def correct_unused_bits(values: np.ndarray, allocated: int, stored: int) -> np.ndarray:
    """pydicom's correction when Bits Stored < Bits Allocated: the unused high bits masked
    off, or the sign extended from the highest stored bit when signed."""
    if stored == allocated:
        return values
    shift = allocated - stored
    return np.right_shift(np.left_shift(values, shift), shift)
