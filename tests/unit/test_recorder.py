"""The recorder's batches (scpnode/ingest.py) against a real SQLite file: a streamed series
is written in a few transactions, with the same rows and events as one by one."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import event, select

from scpnode.clock import utcnow
from scpnode.db import Database
from scpnode.db.models import AssociationRow, AuditEventRow, InstanceRow, StudyRow
from scpnode.headers import InstanceHeader
from scpnode.ingest import Recorder
from scpnode.receive.records import AssociationClosed, AssociationOpened, InstanceReceived
from scpnode.spool import StoreKind

STUDY, SERIES = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.1"


def received(i: int, kind: str = StoreKind.STORED, size: int = 1000) -> InstanceReceived:
    header = InstanceHeader(
        study_uid=STUDY,
        series_uid=SERIES,
        sop_uid=f"{SERIES}.{i}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        instance_number=i,
    )
    return InstanceReceived(
        key=1,
        calling_aet="CT01",
        header=header,
        kind=kind,
        path=f"/spool/{i}.dcm",
        sha256="ab" * 32,
        size=size,
        at=utcnow(),
    )


def test_a_streamed_series_is_few_transactions_with_exact_counts(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/audit.db")
    db.upgrade()
    commits: list[int] = []
    event.listen(db.engine, "commit", lambda _conn: commits.append(1))
    recorder = Recorder(db, linger_s=0.5)
    recorder.start()
    try:
        recorder.submit(
            AssociationOpened(
                key=1,
                calling_aet="CT01",
                called_aet="SCPNODE",
                peer_host="127.0.0.1",
                peer_port=1,
                at=utcnow(),
            )
        )
        for i in range(1, 61):  # paced like a scanner: one C-STORE every few ms
            recorder.submit(received(i))
            time.sleep(0.005)
        recorder.submit(received(7, kind=StoreKind.DUPLICATE))  # a resend in the same batch
        recorder.submit(replace(received(8), sha256="cd" * 32))  # a changed resend
        recorder.submit(AssociationClosed(key=1, outcome="released", at=utcnow()))
        assert recorder.flush(30)
    finally:
        recorder.stop()
    assert len(commits) <= 4, f"{len(commits)} transactions for one streamed series"
    with db.session() as s:
        assert s.scalar(select(StudyRow.state).where(StudyRow.study_instance_uid == STUDY))
        rows = {r.sop_instance_uid: r for r in s.scalars(select(InstanceRow))}
        assoc = s.scalars(select(AssociationRow)).one()
        kinds = [e.kind for e in s.scalars(select(AuditEventRow).order_by(AuditEventRow.id))]
        released = s.scalars(
            select(AuditEventRow).where(AuditEventRow.kind == "association_released")
        ).one()
    assert len(rows) == 60 and rows[f"{SERIES}.8"].versions == 2
    assert rows[f"{SERIES}.8"].sha256 == "cd" * 32 and rows[f"{SERIES}.7"].versions == 1
    # 60 new + 1 replaced count; the duplicate does not
    assert (assoc.instances, assoc.bytes, assoc.outcome) == (61, 61_000, "released")
    assert json.loads(released.detail)["instances"] == 61
    assert kinds.count("instance_duplicate") == 1 and kinds.count("instance_replaced") == 1
    db.dispose()


def test_a_series_reaching_its_announced_count_brings_the_sweep_forward(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/audit.db")
    db.upgrade()
    kicks: list[int] = []
    recorder = Recorder(db, on_series_filled=lambda: kicks.append(1))
    recorder.start()

    def announced(i: int) -> InstanceReceived:
        rec = received(i)
        return replace(rec, header=replace(rec.header, images_in_acquisition=3))

    try:
        for i in (1, 2):
            recorder.submit(announced(i))
        assert recorder.flush(30)
        assert kicks == []  # two of three: the timer may wait
        recorder.submit(announced(3))
        assert recorder.flush(30)
        assert kicks == [1]  # the third: sweep now
        recorder.submit(received(4))  # no announced count: nothing to check
        assert recorder.flush(30)
        assert kicks == [1]
    finally:
        recorder.stop()
    db.dispose()


def test_records_do_not_wake_the_recorder_one_by_one(tmp_path: Path) -> None:
    """Each wake-up of the recorder thread takes the GIL from the association threads: a
    streamed series wakes it once per batch, and a flush still ends the batch at once."""
    db = Database(f"sqlite:///{tmp_path}/audit.db")
    db.upgrade()
    recorder = Recorder(db, linger_s=30)
    waits: list[float | None] = []
    queue_get = recorder._queue.get

    def counting_get(block: bool = True, timeout: float | None = None) -> object:
        if block:
            waits.append(timeout)
        return queue_get(block, timeout)

    recorder._queue.get = counting_get  # type: ignore[method-assign]
    recorder.start()
    try:
        for i in range(1, 21):
            recorder.submit(received(i))
            time.sleep(0.002)
        assert recorder.flush(10), "the flush waited for the 30 s linger"
    finally:
        recorder.stop()
    assert len(waits) <= 2, f"{len(waits)} blocking waits for 20 records and a flush"
    with db.session() as s:
        assert len(s.scalars(select(InstanceRow)).all()) == 20
    db.dispose()
