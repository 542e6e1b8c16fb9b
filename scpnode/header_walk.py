"""A received file's header read as pydicom reads it, with the element walk done in memory.

`pydicom.dcmread(stop_before_pixels=True)` reads each element with two or three `read`
calls and a struct unpack, ~8 µs an element: for a CT header of 70-300 elements most of the
time the SCP spends on each instance's header, on the association's thread. This walks the
same bytes from one buffer and builds the very `RawDataElement`s pydicom's
`data_element_generator` yields (tag, VR, length, value, value position, encoding), into a
pydicom `Dataset` that converts values lazily exactly as one from `dcmread` does.

It covers the case a CT scanner sends: a preamble, an Explicit VR Little Endian file meta,
an Explicit or Implicit VR Little Endian data set with standard VRs up to the pixel data;
an undefined-length sequence there is read by pydicom's own `read_sequence`, as its
generator does. Anything else (an unknown VR, an undefined length pydicom would guess about,
a declared encoding the first element contradicts, a truncated element, a header over
`MAX_HEADER`) answers None, and the caller asks pydicom, with pydicom's errors.
tests/unit/test_header_walk.py holds the walk to pydicom's own over pydicom's test files,
our synthetic series and awkward headers.
"""

from __future__ import annotations

import io
import struct
from collections.abc import MutableSequence
from dataclasses import dataclass
from typing import BinaryIO, NoReturn, cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

FIRST_READ = 64 * 1024  # a CT header is 2-10 KB; private groups can make it longer
MAX_HEADER = 1024 * 1024  # beyond this, pydicom reads it (it streams; we would buffer)
EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # pydicom's stop_before_pixels
_ITEM_DELIMITATION = 0xFFFEE00D
_CHARSET = BaseTag(0x00080005)  # Specific Character Set
_UNDEFINED = 0xFFFFFFFF
_KNOWN_VRS = {vr.encode(default_encoding): str(vr) for vr in VR}
_LONG_VRS = frozenset(vr.encode(default_encoding) for vr in EXPLICIT_VR_LENGTH_32)
_UNPACK_TAG = struct.Struct("<HH").unpack_from
_UNPACK_SHORT = struct.Struct("<H").unpack_from
_UNPACK_LONG = struct.Struct("<L").unpack_from


_Elements = dict[BaseTag, DataElement | RawDataElement]  # what pydicom's Dataset takes


class _NeedMore(Exception):
    """The buffer ends inside the header: read further (or give up at MAX_HEADER)."""


@dataclass(frozen=True)
class WalkedHeader:
    dataset: Dataset  # its `file_meta` set, as on dcmread's FileDataset
    pixel_offset: int | None  # where the pixel data element starts; None: the file has none


def walk_header(fp: BinaryIO) -> WalkedHeader | None:
    """The header of the open file `fp` (read from its start), or None: ask pydicom."""
    fp.seek(0)
    data = fp.read(FIRST_READ)
    at_end = len(data) < FIRST_READ
    while True:
        try:
            return _walk(data, at_end)
        except _NeedMore:
            if at_end or len(data) >= MAX_HEADER:
                return None
            more = fp.read(MAX_HEADER - len(data))
            at_end = len(data) + len(more) < MAX_HEADER
            data += more


def _walk(data: bytes, at_end: bool) -> WalkedHeader | None:
    if len(data) < 132:
        return None if at_end else _need_more()
    if data[128:132] != b"DICM":
        return None
    meta, meta_end = _elements(data, 132, implicit=False, at_end=at_end, meta=True)
    if meta is None or not meta:
        return None
    syntax_raw = meta.get(BaseTag(0x00020010))
    syntax = _uid(syntax_raw.value) if syntax_raw is not None else None
    if syntax not in (EXPLICIT_LE, IMPLICIT_LE):
        return None
    implicit = syntax == IMPLICIT_LE
    if len(data) >= meta_end + 6 and _looks_implicit(data[meta_end + 4 : meta_end + 6]) != implicit:
        return None  # pydicom would switch encodings (with a warning): its call
    elements, end = _elements(data, meta_end, implicit=implicit, at_end=at_end, meta=False)
    if elements is None:
        return None
    file_meta = FileMetaDataset(Dataset(meta))
    file_meta.set_original_encoding(False, True, default_encoding)
    dataset = Dataset(elements)
    encoding: str | list[str] = default_encoding
    if _CHARSET in elements:  # as pydicom's read_dataset: the data set's own character set
        encoding = convert_encodings(dataset.get(_CHARSET).value)
    dataset.set_original_encoding(implicit, True, encoding)
    dataset.file_meta = file_meta
    pixel_offset = end if end < len(data) else None
    return WalkedHeader(dataset, pixel_offset)


