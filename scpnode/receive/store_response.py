"""C-STORE responses encoded from a template instead of through pydicom.

pynetdicom turns each C-STORE-RSP primitive into a pydicom Dataset and encodes it twice (once
to measure the Command Group Length, once to send): a fifth of the association thread's
time per instance in the receive profile (docs/performance.md), for ~150 bytes whose layout
never changes. A plain response (a status, the two UIDs, no error comment or offending
element) is the same six elements every time, so it is written here directly, byte for byte
what pynetdicom would send (tests/unit/test_store_response.py holds it to pynetdicom's own
encoding); anything else, and any association with a DIMSE-sent handler besides
pynetdicom's own logging one (which logs nothing for a C-STORE-RSP), keeps pynetdicom's path.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

C_STORE_RSP = 0x8001  # Command Field
NO_DATA_SET = 0x0101  # Command Data Set Type
_LAST_COMMAND_FRAGMENT = b"\x03"  # PDV message control header: command, last fragment
_PDV_OVERHEAD = 6  # PDV item length (4) + context ID (1) + control header (1)


def answer_stores_directly(assoc: Any) -> None:
    """Send `assoc`'s plain C-STORE responses from the template; the rest as before."""
    dimse = getattr(assoc, "dimse", None)
    dul = getattr(assoc, "dul", None)
    send_msg = getattr(dimse, "send_msg", None)
    if dimse is None or dul is None or send_msg is None:  # pynetdicom's internals moved
        return

    def send(primitive: Any, context_id: int) -> None:
        command = None if _observed(assoc) else encode_plain_response(primitive)
        max_pdu = int(getattr(dimse, "maximum_pdu_size", 0) or 0)
        if command is None or (max_pdu and len(command) + _PDV_OVERHEAD > max_pdu):
            send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
        dul.send_pdu(pdata)

    dimse.send_msg = send


def encode_plain_response(primitive: Any) -> bytes | None:
    """The Implicit VR Little Endian command set of a plain C-STORE-RSP, or None."""
    if type(primitive) is not C_STORE:
        return None
    msg_id, status = primitive.MessageIDBeingRespondedTo, primitive.Status  # MessageID: unused
    sop_class, sop_uid = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    extras = (primitive.ErrorComment, primitive.OffendingElement, primitive.DataSet)
    if not isinstance(msg_id, int) or not isinstance(status, int) or any(map(_given, extras)):
        return None
    if not sop_class or not sop_uid:
        return None
    try:
        body = b"".join(
            (
                _element(0x0002, _ui(sop_class)),
                _element(0x0100, _us(C_STORE_RSP)),
                _element(0x0120, _us(msg_id)),
                _element(0x0800, _us(NO_DATA_SET)),
                _element(0x0900, _us(status)),
                _element(0x1000, _ui(sop_uid)),
            )
        )
    except UnicodeEncodeError:
        return None
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _given(value: Any) -> bool:
    return value is not None


def _observed(assoc: Any) -> bool:
    """A DIMSE-sent handler of someone else's wants pynetdicom's message object."""
    handlers: list[tuple[Callable[..., Any], Any]] = assoc.get_handlers(evt.EVT_DIMSE_SENT)
    return any(handler is not standard_dimse_sent_handler for handler, _ in handlers)


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _ui(uid: str) -> bytes:
    encoded = str(uid).encode("ascii")
    return encoded + b"\0" * (len(encoded) % 2)
