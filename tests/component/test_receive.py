"""The SCP over real associations on 127.0.0.1: our SCU and dcmtk's storescu as peers."""

from __future__ import annotations

import gc
import hashlib
import logging
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pynetdicom.dsutils
import pytest
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from scpnode.db.models import AssociationRow, AuditEventRow, InstanceRow, StudyRow
from scpnode.dicomnet import IMPLEMENTATION_CLASS_UID
from scpnode.infer.dicom_slices import KnownSlice, known_slice, read_known, read_slice
from scpnode.pixel_layout import PixelLayout, read_stored
from scpnode.receive import fastpath
from scpnode.send import Peer, echo, store_datasets
from tests.conftest import PEER_ENV, ct_small, need, partial_data


def events(scp, kind: str) -> list[AuditEventRow]:
    with scp.db.session() as s:
        return list(s.scalars(select(AuditEventRow).where(AuditEventRow.kind == kind)))


def send(scp, datasets, calling: str = "SCANNER", **kw):
    return store_datasets(datasets, Peer(scp.ae_title, "127.0.0.1", scp.port), calling, **kw)


def test_storescu_instance_lands_in_spool_and_audit(make_scp, tmp_path: Path) -> None:
    storescu = need("storescu")
    scp = make_scp()
    src = tmp_path / "ct.dcm"
    ct_small().save_as(src, enforce_file_format=True)
    run = subprocess.run(
        [storescu, "-aet", "CT01", "-aec", scp.ae_title, "127.0.0.1", str(scp.port), str(src)],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    scp.finish()
    ds = ct_small()
    stored = (
        scp.spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    )
    assert pydicom.dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID
    with scp.db.session() as s:
        inst = s.scalars(select(InstanceRow)).one()
        assoc = s.scalars(select(AssociationRow)).one()
        study = s.scalars(select(StudyRow)).one()
    assert inst.calling_aet == "CT01" and inst.path == str(stored) and inst.modality == "CT"
    # hashed on another thread while the header was parsed: still the stored bytes' digest
    assert (inst.sha256, inst.bytes) == (
        hashlib.sha256(stored.read_bytes()).hexdigest(),
        stored.stat().st_size,
    )
    assert inst.transfer_syntax_uid in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    assert (assoc.calling_aet, assoc.outcome, assoc.instances) == ("CT01", "released", 1)
    assert study.state == "receiving" and study.first_calling_aet == "CT01"
    assert [e.kind for e in events(scp, "instance_stored")] == ["instance_stored"]
    # the SCP noted where the pixels lie: the worker reads them without parsing the file
    known = known_slice(inst)
    assert isinstance(known, KnownSlice) and read_stored(stored, known.layout) is not None
    got, expected = read_known(known), read_slice(stored)
    assert (got[0].z, got[1], got[2]) == (expected[0].z, expected[1], expected[2])
    assert (got[0].hu == expected[0].hu).all()


def test_echo_and_nagle_disabled(make_scp) -> None:
    scp = make_scp()
    assert echo(Peer(scp.ae_title, "127.0.0.1", scp.port), "MONITOR").status == 0
    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
    try:
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name.startswith("SCPNODE_")
        server_side = [a for a in scp.server.ae.active_associations if a.is_acceptor]
        sock = server_side[0].dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def test_fast_path_hooks_our_acceptors_and_frees_their_pipes(make_scp) -> None:
    """Event-driven waits (receive/fastpath.py) on every accepted association, and the
    wake-up pipe of each is closed once it ends: a node up for months leaks no descriptors."""
    scp = make_scp()
    fds = Path("/proc/self/fd")
    before = len(list(fds.iterdir()))
    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
    try:
        acceptor = next(a for a in scp.server.ae.active_associations if a.is_acceptor)
        assert callable(getattr(acceptor, fastpath._HOOK))
        assert isinstance(acceptor.dul.to_provider_queue, fastpath._WakingQueue)
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    for _ in range(20):
        assert echo(Peer(scp.ae_title, "127.0.0.1", scp.port), "MONITOR").status == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        gc.collect()
        if len(list(fds.iterdir())) <= before + 2 and not scp.server.active_associations:
            break
        time.sleep(0.1)
    assert len(list(fds.iterdir())) <= before + 2, "wake-up pipes left open"


def test_per_instance_pydicom_encodes_are_skipped(make_scp, monkeypatch, tmp_path) -> None:
    """Plain C-STORE responses, successes and refusals alike, are sent from our template
    (receive/store_response.py), and each data set file's meta written directly
    (receive/file_meta.py): while storescu sends, pydicom encodes nothing in the node's
    process. The peer still reads every status and the files are whole."""
    storescu = need("storescu")
    scp = make_scp()
    for n in range(3):
        ds = ct_small()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{n + 1}"
        ds.save_as(tmp_path / f"ct{n}.dcm", enforce_file_format=True)
    bad = ct_small()
    bad.StudyInstanceUID = "1.2.03.4"
    bad.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    encoded: list[object] = []
    real_write_dataset = pydicom.filewriter.write_dataset
    for module in (pydicom.filewriter, pynetdicom.dsutils):  # pynetdicom imported the name
        monkeypatch.setattr(
            module,
            "write_dataset",
            lambda fp, ds, *a: (encoded.append(ds), real_write_dataset(fp, ds, *a))[1],
        )
    run = subprocess.run(
        [storescu, "-v", "-aet", "CT01", "-aec", scp.ae_title, "127.0.0.1", str(scp.port),
         *(str(tmp_path / f"ct{n}.dcm") for n in range(3)), str(tmp_path / "bad.dcm")],
        env=PEER_ENV, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    monkeypatch.undo()
    assert encoded == [], "pydicom encoded a response or a file meta"
    said = run.stdout + run.stderr
    assert said.count("Received Store Response (Success)") == 3, said
    assert said.count("Received Store Response (Error: CannotUnderstand)") == 1, said  # 0xC002
    scp.finish()
    stored = sorted(scp.spool.root.glob("*/*/*.dcm"))
    assert len(stored) == 3
    for path in stored:
        assert pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID == path.stem


def test_unknown_calling_ae_is_rejected_and_audited(make_scp, tmp_path: Path) -> None:
    storescu = need("storescu")
    scp = make_scp(allowed_calling_aets=("CT01",))
    src = tmp_path / "ct.dcm"
    ct_small().save_as(src, enforce_file_format=True)
    run = subprocess.run(
        [storescu, "-aet", "INTRUDER", "-aec", scp.ae_title, "127.0.0.1", str(scp.port), str(src)],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode != 0
    assert "Calling AE Title Not Recognized" in run.stdout + run.stderr
    scp.finish()
    (event,) = events(scp, "association_rejected")
    assert '"calling_aet": "INTRUDER"' in event.detail and "not recognised" in event.detail
    assert not any(scp.spool.root.glob("*/*/*.dcm"))


def test_sop_class_refused_when_ct_only(make_scp) -> None:
    scp = make_scp(accept_all_storage=False)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
    try:
        rejected = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert rejected == {SecondaryCaptureImageStorage: 0x03}  # abstract syntax not supported
    assert accepted == {"1.2.840.10008.5.1.4.1.1.2"}
    scp.finish()
    (event,) = events(scp, "context_rejected")
    assert SecondaryCaptureImageStorage in event.detail


def test_bad_uid_gets_failure_status_and_nothing_is_stored(make_scp) -> None:
    scp = make_scp()
    ds = ct_small()
    ds.StudyInstanceUID = "1.2.03.4"  # a leading zero: not a DICOM UID
    assert send(scp, [ds]) == [0xC002]
    scp.finish()
    (event,) = events(scp, "instance_rejected")
    assert "0xC002" in event.detail and "grammar" in event.detail
    assert not any(scp.spool.root.glob("*/*/*.dcm"))


def test_full_disk_answers_out_of_resources(make_scp) -> None:
    scp = make_scp(min_free_mb=10**9)
    assert send(scp, [ct_small()]) == [0xA700]
    assert not any(scp.spool.root.glob("*/*/*.dcm"))
    scp.spool.min_free_bytes = 0  # space comes back: the very next C-STORE is stored
    assert send(scp, [ct_small()]) == [0x0000]
    scp.finish()
    (event,) = events(scp, "instance_rejected")
    assert "0xA700" in event.detail
    assert len(list(scp.spool.root.glob("*/*/*.dcm"))) == 1
    assert partial_data(scp.spool) == []


def test_unparseable_dataset_gets_cannot_understand(make_scp, tmp_path: Path) -> None:
    scp = make_scp()
    good = tmp_path / "good.dcm"
    ct_small().save_as(good, enforce_file_format=True)
    raw = good.read_bytes()
    meta_end = 144 + int.from_bytes(raw[140:144], "little")  # preamble, DICM, group length
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(raw[:meta_end] + bytes(range(256)) * 4)  # garbage after valid file meta
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
        status = assoc.send_c_store(broken)
        assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = False
    assert status.Status == 0xC001
    scp.finish()
    assert "0xC001" in events(scp, "instance_rejected")[0].detail


def test_duplicate_is_noop_and_changed_resend_replaces(make_scp) -> None:
    scp = make_scp()
    ds = ct_small()
    assert send(scp, [ds, ds]) == [0, 0]
    changed = ct_small()
    changed.SeriesDescription = "RECONSTRUCTED AGAIN"
    assert send(scp, [changed]) == [0]
    scp.finish()
    assert len(events(scp, "instance_duplicate")) == 1
    (replaced,) = events(scp, "instance_replaced")
    assert ".replaced" in replaced.detail
    with scp.db.session() as s:
        inst = s.scalars(select(InstanceRow)).one()
    assert inst.versions == 2 and inst.series_description == "RECONSTRUCTED AGAIN"
    assert len(list(scp.spool.replaced.iterdir())) == 1
    layout = PixelLayout.decode(inst.pixel_layout)  # the new version's, for the new file
    assert layout is not None and layout.inode == Path(inst.path).stat().st_ino
    assert read_stored(Path(inst.path), layout) is not None


def test_rle_compressed_ct_is_accepted_as_sent(make_scp) -> None:
    scp = make_scp()
    ds = ct_small()
    ds.compress(RLELossless)
    assert send(scp, [ds], transfer_syntaxes=[RLELossless]) == [0]
    scp.finish()
    with scp.db.session() as s:
        inst = s.scalars(select(InstanceRow)).one()
    assert inst.transfer_syntax_uid == RLELossless
    assert inst.pixel_layout is None  # decoded by pydicom's plugins, the long way
    stored = pydicom.dcmread(inst.path)
    assert (stored.pixel_array == ct_small().pixel_array).all()


def test_association_limit_gives_transient_rejection(make_scp) -> None:
    scp = make_scp(max_associations=1)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    first = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
    try:
        second = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
        assert second.is_rejected
        primitive = second.acceptor.primitive
        assert (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 3, 2)
    finally:
        first.release()
    scp.finish()
    (event,) = events(scp, "association_rejected")
    assert "local limit exceeded" in event.detail


@pytest.mark.parametrize("accept_all", [True, False])
def test_offered_transfer_syntaxes(make_scp, accept_all: bool) -> None:
    scp = make_scp(accept_all_storage=accept_all)
    ct = next(
        cx
        for cx in scp.server.ae.supported_contexts
        if cx.abstract_syntax == "1.2.840.10008.5.1.4.1.1.2"
    )
    assert ct.transfer_syntax[:2] == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    for ts in (
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.5",
    ):
        assert ts in ct.transfer_syntax
    assert "1.2.840.10008.1.2.4.50" not in ct.transfer_syntax  # lossy JPEG: never
    n_storage = len(scp.server.ae.supported_contexts) - 1
    assert (n_storage > 100) if accept_all else (n_storage == 2)


def test_simulate_cli_sends_one_association_per_series(make_scp, capsys) -> None:
    from scpnode.cli import main

    scp = make_scp()
    args = [
        "simulate",
        "--to",
        f"127.0.0.1:{scp.port}",
        "--called-aet",
        scp.ae_title,
        "--calling-aet",
        "SIMCT",
        "--studies",
        "2",
        "--slices",
        "4",
        "--seed",
        "5",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.count("4/4 instances stored") == 2
    scp.finish()
    with scp.db.session() as s:
        assocs = s.scalars(select(AssociationRow)).all()
        studies = s.scalars(select(StudyRow)).all()
    assert [(a.calling_aet, a.instances) for a in assocs] == [("SIMCT", 4), ("SIMCT", 4)]
    assert len(studies) == 2


def test_simulate_cli_rejects_a_bad_address() -> None:
    from scpnode.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--to", "nowhere"])
    assert exit_info.value.code == 2


def test_pynetdicom_log_handlers_are_dropped_only_while_its_logger_is_silent(make_scp) -> None:
    """pynetdicom's logging handlers format every request and PDU; with its logger at WARNING
    (scpnode.logs) our acceptors unbind them, with INFO opened for a debugging session they
    log as before, and our own DIMSE handler stays bound either way."""
    from pynetdicom import evt

    scp = make_scp()

    def acceptor_handlers() -> dict[str, list[str]]:
        ae = AE(ae_title="PROBE")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
        try:
            acceptor = next(a for a in scp.server.ae.active_associations if a.is_acceptor)
            return {
                e.name: sorted(h.__name__ for h, _ in acceptor.get_handlers(e))
                for e in (evt.EVT_DIMSE_RECV, evt.EVT_PDU_RECV)
            }
        finally:
            assoc.release()

    logger = logging.getLogger("pynetdicom")
    level = logger.level
    try:
        logger.setLevel(logging.WARNING)
        assert acceptor_handlers() == {"EVT_DIMSE_RECV": ["on_dimse_recv"], "EVT_PDU_RECV": []}
        logger.setLevel(logging.INFO)
        assert acceptor_handlers() == {
            "EVT_DIMSE_RECV": ["on_dimse_recv", "standard_dimse_recv_handler"],
            "EVT_PDU_RECV": ["standard_pdu_recv_handler"],
        }
    finally:
        logger.setLevel(level)
