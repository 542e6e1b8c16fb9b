"""The hash and header a data set file learns while its bytes arrive (receive/arrival.py) are
the file's own: over the header walk's corpus (pydicom's test and character-set files, our
synthetic series, awkward headers), fed in fragments of several sizes, the digest is the
file's SHA-256 and size, and the header `read_header`'s answer for the file, or None (the
handler then reads the file, and refuses it as before).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from scpnode import headers
from scpnode.headers import header_from_prefix
from scpnode.receive.arrival import PREFIX, Arrival
from scpnode.spool import file_sha256
from tests.unit.test_dicom_slices import hu_image, write_ct
from tests.unit.test_header_walk import awkward_for_a_walker
from tests.unit.test_raw_values import corpus, header_or_error

FRAGMENTS = (
    128,  # pynetdicom writes the preamble alone first
    4096,
    16_372,  # a 16 KiB PDU less its headers (dcmtk's default)
    262_138,  # the node's max PDU less its headers
    1 << 24,  # all at once
)


def fed(path: Path, fragment: int) -> Arrival:
    data = path.read_bytes()
    arrival = Arrival(os.stat(path).st_ino)
    for at in range(0, len(data), fragment):
        arrival.feed(data[at : at + fragment])
    return arrival


def pixels_at(path: Path, offset: int) -> Path:
    """A CT file whose Pixel Data element starts at `offset`: a private value pads it there."""
    ds = write_ct(path, hu_image(2))
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "OB", b"")
    ds.save_as(path, enforce_file_format=True)
    start = path.read_bytes().index(b"\xe0\x7f\x10\x00")
    ds[0x00091001].value = b"\x01" * (offset - start)
    ds.save_as(path, enforce_file_format=True)
    assert path.read_bytes().index(b"\xe0\x7f\x10\x00") == offset
    return path


def near_the_prefix_end(root: Path) -> list[Path]:
    """Pixel Data starting where the first bytes end: its element header cut (not settled),
    just inside, and just after them (the walk must read on)."""
    return [pixels_at(root / f"pixels_at_{o}.dcm", o) for o in (PREFIX - 8, PREFIX - 12, PREFIX)]


def test_digest_and_header_are_the_files(tmp_path: Path) -> None:
    files = corpus(tmp_path) + awkward_for_a_walker(tmp_path) + near_the_prefix_end(tmp_path)
    settled = 0
    for path in files:
        expected = header_or_error(path)
        for fragment in FRAGMENTS:
            digest, header = fed(path, fragment).complete()
            assert digest == file_sha256(path), (path.name, fragment)
            if header is not None:
                assert header == expected, (path.name, fragment)
                settled += fragment == FRAGMENTS[0]
    assert settled > 100  # the common case is settled as it arrives


def test_what_is_settled_as_it_arrives(tmp_path: Path) -> None:
    """A plain CT slice is settled from its first 64 KiB with its pixel layout; a header
    going on past them, or a file that is not whole, is left to `read_header`."""
    ct = tmp_path / "ct.dcm"
    write_ct(ct, hu_image(2, (256, 256)))
    assert len(ct.read_bytes()) > PREFIX  # settled before its last bytes came
    _, header = fed(ct, 16_372).complete()
    assert header is not None and header.pixel_layout is not None
    assert header == headers.read_header(ct)
    made = {p.name: p for p in awkward_for_a_walker(tmp_path) + near_the_prefix_end(tmp_path)}
    left = ["private.dcm", "late_nested_sequence.dcm", "truncated.dcm", "cut_in_sequence.dcm"]
    for name in [*left, f"pixels_at_{PREFIX}.dcm", f"pixels_at_{PREFIX - 8}.dcm"]:
        assert fed(made[name], 4096).complete()[1] is None, name
    settled = fed(made[f"pixels_at_{PREFIX - 12}.dcm"], 4096).complete()[1]
    assert settled is not None and settled.pixel_layout is not None


def test_a_header_that_fails_to_summarise_is_left_to_read_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ct = tmp_path / "ct.dcm"
    write_ct(ct, hu_image(2))
    prefix = ct.read_bytes()[:PREFIX]

    def broken(_ds: Dataset) -> None:
        raise ValueError("a value pydicom cannot convert")

    monkeypatch.setattr(headers, "summarise", broken)
    assert header_from_prefix(prefix, whole=False, inode=1) is None
