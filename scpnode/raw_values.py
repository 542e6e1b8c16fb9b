"""Header values read straight from pydicom's raw elements, where that gives pydicom's answer.

pydicom reads a header lazily: each element stays raw bytes until it is first used, and that
conversion (~15 µs an element) was most of the 0.8 ms the SCP spent summarising every
received instance, on the association's thread. The values a header summary needs are
mostly UIDs, code strings, numbers as text and 16-bit counts, whose bytes are ASCII or a
little-endian integer: this module reads those itself and answers None ("ask pydicom") for
anything else: a value already converted, a VR other than the dictionary's, a byte outside
printable ASCII, a text VR under a character set that is not ASCII-compatible, several
values. tests/unit/test_raw_values.py holds it to pydicom's own conversion over pydicom's
test files, our synthetic series and hostile headers.
"""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

#: VRs whose characters the standard limits to ASCII (no character set applies)
_ASCII_VRS = frozenset({"UI", "CS", "DS", "IS", "AS", "DA", "TM", "DT"})
#: text VRs whose value may be in the data set's character set
_TEXT_VRS = frozenset({"LO", "SH"})
#: Specific Character Sets under which printable ASCII bytes decode as ASCII, one value only
_ASCII_COMPATIBLE = frozenset({b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192", b"ISO 2022 IR 6"})
_SPECIFIC_CHARACTER_SET = 0x00080005
_PRINTABLE = bytes(range(0x20, 0x7F))
_TAGS: dict[str, tuple[int, str]] = {}


def _tag_and_vr(keyword: str) -> tuple[int, str]:
    if keyword not in _TAGS:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"not a DICOM keyword: {keyword}")
        _TAGS[keyword] = (tag, dictionary_VR(tag))
    return _TAGS[keyword]


def _raw(ds: Dataset, keyword: str) -> tuple[RawDataElement | None, str, bool]:
    """(the raw element or None when absent, its dictionary VR, usable): usable False when
    only pydicom can say (converted already, or explicit with another VR)."""
    tag, vr = _tag_and_vr(keyword)
    elem = ds.get_item(tag)
    if elem is None:
        return None, vr, tag not in ds  # present but None (a deferred read): ask pydicom
    if not isinstance(elem, RawDataElement) or elem.value is None:
        return None, vr, False
    if elem.VR is not None and vr != elem.VR:
        return None, vr, False
    return elem, vr, True


def ascii_compatible(ds: Dataset) -> bool:
    """Whether printable ASCII in a text element of `ds` reads as ASCII (one of the single
    byte sets or UTF-8, or none given)."""
    elem = ds.get_item(_SPECIFIC_CHARACTER_SET)
    if elem is None or elem.value is None:
        return elem is None or _SPECIFIC_CHARACTER_SET not in ds
    value = elem.value
    if isinstance(value, bytes):  # still raw
        return value.strip(b" \x00") in _ASCII_COMPATIBLE
    if isinstance(value, str):  # pydicom read it already (it does, to decode text)
        return value.strip().encode("ascii", "replace") in _ASCII_COMPATIBLE
    return False  # several values: code extensions


def text(ds: Dataset, keyword: str, *, plain_charset: bool) -> str | None:
    """The element's value as pydicom would give it as one string with its padding removed,
    "" when absent; None: ask pydicom (see the module). Several values (a backslash) are
    returned joined as they are stored."""
    elem, vr, usable = _raw(ds, keyword)
    if not usable:
        return None
    if elem is None:
        return ""
    if vr not in _ASCII_VRS and not (vr in _TEXT_VRS and plain_charset):
        return None
    raw = bytes(elem.value or b"").rstrip(b"\x00 ")
    if raw.translate(None, _PRINTABLE):  # anything but printable ASCII
        return None
    return raw.decode("ascii").strip()


def unsigned_short(ds: Dataset, keyword: str) -> int | None:
    """A US element's one value (little endian); None: absent, or ask pydicom."""
    elem, vr, usable = _raw(ds, keyword)
    if not usable or elem is None or vr != "US" or not elem.is_little_endian:
        return None
    raw = bytes(elem.value or b"")
    return int.from_bytes(raw, "little") if len(raw) == 2 else None
