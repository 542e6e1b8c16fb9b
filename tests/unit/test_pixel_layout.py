"""Pixel layouts noted at reception (scpnode/pixel_layout.py) and the worker's read through
them (`dicom_slices.read_known`): the same slice, to the bit, as parsing the file; no layout
where the file is not the plain case; the long way when the file no longer matches."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from model_zoo.card import ModelCard
from model_zoo.preprocess import as_hu, lung_fraction
from scpnode.headers import read_header
from scpnode.infer import dicom_slices
from scpnode.infer.decoders import prepare_paths
from scpnode.infer.dicom_slices import (
    KnownSlice,
    SliceReadError,
    known_slice,
    read_known,
    read_pixels,
    read_slice,
)
from scpnode.pixel_layout import PixelLayout, read_stored
from scpnode.synth import make_study_spec, write_study
from tests.unit.test_dicom_slices import _native_variant, hu_image, native_layouts, write_ct
from tests.unit.test_engine import make_card


def row_of(path: Path) -> SimpleNamespace:
    """What the instance row holds for the file, as the SCP records it."""
    fields = read_header(path).row_fields()
    return SimpleNamespace(path=str(path), sop_instance_uid=read_header(path).sop_uid, **fields)


def assert_same_slice(got: tuple, expected: tuple) -> None:
    (s, position, number), (e, e_position, e_number) = got, expected
    assert (s.sop_instance_uid, s.sop_class_uid, s.path) == (
        e.sop_instance_uid, e.sop_class_uid, e.path,
    )  # fmt: skip
    assert (s.z, position, number) == (e.z, e_position, e_number)
    assert s.hu.dtype == e.hu.dtype == np.float32
    assert np.array_equal(s.hu, e.hu)


@native_layouts
def test_a_layout_reads_the_same_slice_as_parsing_the_file(
    tmp_path: Path, bits: int, stored: int, signed: int, rescale: tuple | None, syntax: str
) -> None:
    path = tmp_path / "n.dcm"
    _native_variant(path, bits=bits, stored=stored, signed=signed, syntax=syntax,
                    rescale=rescale)  # fmt: skip
    source = known_slice(row_of(path))
    assert isinstance(source, KnownSlice)
    assert_same_slice(read_known(source), read_slice(path))


def test_odd_8_bit_pixel_data_with_its_padding_byte(tmp_path: Path) -> None:
    path = tmp_path / "odd.dcm"
    ds = write_ct(path, hu_image(4, shape=(63, 63)))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(63 * 63, dtype=np.uint8).tobytes()  # 3,969 bytes, padded to even
    ds.save_as(path, enforce_file_format=True)
    source = known_slice(row_of(path))
    assert isinstance(source, KnownSlice) and source.layout.length == 63 * 63 + 1
    assert_same_slice(read_known(source), read_slice(path))


def test_elements_after_the_pixel_data_do_not_matter(tmp_path: Path) -> None:
    """pydicom's CT_small.dcm, which the test slices are made from, ends with Data Set
    Trailing Padding after its Pixel Data, as files from some scanners do."""
    path = tmp_path / "padded.dcm"
    write_ct(path, hu_image(5))
    assert 0xFFFCFFFC in pydicom.dcmread(path)
    source = known_slice(row_of(path))
    assert isinstance(source, KnownSlice)
    assert source.layout.offset + source.layout.length < path.stat().st_size
    assert_same_slice(read_known(source), read_slice(path))


def test_geometry_and_numbers_come_from_the_row(tmp_path: Path) -> None:
    """An oblique slice: its position along the normal from the row's strings is the one the
    file gives; no geometry falls back to the InstanceNumber, as `read_slice` does."""
    path = tmp_path / "oblique.dcm"
    ds = write_ct(path, hu_image(2), z=33.3, number=7)
    ds.ImageOrientationPatient = [0.9659258, 0.258819, 0.0, -0.258819, 0.9659258, 0.1]
    ds.ImagePositionPatient = ["-101.25", "17.5", "-33.125"]
    ds.save_as(path, enforce_file_format=True)
    assert_same_slice(read_known(known_slice(row_of(path))), read_slice(path))  # type: ignore[arg-type]
    bare = tmp_path / "no-geometry.dcm"
    write_ct(bare, hu_image(3), z=None, number=12)
    got = read_known(known_slice(row_of(bare)))  # type: ignore[arg-type]
    assert got[1] is None and got[0].z == 12.0
    assert_same_slice(got, read_slice(bare))


def test_geometry_that_is_not_numbers_orders_by_instance_number_on_both_paths(
    tmp_path: Path,
) -> None:
    """A position pydicom keeps as text (one value "-1x0.0"): no geometry, not a crash."""
    path = tmp_path / "bad-position.dcm"
    ds = write_ct(path, hu_image(14), number=9)
    ds.ImagePositionPatient = ["-100.0", "-120.0", "9.5"]
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"-100.0", b"-1x0.0", 1))
    parsed = read_slice(path)
    assert parsed[1] is None and parsed[0].z == 9.0
    assert_same_slice(read_known(known_slice(row_of(path))), parsed)  # type: ignore[arg-type]


def _rle(path: Path) -> None:
    ds = write_ct(path, hu_image(6))
    ds.compress(RLELossless)
    ds.save_as(path)


def _modality_lut(path: Path) -> None:
    ds = write_ct(path, hu_image(7))
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "HU"
    item.add_new("LUTData", "US", list(range(0, 8192, 2)))
    ds.ModalityLUTSequence = [item]
    ds.save_as(path)


def _rgb(path: Path) -> None:
    ds = write_ct(path, hu_image(8))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(64 * 64 * 3)
    ds.save_as(path)


def _short(path: Path) -> None:
    ds = write_ct(path, hu_image(9))
    ds.PixelData = ds.PixelData[:-2]
    ds.save_as(path)


def _two_intercepts(path: Path) -> None:
    ds = write_ct(path, hu_image(10))
    ds.RescaleIntercept = ["-1024", "0"]
    ds.save_as(path)


def _zero_slope(path: Path) -> None:
    ds = write_ct(path, hu_image(10))
    ds.RescaleSlope = "0"
    ds.save_as(path)


@pytest.mark.parametrize("make", [_rle, _modality_lut, _rgb, _short, _two_intercepts])
def test_files_that_are_not_the_plain_case_get_no_layout(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.dcm"
    make(path)
    row = row_of(path)
    assert row.pixel_layout is None
    assert known_slice(row) == path  # read the long way


def test_a_file_that_no_longer_matches_its_layout_is_read_the_long_way(tmp_path: Path) -> None:
    path = tmp_path / "s.dcm"
    ds = write_ct(path, hu_image(11))
    source = known_slice(row_of(path))
    assert isinstance(source, KnownSlice)
    # re-sent with another rescale, every byte where it was, and put in place as the spool
    # does it (a new file renamed over the old one): the inode tells
    ds.RescaleIntercept = "-1000.0"
    ds.save_as(tmp_path / "incoming.part", enforce_file_format=True)
    assert (tmp_path / "incoming.part").stat().st_size == path.stat().st_size
    os.replace(tmp_path / "incoming.part", path)
    assert read_stored(path, source.layout) is None
    assert_same_slice(read_known(source), read_slice(path))
    # rewritten in place with a longer header: the pixels moved, the element header tells
    ds.ImageComments = "re-sent with a comment, so every byte after it moved" * 3
    ds.PixelData = np.full((64, 64), 1500, dtype=np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    source = replace(source, layout=replace(source.layout, inode=path.stat().st_ino))
    assert read_stored(path, source.layout) is None
    assert_same_slice(read_known(source), read_slice(path))
    assert float(read_known(source)[0].hu.max()) == 1500 - 1000
    # and a file that lost its end is reported as read_slice reports it
    path.write_bytes(path.read_bytes()[:-300])  # past the trailing padding, into the pixels
    with pytest.raises(SliceReadError):
        read_known(source)


def test_a_layout_survives_its_round_trip_and_rejects_what_it_cannot_use() -> None:
    layout = PixelLayout(offset=1234, length=8192, vr="OW", rows=64, columns=64, dtype="<i2",
                         bits_stored=12, slope=2.5, intercept=-1000.25, inode=7)  # fmt: skip
    assert PixelLayout.decode(layout.encode()) == layout
    assert layout.element_header == b"\xe0\x7f\x10\x00OW\x00\x00\x00\x20\x00\x00"
    for text in (None, "", "{", "[]", '{"v":2}', layout.encode().replace('"<i2"', '">f8"'),
                 layout.encode().replace('"v":1', '"v":99')):  # fmt: skip
        assert PixelLayout.decode(text) is None


def test_the_scoring_read_takes_the_layout_without_parsing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.dcm"
    write_ct(path, hu_image(12))
    source = known_slice(row_of(path))
    expected = read_slice(path)

    def no_parsing(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the file was parsed")

    monkeypatch.setattr(dicom_slices.pydicom, "dcmread", no_parsing)
    item, position, number, pixels = dicom_slices.read_pixels(source)
    assert_same_slice((replace(item, hu=pixels.hu()), position, number), expected)


def _scorers_input(card: ModelCard, sources: list) -> tuple[np.ndarray, list]:
    prepared = prepare_paths(card, sources, lung_fraction)
    return prepared.batch, prepared.measures


@native_layouts
def test_the_scorers_prepare_the_same_input_from_the_stored_integers(
    tmp_path: Path, bits: int, stored: int, signed: int, rescale: tuple | None, syntax: str
) -> None:
    """`read_pixels` keeps integers and the intercept where that is exact (slope 1, integer
    intercept); the model input and the lung fraction are the parsed file's, to the bit."""
    path = tmp_path / "n.dcm"
    _native_variant(path, bits=bits, stored=stored, signed=signed, syntax=syntax,
                    rescale=rescale)  # fmt: skip
    source = known_slice(row_of(path))
    assert isinstance(source, KnownSlice)
    _, _, _, pixels = read_pixels(source)
    assert np.array_equal(as_hu(pixels.values, pixels.offset), read_slice(path)[0].hu)
    assert np.array_equal(pixels.hu(), read_slice(path)[0].hu)
    assert (pixels.values.dtype.kind in "iu") == (rescale is None or rescale[0] == 1)
    card = make_card("0" * 64)
    by_layout, parsed = _scorers_input(card, [source]), _scorers_input(card, [path])
    assert np.array_equal(by_layout[0], parsed[0]) and by_layout[1] == parsed[1]


def test_phantom_slices_from_their_layouts_score_as_parsed(tmp_path: Path) -> None:
    """The common case end to end: 512x512 phantom slices (16-bit, slope 1, an integer
    intercept) through the lungs, with a body crop and a lung fraction to find."""
    paths = write_study(make_study_spec(2, covid=True, n_slices=6), tmp_path / "series")
    sources = [known_slice(row_of(p)) for p in paths]
    pixels = [read_pixels(s)[3] for s in sources]
    assert all(p.values.dtype == np.int16 and p.offset in (-1000.0, -1024.0) for p in pixels)
    card = make_card("0" * 64)
    (batch, measures), (parsed_batch, parsed_measures) = (
        _scorers_input(card, sources), _scorers_input(card, paths),
    )  # fmt: skip
    assert np.array_equal(batch, parsed_batch) and measures == parsed_measures
    assert max(m for m in measures if m is not None) > 0.03  # lungs found in some slices
