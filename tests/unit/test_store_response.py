"""The C-STORE responses we encode ourselves are byte for byte pynetdicom's own."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE

from scpnode.receive.store_response import encode_plain_response

CT = "1.2.840.10008.5.1.4.1.1.2"  # even length
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"  # odd length: padded


def response(
    msg_id: int = 1, status: int = 0x0000, sop_class: str = CT, sop_uid: str = "1.2.3"
) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = msg_id  # as pynetdicom's SCP sets them
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_uid
    rsp.Status = status
    return rsp


def pynetdicom_command(rsp: C_STORE) -> bytes:
    """What pynetdicom's DIMSE provider sends: the PDV of its one P-DATA, minus the header."""
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 16384))
    ((context_id, pdv),) = pdata.presentation_data_value_list
    assert context_id == 1 and pdv[:1] == b"\x03"  # command set, last fragment
    return bytes(pdv[1:])


@pytest.mark.parametrize("msg_id", [0, 1, 257, 65535])
@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB007, 0xA700, 0xA900, 0xC001, 0x0122])
@pytest.mark.parametrize(
    ("sop_class", "sop_uid"),
    [(CT, "1.2.3"), (ENHANCED_CT, "1.2.34"), (CT, "2.25." + "9" * 59)],
)
def test_a_plain_response_is_what_pynetdicom_encodes(
    msg_id: int, status: int, sop_class: str, sop_uid: str
) -> None:
    rsp = response(msg_id, status, sop_class, sop_uid)
    assert encode_plain_response(rsp) == pynetdicom_command(rsp)


def test_anything_beyond_a_plain_response_is_left_to_pynetdicom() -> None:
    with_comment = response(status=0xC001)
    with_comment.ErrorComment = "unreadable data set"
    offending = response(status=0xC000)
    offending.OffendingElement = [0x00080018]
    a_request = response()
    a_request.MessageIDBeingRespondedTo = None
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo, echo.Status = 1, 0
    no_uids = C_STORE()
    no_uids.MessageIDBeingRespondedTo, no_uids.Status = 1, 0
    for primitive in (with_comment, offending, a_request, echo, no_uids):
        assert encode_plain_response(primitive) is None
