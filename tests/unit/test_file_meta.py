"""The File Meta Information we write for received data sets is byte for byte pydicom's."""

from __future__ import annotations

import io

import pytest
from pydicom.filewriter import write_file_meta_info as pydicom_write
from pynetdicom.dsutils import create_file_meta as pynetdicom_create

from scpnode.receive import file_meta

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE, IMPLICIT_LE, JPEG_LS = (
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.4.80",
)


def pydicom_bytes(**kwargs: str) -> bytes:
    out = io.BytesIO()
    pydicom_write(out, pynetdicom_create(**kwargs))
    return out.getvalue()


def our_bytes(**kwargs: str) -> bytes:
    out = io.BytesIO()
    file_meta.write_file_meta_info(out, file_meta.create_file_meta(**kwargs))
    return out.getvalue()


@pytest.mark.parametrize("syntax", [EXPLICIT_LE, IMPLICIT_LE, JPEG_LS])
@pytest.mark.parametrize(
    ("sop_class", "sop_uid"),
    [(CT, "1.2.3"), (CT + ".1", "1.2.34"), (CT, "2.25." + "1" * 59), (CT, "9")],
)
def test_a_plain_file_meta_is_what_pydicom_writes(
    sop_class: str, sop_uid: str, syntax: str
) -> None:
    kwargs = dict(sop_class_uid=sop_class, sop_instance_uid=sop_uid, transfer_syntax=syntax)
    assert file_meta.create_file_meta(**kwargs).encode() is not None  # the fast path ran
    assert our_bytes(**kwargs) == pydicom_bytes(**kwargs)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize(
    "sop_uid",
    ["1.2.3 ", "1.2.x", "2.25." + "1" * 61, "1.2.3\\4"],  # pydicom's own answer for these
)
def test_other_values_take_pydicoms_path(sop_uid: str) -> None:
    kwargs = dict(sop_class_uid=CT, sop_instance_uid=sop_uid, transfer_syntax=EXPLICIT_LE)
    assert file_meta.create_file_meta(**kwargs).encode() is None
    assert our_bytes(**kwargs) == pydicom_bytes(**kwargs)


def test_an_empty_uid_fails_as_pydicom_fails() -> None:
    kwargs = dict(sop_class_uid=CT, sop_instance_uid="", transfer_syntax=EXPLICIT_LE)
    with pytest.raises(AttributeError) as ours:
        our_bytes(**kwargs)
    with pytest.raises(AttributeError) as theirs:
        pydicom_bytes(**kwargs)
    assert str(ours.value) == str(theirs.value)
