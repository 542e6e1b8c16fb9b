"""A deliberately naive DICOM upper-layer peer on a raw socket, for hostile-input tests.

pynetdicom's own SCU validates what it sends (UID length, command fields, PDU framing), which
is exactly what these tests must be able to get wrong. So the PDUs (PS3.8 §9.3) and DIMSE
command sets (PS3.7 §9.3, Implicit VR Little Endian) are built here by hand with `struct`:
any UID string, any length field, any fragment can be sent. Every socket has a timeout, so
no read in a test waits for ever.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

# message control header (PS3.8 E.2): bit 0 command, bit 1 last fragment
DATA_MORE, COMMAND_MORE, DATA_LAST, COMMAND_LAST = 0x00, 0x01, 0x02, 0x03


class PeerClosed(ConnectionError):
    """The node closed the connection (or reset it) while we were reading."""


class UnexpectedPdu(PeerClosed):
    """The node ended the exchange with another PDU (A-ABORT, say) instead of an answer."""

    def __init__(self, pdu_type: int) -> None:
        super().__init__(f"PDU 0x{pdu_type:02X} instead of a DIMSE response")
        self.pdu_type = pdu_type


# --- PDUs ------------------------------------------------------------------------------------
def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii")[:16].ljust(16, b" ")


def associate_rq(
    called: str,
    calling: str,
    contexts: Sequence[tuple[int, str, Sequence[str]]],
    *,
    max_pdu: int = 0,
) -> bytes:
    """A-ASSOCIATE-RQ: `contexts` are (odd presentation context ID, abstract syntax, syntaxes)."""
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for pcid, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        items += _item(0x20, bytes([pcid, 0, 0, 0]) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433.1")
    items += _item(0x50, user)
    header = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
    return _pdu(ASSOCIATE_RQ, header + items)


def p_data(pdvs: Iterable[tuple[int, int, bytes]]) -> bytes:
    """One P-DATA-TF holding PDVs of (context ID, message control header, fragment)."""
    body = b"".join(
        struct.pack(">LBB", len(data) + 2, pcid, control) + data for pcid, control, data in pdvs
    )
    return _pdu(P_DATA_TF, body)


def release_rq() -> bytes:
    return _pdu(RELEASE_RQ, bytes(4))


def abort_rq() -> bytes:
    return _pdu(ABORT, bytes([0, 0, 0, 0]))  # source: service user, no reason


# --- DIMSE command sets ---------------------------------------------------------------------
def _element(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", group, elem, len(value)) + value


def _command(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, 0x0000, struct.pack("<L", len(body))) + body


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """C-STORE-RQ command set with any UID strings (no validation: that is the point)."""
    return _command(
        [
            _element(0x0000, 0x0002, sop_class.encode("latin-1")),
            _element(0x0000, 0x0100, struct.pack("<H", 0x0001)),
            _element(0x0000, 0x0110, struct.pack("<H", message_id)),
            _element(0x0000, 0x0700, struct.pack("<H", 0)),
            _element(0x0000, 0x0800, struct.pack("<H", 0x0000)),
            _element(0x0000, 0x1000, sop_instance.encode("latin-1")),
        ]
    )


def c_echo_rq(message_id: int = 1) -> bytes:
    return _command(
        [
            _element(0x0000, 0x0002, VERIFICATION.encode()),
            _element(0x0000, 0x0100, struct.pack("<H", 0x0030)),
            _element(0x0000, 0x0110, struct.pack("<H", message_id)),
            _element(0x0000, 0x0800, struct.pack("<H", 0x0101)),
        ]
    )


def command_elements(command: bytes) -> dict[tuple[int, int], bytes]:
    """Decode an Implicit VR Little Endian command set into raw element values."""
    out: dict[tuple[int, int], bytes] = {}
    offset = 0
    while offset + 8 <= len(command):
        group, elem, length = struct.unpack_from("<HHL", command, offset)
        out[(group, elem)] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return out


def store_fragments(pcid: int, command: bytes, dataset: bytes, max_pdv: int = 16000) -> list[bytes]:
    """P-DATA-TF PDUs of one C-STORE: the command, then the data set in `max_pdv` pieces."""
    pdus = [p_data([(pcid, COMMAND_LAST, command)])]
    pieces = [dataset[i : i + max_pdv] for i in range(0, len(dataset), max_pdv)] or [b""]
    for n, piece in enumerate(pieces):
        last = n == len(pieces) - 1
        pdus.append(p_data([(pcid, DATA_LAST if last else DATA_MORE, piece)]))
    return pdus


@dataclass(frozen=True)
class Accepted:
    """What A-ASSOCIATE-AC said about each presentation context: (result, transfer syntax)."""

    contexts: dict[int, tuple[int, str]]


@dataclass(frozen=True)
class Rejected:
    result: int
    source: int
    reason: int


def parse_associate_ac(body: bytes) -> Accepted:
    contexts: dict[int, tuple[int, str]] = {}
    offset = 68  # version, reserved, called, calling, 32 reserved
    while offset + 4 <= len(body):
        item_type, _, length = struct.unpack_from(">BBH", body, offset)
        value = body[offset + 4 : offset + 4 + length]
        if item_type == 0x21:
            pcid, result = value[0], value[2]
            syntax = value[8:].decode("ascii", "replace").rstrip("\x00 ") if len(value) > 8 else ""
            contexts[pcid] = (result, syntax)
        offset += 4 + length
    return Accepted(contexts)


# --- the peer ---------------------------------------------------------------------------
class RawPeer:
    """One TCP connection to the node; every read bounded by `timeout_s`."""

    def __init__(self, port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> bool:
        """Write bytes; False when the node has already dropped the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 16))
            except ConnectionResetError as exc:
                raise PeerClosed(str(exc)) from exc
            if not chunk:
                raise PeerClosed("connection closed by the node")
            buf += chunk
        return bytes(buf)

    def read_pdu(self) -> tuple[int, bytes]:
        """(PDU type, body); raises PeerClosed on EOF and TimeoutError when silent."""
        pdu_type, _, length = struct.unpack(">BBL", self._read_exact(6))
        return pdu_type, self._read_exact(length)

    def associate(
        self,
        contexts: Sequence[tuple[int, str, Sequence[str]]],
        *,
        called: str = "SCPNODE",
        calling: str = "FUZZER",
    ) -> Accepted | Rejected:
        self.send(associate_rq(called, calling, contexts))
        pdu_type, body = self.read_pdu()
        if pdu_type == ASSOCIATE_AC:
            return parse_associate_ac(body)
        if pdu_type == ASSOCIATE_RJ:
            return Rejected(body[1], body[2], body[3])
        raise AssertionError(f"unexpected PDU 0x{pdu_type:02X} in answer to A-ASSOCIATE-RQ")

    def read_response(self) -> dict[tuple[int, int], bytes]:
        """The next DIMSE command set the node sends (reassembled from its fragments)."""
        command = b""
        while True:
            pdu_type, body = self.read_pdu()
            if pdu_type != P_DATA_TF:
                raise UnexpectedPdu(pdu_type)
            offset = 0
            while offset + 6 <= len(body):
                length, _pcid, control = struct.unpack_from(">LBB", body, offset)
                command += body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if control & COMMAND_LAST == COMMAND_LAST:
                    return command_elements(command)

    def status(self) -> int:
        return int(struct.unpack("<H", self.read_response()[(0x0000, 0x0900)])[0])

    def c_store(self, pcid: int, sop_class: str, sop_instance: str, dataset: bytes) -> int:
        for pdu in store_fragments(pcid, c_store_rq(sop_class, sop_instance), dataset):
            self.send(pdu)
        return self.status()

    def c_echo(self, pcid: int) -> int:
        self.send(p_data([(pcid, COMMAND_LAST, c_echo_rq())]))
        return self.status()

    def release(self) -> None:
        self.send(release_rq())
        pdu_type, _ = self.read_pdu()
        assert pdu_type == RELEASE_RP, f"PDU 0x{pdu_type:02X} instead of A-RELEASE-RP"

    def wait_closed(self) -> tuple[float, list[int]]:
        """Read until the node closes; (seconds it took, PDU types it sent meanwhile).

        Raises TimeoutError when the node keeps the connection open past the socket timeout.
        """
        start = time.monotonic()
        seen: list[int] = []
        while True:
            try:
                pdu_type, _ = self.read_pdu()
            except PeerClosed:
                return time.monotonic() - start, seen
            seen.append(pdu_type)
