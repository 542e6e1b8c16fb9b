"""Header values from the raw bytes (scpnode/raw_values.py) give exactly what pydicom gives.

`read_header` with the raw reads is compared with `read_header` made to ask pydicom for
every value, over pydicom's own test and character-set files, our synthetic series, the 48
native pixel layouts, files that are not the plain case, and hand-made awkward headers
(non-ASCII text under several character sets, several values, numbers pydicom reads its own
way, NULs, empty values, a wrong VR).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from scpnode import raw_values
from scpnode.headers import InstanceHeader, UnreadableDataset, read_header, summarise
from scpnode.synth import make_study_spec, write_study
from tests.unit.test_dicom_slices import _native_variant, hu_image, write_ct
from tests.unit.test_pixel_layout import (
    _modality_lut,
    _rgb,
    _rle,
    _short,
    _two_intercepts,
    _zero_slope,
)

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"


def _edit(swap: dict[bytes, bytes] | None = None, **values: object) -> Callable[[Path], None]:
    """A CT slice whose header has `values` (keyword -> value, or (VR, value) to force a VR);
    `swap`: bytes replaced in the written file (values pydicom refuses to write)."""

    def make(path: Path) -> None:
        ds = write_ct(path, hu_image(2))
        for keyword, value in values.items():
            if isinstance(value, tuple):
                ds.add_new(tag_for_keyword(keyword), *value)
            elif value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        for old, new in (swap or {}).items():
            assert data.count(old) == 1 and len(old) == len(new)
            data = data.replace(old, new)
        path.write_bytes(data)

    return make


AWKWARD: dict[str, Callable[[Path], None]] = {
    "latin1 text": _edit(SpecificCharacterSet="ISO_IR 100", StudyDescription="Thorax ä",
                         PatientID="Müller"),
    "utf8 text": _edit(SpecificCharacterSet="ISO_IR 192", SeriesDescription="肺 CT"),
    "japanese": _edit(SpecificCharacterSet=["", "ISO 2022 IR 87"], ProtocolName="Chest",
                      StudyDescription="胸部"),
    "cyrillic ascii": _edit(SpecificCharacterSet="ISO_IR 144", StudyDescription="CHEST"),
    "several values": _edit(StudyDescription=["CT", "CHEST"], ConvolutionKernel=["B30f", "2"],
                            Manufacturer=["scpnode", "x"]),
    "is as decimal": _edit(InstanceNumber=("IS", "5.0"), ImagesInAcquisition=("IS", " +7 ")),
    "bad numbers": _edit({b"7.7531": b"1,5   ", b"91873": b"x    ", b"0.7531": b"nan   "},
                         SliceThickness="7.7531", InstanceNumber="91873", RescaleSlope="0.7531"),
    "numbers with spaces": _edit(SliceThickness=("DS", " 1.25"), RescaleIntercept=("DS", "-1024 ")),
    "several thicknesses": _edit(SliceThickness=("DS", "1\\2"), NumberOfFrames=("IS", "1")),
    "empty values": _edit(StudyDescription="", SliceThickness=("DS", ""), Modality="",
                          NumberOfFrames=("IS", ""), InstanceNumber=("IS", "")),
    "absent values": _edit(StudyDescription=None, SliceThickness=None, InstanceNumber=None),
    "nul inside": _edit(PatientID="AB\x00CD", SeriesDescription="x\x00"),
    "our own": _edit(Manufacturer="scpnode", ManufacturerModelName="scpnode "),
    "wrong vr": _edit({b"\x28\x00\x10\x00US": b"\x28\x00\x10\x00SS",
                       b"\x08\x00\x30\x10LO": b"\x08\x00\x30\x10SH"}),
    "zero frames": _edit(NumberOfFrames=("IS", "0")),
    "control char": _edit(StudyDescription="CT\tCHEST", ProtocolName="a\x1bb"),
}  # fmt: skip

NOT_PLAIN = [_rle, _modality_lut, _rgb, _short, _two_intercepts, _zero_slope]


def corpus(root: Path) -> list[Path]:
    files = [p for p in sorted((PYDICOM_DATA / "test_files").rglob("*")) if p.is_file()]
    files += sorted((PYDICOM_DATA / "charset_files").glob("*.dcm"))
    files += write_study(make_study_spec(5, n_slices=2), root / "synth")
    for i, make in enumerate([*NOT_PLAIN, *AWKWARD.values()]):
        files.append(root / f"made{i}.dcm")
        make(files[-1])
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        for bits, stored, signed in [(16, 16, 1), (16, 12, 0), (8, 7, 1)]:
            for rescale in [(1, -1024), (2.5, -1000.25), None]:
                files.append(root / f"native{len(files)}.dcm")
                _native_variant(files[-1], bits=bits, stored=stored, signed=signed,
                                syntax=syntax, rescale=rescale)  # fmt: skip
    return files


def header_or_error(path: Path) -> InstanceHeader | str:
    try:
        return read_header(path)
    except UnreadableDataset as exc:
        return f"unreadable: {exc}"
    except Exception as exc:  # the SCP answers these 0xC001 too; both ways must agree
        return f"{type(exc).__name__}: {exc}"


def test_raw_reads_give_what_pydicom_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = corpus(tmp_path)
    assert len(files) > 150
    fast = [header_or_error(p) for p in files]
    monkeypatch.setattr(raw_values, "text", lambda *_a, **_k: None)
    monkeypatch.setattr(raw_values, "unsigned_short", lambda *_a, **_k: None)
    slow = [header_or_error(p) for p in files]
    differ = [(p.name, f, s) for p, f, s in zip(files, fast, slow, strict=True) if f != s]
    assert not differ, differ[:3]
    read = [h for h in fast if isinstance(h, InstanceHeader)]
    assert len(read) > 120 and any(h.pixel_layout for h in read)
    assert any(h.is_own for h in read)  # the "our own" header


def test_a_plain_ct_header_is_summarised_without_pydicom_converting_it(tmp_path: Path) -> None:
    (path, *_) = write_study(make_study_spec(6, n_slices=1), tmp_path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    header = summarise(ds)
    assert header.study_description and header.position and header.rows == 512
    for keyword in ("StudyInstanceUID", "StudyDescription", "ImagePositionPatient",
                    "SliceThickness", "InstanceNumber", "Rows"):  # fmt: skip
        assert isinstance(ds.get_item(tag_for_keyword(keyword)), RawDataElement), keyword


def test_text_under_a_character_set_that_is_not_ascii_compatible_goes_to_pydicom(
    tmp_path: Path,
) -> None:
    AWKWARD["japanese"](tmp_path / "j.dcm")
    ds = pydicom.dcmread(tmp_path / "j.dcm", stop_before_pixels=True)
    assert not raw_values.ascii_compatible(ds)
    assert raw_values.text(ds, "ProtocolName", plain_charset=False) is None
    assert raw_values.text(ds, "StudyInstanceUID", plain_charset=False)  # UIDs are ASCII
