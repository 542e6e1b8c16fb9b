"""Hostile and broken input over real associations: the node answers exactly, audits, survives.

Issue "Never lose a study". Every case talks to a real SCP on 127.0.0.1 (`make_scp`, or the
module's shared node for the many-example cases) with a real SQLite audit DB, and asserts the
DICOM answer and the audit event. Malformed PDUs and command sets come from `rawdicom`, a
hand-built upper-layer peer: pynetdicom's SCU refuses to send most of them.

Cases covered elsewhere are not repeated here (tests/component/test_receive.py: unknown calling
AE, SOP class refused when CT-only, a bad UID, unparseable data set, duplicates, full disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import encode
from sqlalchemy import select

from scpnode.db.models import AssociationRow, AuditEventRow
from scpnode.headers import read_header
from scpnode.send import Peer, echo, store_datasets
from tests.conftest import RunningScp, ct_small, partial_data
from tests.hostile import rawdicom as raw
from tests.hostile.conftest import SHARED_NETWORK_TIMEOUT_S

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning",  # pydicom, about the invalid values these tests send on purpose
    # any thread of ours (recorder, watchers) or pynetdicom's association threads dying fails
    # the test; pynetdicom's DUL reactor thread dies of an exception on some malformed input
    # (InvalidEventError, AttributeError in the state machine) and the node lives on
    "error::pytest.PytestUnhandledThreadExceptionWarning",
    r"ignore:Exception in thread \S+ \(run_reactor\)"
    ":pytest.PytestUnhandledThreadExceptionWarning",
)

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_65 = "1." + "2" * 63
ESCAPE_UIDS = ["..", "../../etc", "1.2/3", "1.2.3/../../x", UID_65, "1.2.abc", "1.2.03", ""]
CT_CONTEXTS = [(1, raw.CT_IMAGE, [raw.EXPLICIT_LE]), (3, raw.VERIFICATION, [raw.IMPLICIT_LE])]


# --- helpers ---------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; the result of the last poll."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(interval_s)
    return True


def audit_events(scp: RunningScp, kind: str | None = None) -> list[AuditEventRow]:
    """Audit events in the DB (after `scp.finish()`, or `scp.recorder.flush()`, for all)."""
    query = select(AuditEventRow).order_by(AuditEventRow.id)
    if kind is not None:
        query = query.where(AuditEventRow.kind == kind)
    with scp.db.session() as s:
        return list(s.scalars(query))


def association_of(scp: RunningScp, peer_port: int) -> AssociationRow:
    """The latest audited association from `peer_port` (waits for the recorder); the latest,
    as the shared node sees enough connections for the OS to reuse an ephemeral port."""
    row: list[AssociationRow] = []

    def found() -> bool:
        scp.recorder.flush(10)
        with scp.db.session() as s:
            row[:] = s.scalars(
                select(AssociationRow)
                .where(AssociationRow.peer_port == peer_port)
                .order_by(AssociationRow.id.desc())
            )
        return bool(row)

    assert wait_until(found, 5), f"no association audited from port {peer_port}"
    return row[0]


def closed_association(scp: RunningScp, peer_port: int) -> tuple[AssociationRow, list[str]]:
    """The association once its end is audited, with the kinds of all its audit events."""
    closing = {"association_released", "association_aborted"}

    def kinds() -> list[str]:
        assoc = association_of(scp, peer_port)
        with scp.db.session() as s:
            rows = s.scalars(
                select(AuditEventRow.kind).where(AuditEventRow.association_id == assoc.id)
            )
            return list(rows)

    assert wait_until(lambda: bool(closing & set(kinds())), 10), kinds()
    return association_of(scp, peer_port), kinds()


def dataset_bytes(ds: Dataset) -> bytes:
    data = encode(ds, False, True)  # Explicit VR Little Endian, as negotiated in CT_CONTEXTS
    assert data is not None
    return data


def fresh_ct() -> Dataset:
    ds = ct_small()
    ds.SOPInstanceUID = generate_uid()
    return ds


def spool_path(scp: RunningScp, ds: Dataset) -> Path:
    return scp.spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def escape_targets(scp: RunningScp) -> dict[str, str]:
    """Everything a UID with `..` could reach from the spool: the node's folder (spool, DB)
    in full, and the names in pytest's temp root above it (two levels up from the spool; the
    test UIDs climb at most that far). Audit DB files and the files made ahead for incoming
    data sets (`.ready`) change by design and are left out."""
    node = scp.spool.root.parent
    out = {f"top:{p.name}": "" for p in node.parent.iterdir()}
    for path in sorted(node.rglob("*")):
        if not path.name.startswith("scp.db") and scp.spool.ready not in path.parents:
            digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(node))] = digest
    return out


def stored_tree(scp: RunningScp) -> dict[str, tuple[int, int, int]]:
    """The spool's real content (placed and kept-aside files), `.incoming` left out."""
    out: dict[str, tuple[int, int, int]] = {}
    for path in scp.spool.root.rglob("*"):
        if path.is_file() and scp.spool.incoming_root not in path.parents:
            st_ = path.stat()
            out[str(path.relative_to(scp.spool.root))] = (st_.st_size, st_.st_mtime_ns, st_.st_ino)
    return out


