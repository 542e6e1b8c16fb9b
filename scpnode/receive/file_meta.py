"""The File Meta Information of each received data set file, written without pydicom.

pynetdicom opens every incoming data set's file by building a pydicom `FileMetaDataset`
(`create_file_meta`) and encoding it (`write_file_meta_info`), on the DUL thread, while the
scanner waits: 18 % of that thread's busy time in the receive profile (docs/performance.md),
for six elements whose layout never changes. Installed into pynetdicom's DIMSE module only,
the pair below writes those bytes directly when every value is a plain UID (digits and dots,
at most 64 characters) and the implementation values are pynetdicom's own defaults, byte for
byte what pydicom writes (tests/unit/test_file_meta.py holds it to pydicom); any other value
takes pydicom's path, with its validation and its errors, unchanged.
"""

from __future__ import annotations

import re
import struct
import threading
from typing import Any, BinaryIO, NamedTuple

import pydicom.filewriter
import pynetdicom.dimse_messages
import pynetdicom.dsutils

_PLAIN_UID = re.compile(r"[0-9.]{1,64}")
_PLAIN_NAME = re.compile(rb"[A-Za-z0-9_.]{1,16}")  # an Implementation Version Name, no padding
_VERSION = b"\x00\x01"  # File Meta Information Version
_installed = False
_install_lock = threading.Lock()


class PlainFileMeta(NamedTuple):
    """`create_file_meta`'s arguments, kept until `write_file_meta_info` writes them."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    implementation_uid: str
    implementation_version: str

    def encode(self) -> bytes | None:
        """Explicit VR Little Endian group 0002 with its group length, or None (not plain)."""
        uids = (self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax)
        if not all(_PLAIN_UID.fullmatch(uid) for uid in (*uids, self.implementation_uid)):
            return None
        version_name = self.implementation_version.encode("ascii", "replace")
        if not _PLAIN_NAME.fullmatch(version_name):
            return None
        sop_class, sop_instance, syntax = (_padded(uid.encode(), b"\0") for uid in uids)
        body = b"".join(
            (
                _long_element(0x0001, b"OB", _VERSION),
                _element(0x0002, b"UI", sop_class),
                _element(0x0003, b"UI", sop_instance),
                _element(0x0010, b"UI", syntax),
                _element(0x0012, b"UI", _padded(self.implementation_uid.encode(), b"\0")),
                _element(0x0013, b"SH", _padded(version_name, b" ")),
            )
        )
        return _element(0x0000, b"UL", struct.pack("<I", len(body))) + body

    def as_dataset(self) -> Any:
        return _real_create(**self._asdict())


def install() -> None:
    """Give pynetdicom's DIMSE module the pair below; process-wide and idempotent."""
    global _installed
    with _install_lock:
        if not _installed:
            pynetdicom.dimse_messages.create_file_meta = create_file_meta  # type: ignore[assignment]
            pynetdicom.dimse_messages.write_file_meta_info = write_file_meta_info  # type: ignore[assignment]
            _installed = True


def create_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_uid: str | None = None,
    implementation_version: str | None = None,
) -> PlainFileMeta:
    """pynetdicom's `create_file_meta`, its defaults included, deferred to the write."""
    defaults = _real_create.__kwdefaults__ or {}
    return PlainFileMeta(
        str(sop_class_uid),
        str(sop_instance_uid),
        str(transfer_syntax),
        str(defaults["implementation_uid"] if implementation_uid is None else implementation_uid),
        str(
            defaults["implementation_version"]
            if implementation_version is None
            else implementation_version
        ),
    )


def write_file_meta_info(fp: BinaryIO, file_meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(file_meta, PlainFileMeta):
        encoded = file_meta.encode() if enforce_standard else None
        if encoded is not None:
            fp.write(encoded)
            return
        file_meta = file_meta.as_dataset()
    _real_write(fp, file_meta, enforce_standard)  # type: ignore[arg-type]


_real_create = pynetdicom.dsutils.create_file_meta
_real_write = pydicom.filewriter.write_file_meta_info


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def _long_element(element: int, vr: bytes, value: bytes) -> bytes:
    """OB, OW, UN, SQ, UT...: two reserved bytes and a 32-bit length."""
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<HI", 0, len(value)) + value


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad * (len(value) % 2)
