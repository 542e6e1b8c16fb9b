"""The header summary of one received instance: what scope rules and series selection need.

Read once at reception (without pixel data) and kept in the instance row, so deciding what to
analyse never re-reads hundreds of files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from scpnode import raw_values
from scpnode.header_walk import walk_header
from scpnode.pixel_layout import find_layout

OWN_MANUFACTURER = "scpnode"


class UnreadableDataset(ValueError):
    """The bytes are not a DICOM dataset we can parse."""


@dataclass(frozen=True)
class InstanceHeader:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    modality: str = ""
    body_part: str = ""
    study_description: str = ""
    series_description: str = ""
    protocol_name: str = ""
    image_type: str = ""
    kernel: str = ""
    slice_thickness: float | None = None
    orientation: str = ""
    position: str = ""
    instance_number: int | None = None
    number_of_frames: int = 1
    rows: int | None = None
    columns: int | None = None
    images_in_acquisition: int | None = None
    is_own: bool = False
    pixel_layout: str | None = None  # `PixelLayout.encode()`: where the worker finds the pixels

    def row_fields(self) -> dict[str, Any]:
        """Column values for `InstanceRow` (UIDs are set by the caller)."""
        skip = {"study_uid", "series_uid", "sop_uid"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def read_header(path: Path) -> InstanceHeader:
    """Parse the file up to the pixel data; raise `UnreadableDataset` with the reason.

    The summary also says where the pixels lie, when the file is the plain uncompressed case
    (`scpnode.pixel_layout`): the worker then reads them without parsing the file again.
    """
    try:
        with path.open("rb") as fp:
            ds = _read_until_pixels(fp)
            layout = find_layout(ds, fp)  # fp is left at the pixel data
        header = summarise(ds)
        return header if layout is None else replace(header, pixel_layout=layout.encode())
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise UnreadableDataset(f"{type(exc).__name__}: {exc}") from exc


def _read_until_pixels(fp: BinaryIO) -> Dataset:
    """The header as `dcmread(stop_before_pixels=True)` reads it, `fp` left at the pixels:
    walked in memory where header_walk.py covers the file, by pydicom otherwise."""
    walked = walk_header(fp)
    if walked is None:
        fp.seek(0)
        return pydicom.dcmread(fp, stop_before_pixels=True)
    if walked.pixel_offset is None:
        fp.seek(0, os.SEEK_END)
    else:
        fp.seek(walked.pixel_offset)
    return walked.dataset


def summarise(ds: Dataset) -> InstanceHeader:
    meta = getattr(ds, "file_meta", None)
    plain = raw_values.ascii_compatible(ds)
    return InstanceHeader(
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        transfer_syntax_uid=_text(meta, "TransferSyntaxUID") if meta is not None else "",
        patient_id=_text(ds, "PatientID", plain)[:64],
        modality=_text(ds, "Modality")[:16],
        body_part=_text(ds, "BodyPartExamined")[:64],
        study_description=_text(ds, "StudyDescription", plain)[:64],
        series_description=_text(ds, "SeriesDescription", plain)[:64],
        protocol_name=_text(ds, "ProtocolName", plain)[:64],
        image_type=_multi(ds, "ImageType")[:128],
        kernel=_multi(ds, "ConvolutionKernel", plain)[:64],
        slice_thickness=_float(ds, "SliceThickness"),
        orientation=_multi(ds, "ImageOrientationPatient")[:128],
        position=_multi(ds, "ImagePositionPatient")[:128],
        instance_number=_int(ds, "InstanceNumber"),
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
        rows=_count(ds, "Rows"),
        columns=_count(ds, "Columns"),
        images_in_acquisition=_int(ds, "ImagesInAcquisition"),
        is_own=is_own_object(ds, plain),
    )


def is_own_object(ds: Dataset, plain: bool = False) -> bool:
    """Objects an scpnode made say so (as manufacturer and model, and in Contributing
    Equipment); they never trigger work."""
    made_by = (_text(ds, "Manufacturer", plain), _text(ds, "ManufacturerModelName", plain))
    if all(v.lower() == OWN_MANUFACTURER for v in made_by):
        return True
    for item in ds.get("ContributingEquipmentSequence", []):
        if _text(item, "Manufacturer").lower() == OWN_MANUFACTURER:
            return True
    return False


def _clean(text: str) -> str:
    """Stripped, without NUL characters: PostgreSQL text cannot hold them (a hostile or broken
    header would otherwise keep its instance out of the database)."""
    return text.replace("\x00", "").strip()


# Each reads the raw bytes where `raw_values` can (the same answer, a tenth of the time) and
# asks pydicom otherwise. `plain`: the data set's character set reads ASCII as ASCII.


def _text(ds: Dataset | None, keyword: str, plain: bool = False) -> str:
    if ds is None:
        return ""
    fast = raw_values.text(ds, keyword, plain_charset=plain)
    if fast is not None and "\\" not in fast:  # several values: pydicom's str() of them
        return _clean(fast)
    value = ds.get(keyword)
    return "" if value is None else _clean(str(value))


def _multi(ds: Dataset, keyword: str, plain: bool = False) -> str:
    fast = raw_values.text(ds, keyword, plain_charset=plain)
    if fast is not None:
        return "\\".join(_clean(v) for v in fast.split("\\")) if fast else ""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, str | bytes):
        return _clean(str(value))
    try:
        return "\\".join(_clean(str(v)) for v in value)
    except TypeError:
        return _clean(str(value))


def _float(ds: Dataset, keyword: str) -> float | None:
    fast = raw_values.text(ds, keyword, plain_charset=False)
    try:
        if fast is not None:
            return float(fast) if fast else None
        value = ds.get(keyword)
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    fast = raw_values.text(ds, keyword, plain_charset=False)
    if fast is not None and (fast == "" or fast.lstrip("+-").isdigit()):
        return int(fast) if fast else None
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _count(ds: Dataset, keyword: str) -> int | None:
    """A US value (Rows, Columns)."""
    fast = raw_values.unsigned_short(ds, keyword)
    return fast if fast is not None else _int(ds, keyword)