def incoming_empty(scp: RunningScp, timeout_s: float = 5.0) -> bool:
    return wait_until(lambda: not partial_data(scp.spool), timeout_s)


def send(scp: RunningScp, datasets: list[Dataset]) -> list[int | None]:
    return store_datasets(datasets, Peer(scp.ae_title, "127.0.0.1", scp.port), "SCANNER")


def assert_healthy(scp: RunningScp) -> None:
    """A following C-ECHO succeeds and a following C-STORE is stored."""
    assert echo(Peer(scp.ae_title, "127.0.0.1", scp.port), "MONITOR").status == 0
    ds = fresh_ct()
    assert send(scp, [ds]) == [0]
    assert pydicom.dcmread(spool_path(scp, ds)).SOPInstanceUID == ds.SOPInstanceUID


def raw_store(scp: RunningScp, sop_instance: str, data: bytes) -> tuple[int | None, int, list[int]]:
    """One C-STORE on a fresh raw association: (status or None, our port, PDUs after it)."""
    with raw.RawPeer(scp.port) as peer:
        port = peer.sock.getsockname()[1]
        accepted = peer.associate(CT_CONTEXTS)
        assert isinstance(accepted, raw.Accepted) and accepted.contexts[1][0] == 0
        try:
            status = peer.c_store(1, raw.CT_IMAGE, sop_instance, data)
        except raw.UnexpectedPdu as ended:
            _, seen = peer.wait_closed()
            return None, port, [ended.pdu_type, *seen]
        except raw.PeerClosed:
            return None, port, []
        peer.release()
        return status, port, []


def send_chunked_file(scp: RunningScp, path: Path, sop_class: str) -> int:
    """pynetdicom's SCU sends a file's bytes with the command built from its file meta."""
    saved = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
        assert assoc.is_established
        try:
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = saved
    return int(status.Status)


# --- 1. transfer syntax ---------------------------------------------------------------------
def test_unsupported_transfer_syntax_alone_is_rejected_and_audited(make_scp) -> None:
    """The A-ASSOCIATE-AC answers the context with result 0x04; the association stays usable
    (pynetdicom's own SCU aborts at once when nothing was accepted, so a raw peer asks)."""
    scp = make_scp()
    with raw.RawPeer(scp.port) as peer:
        port = peer.sock.getsockname()[1]
        answer = peer.associate(
            [(1, raw.CT_IMAGE, [JPEGBaseline8Bit]), (3, raw.VERIFICATION, [raw.IMPLICIT_LE])]
        )
        assert isinstance(answer, raw.Accepted)
        assert answer.contexts[1][0] == 0x04  # transfer syntaxes not supported
        assert answer.contexts[3] == (0x00, raw.IMPLICIT_LE)
        assert peer.c_echo(3) == 0
        peer.release()
    assoc, kinds = closed_association(scp, port)
    assert kinds == ["association_accepted", "context_rejected", "association_released"]
    scp.finish()
    (event,) = audit_events(scp, "context_rejected")
    assert event.association_id == assoc.id and f"{raw.CT_IMAGE}:4" in event.detail
    assert not any(scp.spool.root.glob("*/*/*.dcm"))


