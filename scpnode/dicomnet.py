"""Small DICOM networking facts shared by our SCP, our SCU and the PACS stand-in."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from scpnode import __version__
from scpnode.uids import derive_uid

# what our associations announce (docs/conformance.md): fixed forever, version per release
IMPLEMENTATION_CLASS_UID = derive_uid("implementation-class", "scpnode")
IMPLEMENTATION_VERSION_NAME = f"SCPNODE_{__version__}"[:16]


def identify(ae: Any) -> Any:
    """Give a pynetdicom AE our implementation class UID and version name."""
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae


def disable_nagle(sock: socket.socket | None) -> None:
    """C-STORE is request/response over small PDUs; Nagle would add ~40 ms to each."""
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed, or not TCP
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def assoc_socket(assoc: Any) -> socket.socket | None:
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    return getattr(transport, "socket", None)


REJECT_TEXT = {
    (1, 1, 1): "no reason given",
    (1, 1, 2): "application context name not supported",
    (1, 1, 3): "calling AE title not recognised",
    (1, 1, 7): "called AE title not recognised",
    (2, 1, 1): "no reason given",
    (2, 3, 1): "temporary congestion",
    (2, 3, 2): "local limit exceeded (max_associations)",
    (2, 2, 1): "user identity rejected",
}


def rejection_text(result: int, source: int, diagnostic: int) -> str:
    """A-ASSOCIATE-RJ (PS3.8 §7.1.1.9) in words an admin can act on."""
    kind = {1: "permanent", 2: "transient"}.get(result, f"result {result}")
    reason = REJECT_TEXT.get((result, source, diagnostic), f"source {source}, reason {diagnostic}")
    return f"{reason} ({kind})"
