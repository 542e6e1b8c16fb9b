"""The in-memory header walk (scpnode/header_walk.py) reads exactly what pydicom reads.

Over the corpus of tests/unit/test_raw_values.py (pydicom's test and character-set files,
our synthetic series, native pixel layouts, files that are not the plain case, awkward
headers) plus headers made to be awkward for a walker: every file the walk covers gives
pydicom's raw elements, file meta and pixel position, and `read_header` the same summary
or the same refusal; what it does not cover it hands to pydicom.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ImplicitVRLittleEndian

from scpnode import header_walk, headers
from scpnode.header_walk import walk_header
from tests.unit.test_dicom_slices import hu_image, write_ct
from tests.unit.test_raw_values import corpus, header_or_error


def settled(ds: Dataset) -> dict[BaseTag, object]:
    """The elements as read: raw ones as they are; those dcmread has already converted (the
    character set, the meta's transfer syntax...) and their counterparts by value."""
    return {
        tag: elem if isinstance(elem, RawDataElement) else (elem.VR, elem.value)
        for tag, elem in ds._dict.items()
    }


def same_elements(ours: Dataset, theirs: Dataset) -> bool:
    mine, other = settled(ours), settled(theirs)
    for tag in set(mine) | set(other):
        if isinstance(mine.get(tag), RawDataElement) != isinstance(other.get(tag), RawDataElement):
            mine[tag], other[tag] = (
                (ours[tag].VR, ours[tag].value),
                (theirs[tag].VR, theirs[tag].value),
            )
    return mine == other


def pydicom_read(path: Path) -> tuple[Dataset, int]:
    with path.open("rb") as fp:
        return pydicom.dcmread(fp, stop_before_pixels=True), fp.tell()


def walked_read(path: Path) -> tuple[Dataset, int] | None:
    with path.open("rb") as fp:
        walked = walk_header(fp)
        if walked is None:
            return None
        end = fp.seek(0, 2)
    return walked.dataset, end if walked.pixel_offset is None else walked.pixel_offset


def awkward_for_a_walker(root: Path) -> list[Path]:
    """Long private values (past the first read), undefined-length sequences (nested, in an
    implicit VR file, after the first read, a private one), files cut short, no pixel data,
    a file of meta only."""
    made = []

    def ct(name: str, **change: object) -> Dataset:
        path = root / name
        ds = write_ct(path, hu_image(2))
        for keyword, value in change.items():
            setattr(ds, keyword, value)
        made.append(path)
        return ds

    big = ct("private.dcm")
    big.add_new(0x00430010, "LO", "GEMS_PARM_01")
    big.add_new(0x00431001, "OB", b"\x01" * (header_walk.FIRST_READ + 999))
    big.save_as(made[-1], enforce_file_format=True)
    item = Dataset()
    item.Manufacturer = "x"
    seq = ct("sequence.dcm", ReferencedImageSequence=Sequence([item]))
    seq["ReferencedImageSequence"].is_undefined_length = True  # as many scanners write it
    seq.save_as(made[-1], enforce_file_format=True)
    assert b"\xff\xff\xff\xff" in made[-1].read_bytes()[:4000]
    whole = made[-1].read_bytes()
    cut_at = whole.index(b"\x08\x00\x40\x11SQ") + 40  # inside the sequence's item
    (root / "cut_in_sequence.dcm").write_bytes(whole[:cut_at])
    made.append(root / "cut_in_sequence.dcm")
    inside_rows = whole.index(b"\x28\x00\x10\x00US") + 9  # within the Rows element
    (root / "truncated.dcm").write_bytes(whole[:inside_rows])
    made.append(root / "truncated.dcm")
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D3000", "SRT"
    inner.is_undefined_length_sequence_item = True
    outer = Dataset()
    outer.RequestedProcedureID = "1"
    outer.RequestedProcedureCodeSequence = Sequence([inner])
    outer["RequestedProcedureCodeSequence"].is_undefined_length = True
    outer.is_undefined_length_sequence_item = True
    late = ct("late_nested_sequence.dcm", RequestAttributesSequence=Sequence([outer]))
    late["RequestAttributesSequence"].is_undefined_length = True
    late.add_new(0x00090010, "LO", "ACME")
    late.add_new(0x00091001, "OB", b"\x02" * (header_walk.FIRST_READ + 10))
    late.save_as(made[-1], enforce_file_format=True)
    implicit = ct("implicit_sequence.dcm", ReferencedImageSequence=Sequence([item]))
    implicit["ReferencedImageSequence"].is_undefined_length = True
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit.save_as(made[-1], implicit_vr=True, little_endian=True, enforce_file_format=True)
    text = Dataset()
    text.CodeMeaning = "肺 Lunge ä"  # read under the data set's character set
    utf8 = ct("utf8_sequence.dcm", SpecificCharacterSet="ISO_IR 192",
              AnatomicRegionSequence=Sequence([text]))  # fmt: skip
    utf8["AnatomicRegionSequence"].is_undefined_length = True
    utf8.save_as(made[-1], enforce_file_format=True)
    private = ct("implicit_private_sequence.dcm")
    private.add_new(0x00290010, "LO", "ACME")
    private.add_new(0x00291010, "SQ", Sequence([item]))
    private[0x00291010].is_undefined_length = True
    private.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    private.save_as(made[-1], implicit_vr=True, little_endian=True, enforce_file_format=True)
    nopix = ct("nopixels.dcm")
    del nopix.PixelData
    nopix.save_as(made[-1], enforce_file_format=True)
    (root / "metaonly.dcm").write_bytes(
        whole[: 132 + 12 + int.from_bytes(whole[140:144], "little")]
    )
    made.append(root / "metaonly.dcm")
    return made


def test_the_walk_reads_what_pydicom_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = corpus(tmp_path) + awkward_for_a_walker(tmp_path)
    walked = 0
    for path in files:
        ours = walked_read(path)
        if ours is None:
            continue
        walked += 1
        theirs = pydicom_read(path)
        assert ours[1] == theirs[1], path.name  # where the pixel data starts
        assert same_elements(ours[0], theirs[0]), path.name
        assert same_elements(ours[0].file_meta, theirs[0].file_meta), path.name
    assert walked > 100  # the common case is the walk's
    fast = [header_or_error(p) for p in files]
    monkeypatch.setattr(headers, "walk_header", lambda _fp: None)
    slow = [header_or_error(p) for p in files]
    differ = [(p.name, f, s) for p, f, s in zip(files, fast, slow, strict=True) if f != s]
    assert not differ, differ[:3]


def test_what_the_walk_covers_and_hands_over(tmp_path: Path) -> None:
    made = {p.name: p for p in awkward_for_a_walker(tmp_path)}
    walked = [
        "private.dcm",  # read on past the first 64 KiB
        "nopixels.dcm",
        "sequence.dcm",  # undefined-length sequences, read by pydicom's read_sequence
        "late_nested_sequence.dcm",  # ... nested, undefined-length items, past 64 KiB
        "implicit_sequence.dcm",  # ... known to the dictionary in an implicit VR file
        "utf8_sequence.dcm",  # ... its text under the data set's character set
    ]
    for name in walked:
        assert walked_read(made[name]) is not None, name
    # pydicom's own guess (a private tag, implicit VR), or files cut short: dcmread's answer
    for name in ("implicit_private_sequence.dcm", "cut_in_sequence.dcm", "truncated.dcm"):
        assert walked_read(made[name]) is None, name