# --- 2. command and data set disagree -------------------------------------------------------
def _file_with_meta(tmp_path: Path, ds: Dataset, *, sop_class: str, sop_instance: str) -> Path:
    path = tmp_path / "sent.dcm"
    ds.save_as(path, enforce_file_format=True)
    written = pydicom.dcmread(path)
    written.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    written.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    written.save_as(path, enforce_file_format=False)  # True would take the data set's UIDs
    assert pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID == sop_instance
    return path


def test_command_sop_instance_uid_differs_from_data_set(make_scp, tmp_path: Path) -> None:
    scp = make_scp()
    ds = fresh_ct()
    other = generate_uid()
    path = _file_with_meta(tmp_path, ds, sop_class=raw.CT_IMAGE, sop_instance=other)
    assert send_chunked_file(scp, path, raw.CT_IMAGE) == 0xC003
    scp.finish()
    (event,) = audit_events(scp, "instance_rejected")
    assert '"status": "0xC003"' in event.detail and other in event.detail
    assert "SOP Instance UID differs" in event.detail
    assert not any(scp.spool.root.glob("*/*/*.dcm"))
    assert partial_data(scp.spool) == []


def test_command_sop_class_differs_from_data_set(make_scp, tmp_path: Path) -> None:
    scp = make_scp()
    ds = fresh_ct()  # CT Image Storage, sent as MR Image Storage
    path = _file_with_meta(tmp_path, ds, sop_class=MR_IMAGE, sop_instance=ds.SOPInstanceUID)
    assert send_chunked_file(scp, path, MR_IMAGE) == 0xA900
    scp.finish()
    (event,) = audit_events(scp, "instance_rejected")
    assert '"status": "0xA900"' in event.detail and MR_IMAGE in event.detail
    assert not any(scp.spool.root.glob("*/*/*.dcm"))
    assert partial_data(scp.spool) == []


def test_element_value_that_cannot_be_decoded_gets_cannot_understand(make_scp) -> None:
    """Rows (US) of 3 bytes: pydicom's BytesLengthException used to escape as 0xC0FF."""
    scp = make_scp()
    ds = fresh_ct()
    rows = Tag("Rows")
    ds._dict[rows] = RawDataElement(rows, "US", 3, b"\x00\x02\x00", 0, False, True)
    status, port, _ = raw_store(scp, ds.SOPInstanceUID, dataset_bytes(ds))
    assert status == 0xC001
    assoc, _ = closed_association(scp, port)
    (event,) = audit_events(scp, "instance_rejected")
    assert event.association_id == assoc.id
    assert '"status": "0xC001"' in event.detail and "BytesLengthException" in event.detail
    assert not spool_path(scp, ds).exists()
    assert incoming_empty(scp)


def test_request_pynetdicom_would_drop_is_answered_and_leaves_no_temp_file(make_scp) -> None:
    """A C-STORE-RQ whose Affected SOP Instance UID is a lone backslash decodes to no UID.
    pynetdicom drops such a request unanswered (the sender waits out its DIMSE timeout and
    never learns why) and used to leave its streamed data set in `.incoming`. The node
    answers it 0xC004 at once, audits it, and the association goes on."""
    scp = make_scp(network_timeout_s=5)
    ds = fresh_ct()
    with raw.RawPeer(scp.port, timeout_s=8) as peer:
        port = peer.sock.getsockname()[1]
        assert isinstance(peer.associate(CT_CONTEXTS), raw.Accepted)
        started = time.monotonic()
        assert peer.c_store(1, raw.CT_IMAGE, "\\", dataset_bytes(ds)) == 0xC004
        assert time.monotonic() - started < 2.5  # answered, not left to a timeout
        assert peer.c_echo(3) == 0  # the association is still usable
        peer.release()
    assert incoming_empty(scp)
    assoc, kinds = closed_association(scp, port)
    assert assoc.outcome == "released" and "instance_stored" not in kinds
    assert not spool_path(scp, ds).exists()
    assert_healthy(scp)
    scp.finish()
    (event,) = audit_events(scp, "instance_rejected")
    assert '"status": "0xC004"' in event.detail and "AffectedSOPInstanceUID" in event.detail