def _elements(
    data: bytes, pos: int, *, implicit: bool, at_end: bool, meta: bool
) -> tuple[_Elements | None, int]:
    """Top-level elements from `pos` up to the pixel data (or, for `meta`, group 0002)."""
    found: _Elements = {}
    encoding: str | MutableSequence[str] = default_encoding
    size = len(data)
    while True:
        if pos + 8 > size:
            if pos == size and at_end:
                return found, pos  # end of file, no pixel data
            _need_more()
        group, element = _UNPACK_TAG(data, pos)
        tag = group << 16 | element
        if (meta and group != 0x0002) or (not meta and tag in _PIXEL_TAGS):
            return found, pos
        if tag == _ITEM_DELIMITATION:
            return None, pos
        if implicit:
            vr = None
            length = _UNPACK_LONG(data, pos + 4)[0]
            value_at = pos + 8
        else:
            raw_vr = data[pos + 4 : pos + 6]
            vr = _KNOWN_VRS.get(raw_vr)
            if vr is None:
                return None, pos  # pydicom's guesses for odd VRs stay pydicom's
            if raw_vr in _LONG_VRS:
                if pos + 12 > size:
                    _need_more()
                length = _UNPACK_LONG(data, pos + 8)[0]
                value_at = pos + 12
            else:
                length = _UNPACK_SHORT(data, pos + 6)[0]
                value_at = pos + 8
        if length == _UNDEFINED:
            sequence = None if meta else _sequence(data, tag, vr, value_at, encoding, at_end)
            if sequence is None:
                return None, pos  # not a sequence pydicom would read as one: its path
            found[BaseTag(tag)], pos = sequence
            continue
        end = value_at + length
        if end > size:
            if at_end:
                return None, pos  # truncated: pydicom says how
            _need_more()
        value = (
            data[value_at:end] if length else cast(bytes | None, empty_value_for_VR(vr, raw=True))
        )
        found[BaseTag(tag)] = RawDataElement(
            BaseTag(tag), vr, length, value, value_at, implicit, True
        )
        if tag == _CHARSET:  # the encoding of what follows, as pydicom's generator keeps it
            encoding = convert_encodings(convert_string(value or b"", True))
        pos = end


def _sequence(
    data: bytes,
    tag: int,
    vr: str | None,
    value_at: int,
    encoding: str | MutableSequence[str],
    at_end: bool,
) -> tuple[DataElement, int] | None:
    """An undefined-length sequence read by pydicom's own `read_sequence`, as its generator
    does (CT headers often carry one or two); None where pydicom would guess its way."""
    implicit = vr is None
    if implicit:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
    if vr != VR.SQ:
        return None
    buffer = io.BytesIO(data)
    buffer.seek(value_at)
    try:
        items = read_sequence(buffer, implicit, True, _UNDEFINED, encoding)
    except Exception:  # the buffer ends inside it, or it is malformed: more data, or pydicom
        return None if at_end else _need_more()
    end = buffer.tell()
    if end >= len(data) and not at_end:
        _need_more()  # it may have stopped at the buffer's end, not at its delimiter
    return DataElement(BaseTag(tag), VR.SQ, items, value_at, is_undefined_length=True), end


def _looks_implicit(raw_vr: bytes) -> bool:
    """pydicom's test of the first element (`_is_implicit_vr`): not two capital letters."""
    return not (0x40 < raw_vr[0] < 0x5B and 0x40 < raw_vr[1] < 0x5B)


def _uid(value: bytes | None) -> str | None:
    if not isinstance(value, bytes):
        return None
    try:
        return value.decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        return None


def _need_more() -> NoReturn:
    raise _NeedMore