# --- 3. UIDs built to escape the spool ------------------------------------------------------
# A bad SOP Instance UID travels in the C-STORE-RQ command too. pynetdicom itself refuses two
# of them before our handler runs: over 64 characters (invalid DIMSE message: A-ABORT) and
# empty (its temp-file meta cannot be built: the connection is dropped). Never a success.
def _expected(field: str, bad: str) -> str:
    if field == "SOPInstanceUID" and bad == UID_65:
        return "abort"
    if field == "SOPInstanceUID" and bad == "":
        return "dropped"
    return "0xC002"


@pytest.mark.parametrize("bad", ESCAPE_UIDS, ids=repr)
@pytest.mark.parametrize("field", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_uid_built_to_escape_the_spool_is_refused(
    shared_scp: RunningScp, field: str, bad: str
) -> None:
    scp = shared_scp
    before = escape_targets(scp)
    ds = fresh_ct()
    setattr(ds, field, bad)
    status, port, seen = raw_store(scp, ds.SOPInstanceUID, dataset_bytes(ds))

    expected = _expected(field, bad)
    if expected == "0xC002":
        assert status == 0xC002
    else:
        assert status is None  # nothing acknowledged: the association ended without an answer
        assert seen == ([raw.ABORT] if expected == "abort" else [])
    assert incoming_empty(scp)
    assert escape_targets(scp) == before  # nothing written anywhere

    assoc, kinds = closed_association(scp, port)
    if expected == "0xC002":
        assert assoc.outcome == "released" and kinds.count("instance_rejected") == 1
        (event,) = [
            e for e in audit_events(scp, "instance_rejected") if e.association_id == assoc.id
        ]
        assert '"status": "0xC002"' in event.detail and "grammar" in event.detail
    else:
        assert assoc.outcome == "aborted" and "instance_rejected" not in kinds
    assert "instance_stored" not in kinds


# --- 4. random bytes and truncated PDUs on the port -----------------------------------------
def _random_bytes(port: int) -> raw.RawPeer:
    peer = raw.RawPeer(port, timeout_s=8)
    peer.send(os.urandom(1024))
    return peer


def _half_associate_rq(port: int) -> raw.RawPeer:
    peer = raw.RawPeer(port, timeout_s=8)
    request = raw.associate_rq("SCPNODE", "FUZZER", CT_CONTEXTS)
    peer.send(request[: len(request) // 2])
    return peer


def _p_data_length_lies(port: int) -> raw.RawPeer:
    peer = raw.RawPeer(port, timeout_s=8)
    assert isinstance(peer.associate(CT_CONTEXTS), raw.Accepted)
    body = struct.pack(">LBB", 20, 1, raw.COMMAND_LAST) + bytes(18)
    peer.send(struct.pack(">BBL", raw.P_DATA_TF, 0, 4096) + body)  # says 4096, sends 24
    return peer


def _pdv_longer_than_pdu(port: int) -> raw.RawPeer:
    peer = raw.RawPeer(port, timeout_s=8)
    assert isinstance(peer.associate(CT_CONTEXTS), raw.Accepted)
    body = struct.pack(">LBB", 5000, 1, raw.COMMAND_LAST) + bytes(18)  # PDV says 5000
    peer.send(struct.pack(">BBL", raw.P_DATA_TF, 0, len(body)) + body)
    return peer


GARBAGE = {
    "random 1 KiB": _random_bytes,
    "A-ASSOCIATE-RQ cut in half": _half_associate_rq,
    "P-DATA-TF length lies": _p_data_length_lies,
    "PDV longer than its PDU": _pdv_longer_than_pdu,
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_on_the_port_is_dropped_and_the_node_stays_healthy(make_scp, kind: str) -> None:
    scp = make_scp(network_timeout_s=1)
    threads = threading.active_count()
    with GARBAGE[kind](scp.port) as peer:
        port = peer.sock.getsockname()[1]
        took, seen = peer.wait_closed()  # TimeoutError (8 s) if the node kept it open
    assert took < 1 + 2.5, f"dropped after {took:.1f} s"
    assert set(seen) <= {raw.ABORT}
    assert incoming_empty(scp)
    assert wait_until(lambda: threading.active_count() <= threads, 5), threading.enumerate()
    assert_healthy(scp)
    if kind in ("P-DATA-TF length lies", "PDV longer than its PDU"):
        assoc, kinds = closed_association(scp, port)
        assert assoc.outcome == "aborted" and "instance_stored" not in kinds
    scp.finish()
    assert partial_data(scp.spool) == []
    if kind in ("random 1 KiB", "A-ASSOCIATE-RQ cut in half"):  # no association ever existed
        (dropped,) = audit_events(scp, "connection_dropped")
        assert "127.0.0.1" in dropped.detail and "A-ASSOCIATE-RQ" in dropped.detail


def test_port_probes_do_not_hold_association_slots(make_scp) -> None:
    """Connect-and-close (port scans, load-balancer checks) must not lock scanners out."""
    scp = make_scp(max_associations=2)
    for _ in range(5):
        socket.create_connection(("127.0.0.1", scp.port), timeout=5).close()
    assert wait_until(lambda: scp.server.active_associations == 0, 3)
    # the server may take up the last probes just after the count first reads 0: a scanner
    # must get in within seconds, not after the probes' network timeout
    peer = Peer(scp.ae_title, "127.0.0.1", scp.port)
    assert wait_until(lambda: echo(peer, "MONITOR").status == 0, 3)
    assert_healthy(scp)
    scp.finish()
    (dropped,) = audit_events(scp, "connection_dropped")  # five probes, one event a minute
    assert '"since_last_event": 0' in dropped.detail


# --- 5. an association held open and idle ---------------------------------------------------
def test_idle_association_is_aborted_after_network_timeout(make_scp) -> None:
    scp = make_scp(network_timeout_s=1)
    with raw.RawPeer(scp.port, timeout_s=8) as peer:
        port = peer.sock.getsockname()[1]
        assert isinstance(peer.associate(CT_CONTEXTS), raw.Accepted)
        took, seen = peer.wait_closed()
    assert 0.8 <= took < 1 + 2.5, f"closed after {took:.1f} s"
    assert seen == [raw.ABORT]
    assoc, kinds = closed_association(scp, port)
    assert assoc.outcome == "aborted" and assoc.ended_at is not None
    assert kinds == ["association_accepted", "association_aborted"]
    assert_healthy(scp)


# --- 6. a peer that gives up in the middle of a large data set ------------------------------
@pytest.mark.parametrize("how", ["A-ABORT", "socket closed"])
def test_peer_gone_mid_data_set_leaves_nothing(make_scp, how: str) -> None:
    scp = make_scp()
    ds = fresh_ct()
    ds.Rows = ds.Columns = 1024
    ds.PixelData = bytes(2 * 1024 * 1024)  # 2 MiB: many P-DATA-TF PDUs
    pdus = raw.store_fragments(
        1, raw.c_store_rq(raw.CT_IMAGE, ds.SOPInstanceUID), dataset_bytes(ds)
    )
    with raw.RawPeer(scp.port, timeout_s=8) as peer:
        port = peer.sock.getsockname()[1]
        assert isinstance(peer.associate(CT_CONTEXTS), raw.Accepted)
        for pdu in pdus[:4]:  # the command and 48 kB of the data set
            peer.send(pdu)
        # pynetdicom streams the data set into a file made ahead (`.ready`) or a temp file
        assert wait_until(lambda: bool(partial_data(scp.spool)), 5)
        if how == "A-ABORT":
            peer.send(raw.abort_rq())
            _, seen = peer.wait_closed()
            assert raw.P_DATA_TF not in seen  # nothing acknowledged
    assert incoming_empty(scp)  # deleted when the association ends, not at the next start
    assoc, kinds = closed_association(scp, port)
    assert assoc.outcome == "aborted" and assoc.instances == 0
    assert not {"instance_stored", "instance_rejected"} & set(kinds)
    assert list(scp.spool.iter_instances()) == []
    assert_healthy(scp)


# --- 7a. property: mutated data sets over real associations ---------------------------------
UID_FIELDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
DROPPABLE = [*UID_FIELDS, "PixelData", "Rows", "Columns", "BitsAllocated", "Modality",
             "PatientID", "ImagePositionPatient", "ImageOrientationPatient",
             "SpecificCharacterSet"]  # fmt: skip
GARBLEABLE = [*UID_FIELDS, "Rows", "PatientName", "SliceThickness", "ImageType",
              "PixelData", "InstanceNumber", "SeriesDescription"]  # fmt: skip
VRS = ["OB", "UN", "US", "FD", "SQ", "UI", "LO", "UT", "AT"]
LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"}

uid_values = st.one_of(
    st.sampled_from([*ESCAPE_UIDS, "/", ".", "1.2\\3", "1.2.3\x00/x", " 1.2.3", "1.2.3 "]),
    st.integers(min_value=0, max_value=2**64).map(lambda n: f"2.25.{n}"),
    st.text(alphabet="0123456789./\\abc- \x00", max_size=70),
)
dataset_ops = st.one_of(
    st.tuples(st.just("set_uid"), st.sampled_from(UID_FIELDS), uid_values),
    st.tuples(st.just("drop"), st.sampled_from(DROPPABLE)),
    st.tuples(st.just("garble"), st.sampled_from(GARBLEABLE), st.binary(max_size=80)),
    st.tuples(
        st.just("wrong_vr"),
        st.sampled_from(GARBLEABLE),
        st.sampled_from(VRS),
        st.binary(max_size=16),
    ),
)
byte_ops = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(
        st.just("huge_length"),
        st.sampled_from(GARBLEABLE),
        st.sampled_from([0xFFFF_FFFF, 0xFFFF_FFF0, 0x7FFF_FFFF, 0xFFFF]),
    ),
)


def mutate_dataset(ds: Dataset, op: tuple[Any, ...]) -> str | None:
    """Apply one data-set mutation; returns a new SOP Instance UID when it set one."""
    name, keyword = op[0], op[1]
    tag = Tag(keyword)
    if name == "set_uid":
        ds._dict[tag] = RawDataElement(
            tag, "UI", len(op[2]), op[2].encode("latin-1"), 0, False, True
        )
        return str(op[2]) if keyword == "SOPInstanceUID" else None
    if name == "drop":
        ds._dict.pop(tag, None)
    elif name == "garble":
        vr = dictionary_VR(tag)  # the right VR, wrong bytes (odd lengths included)
        ds._dict[tag] = RawDataElement(tag, vr, len(op[2]), op[2], 0, False, True)
    elif name == "wrong_vr":
        ds._dict[tag] = RawDataElement(tag, op[2], len(op[3]), op[3], 0, False, True)
    return None


def mutate_bytes(data: bytes, op: tuple[Any, ...]) -> bytes:
    name = op[0]
    if name == "flip" and data:
        at = op[1] % len(data)
        return data[:at] + bytes([data[at] ^ op[2]]) + data[at + 1 :]
    if name == "truncate":
        return data[: op[1] % (len(data) + 1)]
    if name == "append":
        return data + op[1]
    if name == "huge_length":
        at = data.find(
            Tag(op[1]).group.to_bytes(2, "little") + Tag(op[1]).elem.to_bytes(2, "little")
        )
        if at < 0 or at + 12 > len(data):
            return data
        if data[at + 4 : at + 6] in LONG_LENGTH_VRS:  # explicit VR, 4-byte length
            return data[: at + 8] + struct.pack("<L", op[2]) + data[at + 12 :]
        return data[: at + 6] + struct.pack("<H", op[2] & 0xFFFF) + data[at + 8 :]
    return data


def is_failure(status: int) -> bool:
    return (
        0xA700 <= status <= 0xA7FF
        or 0xA900 <= status <= 0xA9FF
        or 0xC000 <= status <= 0xCFFF
        or status == 0x0122
    )


def find_stored(scp: RunningScp, data: bytes) -> list[Path]:
    """Placed instance files that hold exactly these data set bytes."""
    return [p for p in scp.spool.iter_instances() if p.read_bytes().endswith(data)]


def raw_echo_ok(scp: RunningScp) -> bool:
    with raw.RawPeer(scp.port, timeout_s=10) as peer:
        assert isinstance(peer.associate(CT_CONTEXTS), raw.Accepted)
        ok = peer.c_echo(3) == 0
        peer.release()
    return ok


PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays stable
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(
    sop_choice=st.integers(0, 3),
    data_mutations=st.lists(dataset_ops, min_size=1, max_size=3),
    byte_mutations=st.lists(byte_ops, max_size=2),
    command_uid=st.one_of(st.none(), uid_values),
)
def test_property_mutated_data_sets_never_acknowledged_unless_stored(
    shared_scp: RunningScp,
    sop_choice: int,
    data_mutations: list[tuple[Any, ...]],
    byte_mutations: list[tuple[Any, ...]],
    command_uid: str | None,
) -> None:
    scp = shared_scp
    ds = ct_small()
    ds.SOPInstanceUID = f"2.25.{4711 + sop_choice}"  # a few: exercises replacements too
    sop_uid = ds.SOPInstanceUID
    for op in data_mutations:
        sop_uid = mutate_dataset(ds, op) or sop_uid
    data = encode(ds, False, True)
    if data is None:  # pydicom could not write it: nothing to send
        return
    for op in byte_mutations:
        data = mutate_bytes(data, op)
    command_uid = sop_uid if command_uid is None else command_uid

    before = stored_tree(scp)
    status, _, ended_by = raw_store(scp, command_uid, data)
    event(f"answer 0x{status:04X}" if status is not None else f"no answer, PDUs {ended_by}")

    if status == 0x0000:
        (path,) = find_stored(scp, data)  # stored as received, once
        header = read_header(path)  # what the node itself reads back
        assert header.sop_uid == command_uid
        assert (
            path == scp.spool.root / header.study_uid / header.series_uid / f"{header.sop_uid}.dcm"
        )
    else:
        assert status is None or is_failure(status), f"status 0x{status:04X}"
        assert status not in (0xC0FF, 0xC211), "the handler failed unexpectedly"
        assert stored_tree(scp) == before  # a failure leaves the spool as it was
    assert incoming_empty(scp)
    assert raw_echo_ok(scp)


# --- 7b. property: mutated PDU streams on a raw socket --------------------------------------
def conversation() -> tuple[bytes, bytes]:
    """A scanner's exchange: the A-ASSOCIATE-RQ, then a C-ECHO and a C-STORE (several PDUs);
    `converse` adds the A-RELEASE-RQ once both are answered."""
    ds = ct_small()
    ds.SOPInstanceUID = "2.25.815"
    command = raw.c_store_rq(raw.CT_IMAGE, ds.SOPInstanceUID, message_id=2)
    rest = [
        raw.p_data([(3, raw.COMMAND_LAST, raw.c_echo_rq(1))]),
        *raw.store_fragments(1, command, dataset_bytes(ds), max_pdv=8000),
    ]
    return raw.associate_rq("SCPNODE", "FUZZER", CT_CONTEXTS), b"".join(rest)


REQUEST, AFTER_ACCEPT = conversation()


def read_until_quiet(
    peer: raw.RawPeer, quiet_s: float = 0.2, at_most: int = 100
) -> tuple[list[int], bool]:
    """PDU types the node sends until it is silent for `quiet_s` (or sent `at_most`); and
    whether it closed."""
    seen: list[int] = []
    peer.sock.settimeout(quiet_s)
    try:
        while len(seen) < at_most:
            seen.append(peer.read_pdu()[0])
        return seen, False
    except TimeoutError:
        return seen, False
    except raw.PeerClosed:
        return seen, True
    finally:
        peer.sock.settimeout(10)


def converse(scp: RunningScp, request: bytes, rest: bytes, *, pipelined: bool) -> list[int]:
    """Play a (mutated) exchange; the PDU types the node sent until it closed.

    Not pipelined: the request, then the rest once the node accepted (or stayed silent 0.3 s: a
    truncated request then gets its missing bytes from the rest), then A-RELEASE-RQ after
    two answers or 0.2 s of silence. If the node is still silent, our side ends with EOF,
    so it never needs a timeout to finish.
    """
    with raw.RawPeer(scp.port, timeout_s=10) as peer:
        seen: list[int] = []
        if not pipelined:
            peer.send(request)
            seen, closed = read_until_quiet(peer, quiet_s=0.3, at_most=1)
            if closed or seen not in ([], [raw.ASSOCIATE_AC]):
                return seen
        peer.send(rest if not pipelined else request + rest)
        more, closed = read_until_quiet(peer, at_most=2)
        seen += more
        if not closed and peer.send(raw.release_rq()):
            more, closed = read_until_quiet(peer)
            seen += more
        if not closed:
            if peer.send(b""):
                with contextlib.suppress(OSError):
                    peer.sock.shutdown(socket.SHUT_WR)
            took, last = peer.wait_closed()
            assert took < SHARED_NETWORK_TIMEOUT_S + 3, f"closed after {took:.1f} s"
            seen += last
        return seen


def test_the_unmutated_conversation_is_stored(shared_scp: RunningScp) -> None:
    """The seed of the PDU property test is a valid exchange (else mutating it proves little)."""
    seen = converse(shared_scp, REQUEST, AFTER_ACCEPT, pipelined=False)
    assert seen == [raw.ASSOCIATE_AC, raw.P_DATA_TF, raw.P_DATA_TF, raw.RELEASE_RP]
    assert "2.25.815.dcm" in {p.name for p in shared_scp.spool.iter_instances()}
    assert seen == converse(shared_scp, REQUEST, AFTER_ACCEPT, pipelined=False)  # duplicate
    # P-DATA before the A-ASSOCIATE-AC breaks PS3.8: pynetdicom aborts (its DUL thread dies
    # of an InvalidEventError on the way, printed by threading) and the node lives on
    assert converse(shared_scp, REQUEST, AFTER_ACCEPT, pipelined=True) == [raw.ABORT]
    assert raw_echo_ok(shared_scp)


stream_ops = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
)


def mutate_stream(data: bytes, op: tuple[Any, ...]) -> bytes:
    if op[0] == "insert":
        at = op[1] % (len(data) + 1)
        return data[:at] + op[2] + data[at:]
    if op[0] == "delete" and data:
        at = op[1] % len(data)
        return data[:at] + data[at + op[2] :]
    return mutate_bytes(data, op)


@PROPERTY_SETTINGS
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["request", *["rest"] * 4]), stream_ops), min_size=1, max_size=4
    ),
    pipelined=st.integers(0, 4).map(lambda n: n == 0),  # one in five: P-DATA before the AC
)
def test_property_mutated_pdu_streams_never_crash_the_node(
    shared_scp: RunningScp, ops: list[tuple[str, tuple[Any, ...]]], pipelined: bool
) -> None:
    scp = shared_scp
    parts = {"request": REQUEST, "rest": AFTER_ACCEPT}
    for part, op in ops:
        parts[part] = mutate_stream(parts[part], op)
    seen = converse(scp, parts["request"], parts["rest"], pipelined=pipelined)
    event(f"node sent PDU types {sorted(set(seen))}")
    assert incoming_empty(scp)
    assert raw_echo_ok(scp)
