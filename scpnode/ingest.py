"""Turns SCP records into audit rows, off the association threads, in small batches.

The recorder thread is the only writer of association and instance rows in an SCP process.
If the process dies with records still queued, the files are already in the spool and
`reconcile` puts them back in the database at the next start (DESIGN §7).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from scpnode import audit
from scpnode.db import Database
from scpnode.db.models import AssociationRow, InstanceRow, SrRow, StudyRow
from scpnode.db.session import writer_lock
from scpnode.domain import AssociationOutcome, AuditKind, StudyState
from scpnode.owners import process_owner
from scpnode.receive.records import (
    AssociationClosed,
    AssociationOpened,
    AssociationRejected,
    ConnectionDropped,
    InstanceReceived,
    InstanceRefused,
    Record,
)
from scpnode.spool import StoreKind

log = logging.getLogger(__name__)
DROP_AUDIT_INTERVAL = timedelta(seconds=60)
_STOP = object()


def _is_marker(item: object) -> bool:
    return item is _STOP or isinstance(item, threading.Event)


class Recorder:
    """A queue plus one thread that applies records to the database in batches."""

    def __init__(
        self,
        db: Database,
        batch_size: int = 200,
        linger_s: float = 0.05,
        on_series_filled: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self.linger_s = linger_s
        # called after a batch in which a series reached the count its headers announce,
        # so completion runs now instead of at the next timer tick
        self.on_series_filled = on_series_filled
        self._queue: queue.Queue[object] = queue.Queue()
        self._hurry = threading.Event()
        self._assoc_ids: dict[int, int] = {}
        self._drops: dict[str, tuple[datetime | None, int]] = {}
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: Record) -> None:
        self._queue.put(record)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything submitted so far is in the database."""
        marker = threading.Event()
        self._queue.put(marker)
        self._hurry.set()
        return marker.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Apply everything queued, then end the thread."""
        self._queue.put(_STOP)
        self._hurry.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            records = [r for r in batch if r is not _STOP and not isinstance(r, threading.Event)]
            if records:
                self._apply_batch(records)  # type: ignore[arg-type]
            for marker in batch:
                if isinstance(marker, threading.Event):
                    marker.set()
            if any(r is _STOP for r in batch):
                return

    def _next_batch(self) -> list[object]:
        """Block for one item, then gather what comes within `linger_s` (up to a batch).

        While a scanner streams, one transaction per `linger_s` instead of one per instance:
        the recorder then takes the GIL from the association threads a few times a second,
        not at every C-STORE. A flush or a stop ends the gathering at once.
        """
        batch = [self._queue.get()]
        if not _is_marker(batch[0]):
            # records do not wake this thread (that would take the GIL at every C-STORE);
            # it sleeps out the linger, or until a flush or stop sets the hurry flag (their
            # markers are queued before it is set, so the gathering below finds them)
            self._hurry.wait(self.linger_s)
        self._hurry.clear()
        while len(batch) < self.batch_size and not _is_marker(batch[-1]):
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _apply_batch(self, records: list[Record]) -> None:
        try:
            with self.db.session() as session:
                writer_lock(session)  # another SCP node may create the same study meanwhile
                batch = InstanceBatch.prefetch(session, records)  # so read after the lock
                for record in records:
                    self.apply(session, record, batch)
                batch.finish(session)
        except Exception:
            log.exception("batch failed; applying records one by one")
            for record in records:
                try:
                    with self.db.session() as session:
                        writer_lock(session)
                        self.apply(session, record)
                except Exception:
                    log.exception("record lost to the database (reconciled at next start)")
        self._announce_filled(records)

    def _announce_filled(self, records: list[Record]) -> None:
        if self.on_series_filled is None:
            return
        try:
            if _a_series_filled(self.db, records):
                self.on_series_filled()
        except Exception:  # the completion timer still runs
            log.exception("could not check for a filled series")

    def apply(self, session: Session, record: Record, batch: InstanceBatch | None = None) -> None:
        if isinstance(record, AssociationOpened):
            self._opened(session, record)
        elif isinstance(record, AssociationClosed):
            self._closed(session, record, batch)
        elif isinstance(record, AssociationRejected):
            _rejected(session, record)
        elif isinstance(record, InstanceReceived):
            record_instance(session, record, self._assoc_ids.get(record.key), batch)
        elif isinstance(record, InstanceRefused):
            _refused(session, record, self._assoc_ids.get(record.key))
        elif isinstance(record, ConnectionDropped):
            self._dropped(session, record)

    def _dropped(self, session: Session, rec: ConnectionDropped) -> None:
        """Audited, at most once a minute per peer address: a load balancer's TCP checks must
        not flood the log, a burst of junk still shows (with how many were folded in)."""
        last, folded = self._drops.get(rec.peer_host, (None, 0))
        if last is not None and rec.at - last < DROP_AUDIT_INTERVAL:
            self._drops[rec.peer_host] = (last, folded + 1)
            return
        self._drops[rec.peer_host] = (rec.at, 0)
        audit.append(session, AuditKind.CONNECTION_DROPPED, now=rec.at,
                     peer=f"{rec.peer_host}:{rec.peer_port}", since_last_event=folded,
                     reason="closed before a valid A-ASSOCIATE-RQ")  # fmt: skip

    def _opened(self, session: Session, rec: AssociationOpened) -> None:
        row = _association_row(session, rec, AssociationOutcome.OPEN)
        self._assoc_ids[rec.key] = row.id
        audit.append(
            session,
            AuditKind.ASSOCIATION_ACCEPTED,
            association_id=row.id,
            now=rec.at,
            calling_aet=rec.calling_aet,
            called_aet=rec.called_aet,
            peer=f"{rec.peer_host}:{rec.peer_port}",
        )
        if rec.rejected_contexts:
            audit.append(
                session,
                AuditKind.CONTEXT_REJECTED,
                association_id=row.id,
                now=rec.at,
                contexts=list(rec.rejected_contexts),
            )

    def _closed(
        self, session: Session, rec: AssociationClosed, batch: InstanceBatch | None
    ) -> None:
        assoc_id = self._assoc_ids.pop(rec.key, None)
        if assoc_id is None:
            return
        if batch is not None:
            batch.count_into_associations(session)  # its totals go into the closing event
        row = session.get(AssociationRow, assoc_id)
        if row is None:
            return
        row.ended_at, row.outcome = rec.at, rec.outcome
        kind = (
            AuditKind.ASSOCIATION_RELEASED
            if rec.outcome == AssociationOutcome.RELEASED
            else AuditKind.ASSOCIATION_ABORTED
        )
        audit.append(
            session,
            kind,
            association_id=assoc_id,
            now=rec.at,
            instances=row.instances,
            failures=row.failures,
            bytes=row.bytes,
        )
        _summarise_association(session, assoc_id, rec.at)


def _summarise_association(session: Session, assoc_id: int, at: datetime) -> None:
    """One event per study and association: which series arrived, how many instances."""
    rows = session.execute(
        select(StudyRow.study_instance_uid, InstanceRow.series_instance_uid)
        .join(StudyRow, StudyRow.id == InstanceRow.study_id)
        .where(InstanceRow.association_id == assoc_id)
    ).all()
    per_study: dict[str, Counter[str]] = {}
    for study_uid, series_uid in rows:
        per_study.setdefault(study_uid, Counter())[series_uid] += 1
    for study_uid, series in per_study.items():
        audit.append(
            session,
            AuditKind.INSTANCE_STORED,
            study_uid=study_uid,
            association_id=assoc_id,
            now=at,
            series=dict(series),
        )


def _association_row(
    session: Session, rec: AssociationOpened | AssociationRejected, outcome: str
) -> AssociationRow:
    row = AssociationRow(
        calling_aet=rec.calling_aet, called_aet=rec.called_aet, peer_host=rec.peer_host,
        peer_port=rec.peer_port, started_at=rec.at, outcome=outcome, instances=0, failures=0,
        bytes=0, scp_owner=process_owner(),
    )  # fmt: skip
    session.add(row)
    session.flush()
    return row


def _rejected(session: Session, rec: AssociationRejected) -> None:
    row = _association_row(session, rec, AssociationOutcome.REJECTED)
    row.ended_at = rec.at
    row.detail = (
        f"{rec.reason} (result {rec.result}, source {rec.source}, diagnostic {rec.diagnostic})"
    )
    audit.append(
        session,
        AuditKind.ASSOCIATION_REJECTED,
        association_id=row.id,
        now=rec.at,
        calling_aet=rec.calling_aet,
        called_aet=rec.called_aet,
        reason=rec.reason,
        result=rec.result,
        source=rec.source,
        diagnostic=rec.diagnostic,
    )


def _refused(session: Session, rec: InstanceRefused, assoc_id: int | None) -> None:
    if assoc_id is not None:
        session.execute(
            update(AssociationRow)
            .where(AssociationRow.id == assoc_id)
            .values(failures=AssociationRow.failures + 1)
        )
    audit.append(
        session,
        AuditKind.INSTANCE_REJECTED,
        study_uid=rec.study_uid,
        association_id=assoc_id,
        now=rec.at,
        calling_aet=rec.calling_aet,
        sop_instance_uid=rec.sop_instance_uid,
        sop_class_uid=rec.sop_class_uid,
        status=f"0x{rec.status:04X}",
        reason=rec.reason,
    )


def _a_series_filled(db: Database, records: list[Record]) -> bool:
    """Whether a series in this batch now holds the instances its headers announce
    (ImagesInAcquisition): one grouped count, and only for batches that carry the number."""
    expected: dict[str, int] = {}
    for r in records:
        if isinstance(r, InstanceReceived) and r.header.images_in_acquisition:
            uid = r.header.series_uid
            expected[uid] = max(expected.get(uid, 0), r.header.images_in_acquisition)
    if not expected:
        return False
    with db.session() as session:
        counts = session.execute(
            select(InstanceRow.series_instance_uid, func.count())
            .where(InstanceRow.series_instance_uid.in_(list(expected)))
            .group_by(InstanceRow.series_instance_uid)
        ).all()
    return any(n >= expected[uid] for uid, n in counts)


@dataclass
class InstanceBatch:
    """What one recorder batch looks up once instead of once per instance.

    A 300-slice series arrives as batches of records for the same study: without this, each
    instance cost a study query, an instance query, an association UPDATE and a flush
    (about 2 ms of the SCP process's GIL per C-STORE, bench/ingest.py). Rows found or made
    are kept for the rest of the batch; association counters are summed and written once.
    """

    studies: dict[str, StudyRow] = field(default_factory=dict)
    instances: dict[str, InstanceRow | None] = field(default_factory=dict)
    counts: dict[int, tuple[int, int]] = field(default_factory=dict)  # assoc id: (n, bytes)

    @classmethod
    def prefetch(cls, session: Session, records: list[Record]) -> InstanceBatch:
        batch = cls()
        received = [r.header for r in records if isinstance(r, InstanceReceived)]
        if not received:
            return batch
        sop_uids = {h.sop_uid for h in received}
        batch.instances = dict.fromkeys(sop_uids)
        for row in session.scalars(
            select(InstanceRow).where(InstanceRow.sop_instance_uid.in_(sop_uids))
        ):
            batch.instances[row.sop_instance_uid] = row
        study_uids = {h.study_uid for h in received}
        for study in session.scalars(
            select(StudyRow).where(StudyRow.study_instance_uid.in_(study_uids))
        ):
            batch.studies[study.study_instance_uid] = study
        return batch

    def count(self, assoc_id: int, size: int) -> None:
        n, total = self.counts.get(assoc_id, (0, 0))
        self.counts[assoc_id] = (n + 1, total + size)

    def count_into_associations(self, session: Session) -> None:
        for assoc_id, (n, total) in self.counts.items():
            session.execute(
                update(AssociationRow)
                .where(AssociationRow.id == assoc_id)
                .values(instances=AssociationRow.instances + n, bytes=AssociationRow.bytes + total)
            )
        self.counts.clear()
        session.flush()

    def finish(self, session: Session) -> None:
        self.count_into_associations(session)


def record_instance(
    session: Session,
    rec: InstanceReceived,
    assoc_id: int | None,
    batch: InstanceBatch | None = None,
) -> None:
    """Upsert the instance and move its study's state (new data reopens a finished study)."""
    if batch is None:  # on its own (reconciliation): a batch of one
        batch = InstanceBatch.prefetch(session, [rec])
        record_instance(session, rec, assoc_id, batch)
        batch.finish(session)
        return
    header = rec.header
    is_own = header.is_own or _is_our_object(session, header.sop_class_uid, header.sop_uid)
    study = _study_for(session, header.study_uid, rec, is_own, batch)
    row = batch.instances.get(header.sop_uid)
    event: dict[str, Any] = dict(study_uid=header.study_uid, association_id=assoc_id, now=rec.at,
                 sop_instance_uid=header.sop_uid)  # fmt: skip
    if rec.kind != StoreKind.DUPLICATE and assoc_id is not None:
        batch.count(assoc_id, rec.size)
    if row is not None and rec.kind == StoreKind.DUPLICATE:
        audit.append(session, AuditKind.INSTANCE_DUPLICATE, **event)
        return
    if row is not None:
        audit.append(session, AuditKind.INSTANCE_REPLACED, kept_aside=rec.kept_aside, **event)
    batch.instances[header.sop_uid] = _upsert(session, row, rec, study, assoc_id, is_own)
    if is_own:
        audit.append(session, AuditKind.OWN_OBJECT_RECEIVED, **event)
    else:
        _touch_study(session, study, rec.at, assoc_id)


def _upsert(session: Session, row: InstanceRow | None, rec: InstanceReceived, study: StudyRow,
            assoc_id: int | None, is_own: bool) -> InstanceRow:  # fmt: skip
    if row is None:
        row = InstanceRow(sop_instance_uid=rec.header.sop_uid, versions=0)
        session.add(row)
    for name, value in rec.header.row_fields().items():
        setattr(row, name, value)
    # a re-send may even move the instance to another series or study: follow it
    row.study_id, row.series_instance_uid = study.id, rec.header.series_uid
    row.versions = (row.versions or 0) + 1
    row.is_own, row.association_id, row.calling_aet = is_own, assoc_id, rec.calling_aet
    row.path, row.bytes, row.sha256, row.received_at = rec.path, rec.size, rec.sha256, rec.at
    return row


OUR_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture (heat maps)
)


def _is_our_object(session: Session, sop_class_uid: str, sop_uid: str) -> bool:
    """One of the objects we sent, routed back. Only classes we send can be: CT never is, so
    a study's hundreds of slices cost no lookup."""
    if not sop_class_uid.startswith(OUR_SOP_CLASSES):
        return False
    return session.scalar(select(SrRow.id).where(SrRow.sop_instance_uid == sop_uid)) is not None


def _study_for(
    session: Session, study_uid: str, rec: InstanceReceived, is_own: bool, batch: InstanceBatch
) -> StudyRow:
    study = batch.studies.get(study_uid)
    if study is None:
        state = StudyState.IGNORED if is_own else StudyState.RECEIVING
        study = StudyRow(
            study_instance_uid=study_uid,
            state=state,
            first_calling_aet=rec.calling_aet,
            first_received_at=rec.at,
            last_received_at=rec.at,
            state_changed_at=rec.at,
            reason="only objects created by scpnode" if is_own else None,
        )
        session.add(study)
        session.flush()
        batch.studies[study_uid] = study
    return study


def _touch_study(session: Session, study: StudyRow, at: datetime, assoc_id: int | None) -> None:
    study.last_received_at = max(study.last_received_at, at)
    if study.state != StudyState.RECEIVING:
        audit.append(
            session,
            AuditKind.STUDY_REOPENED,
            study_uid=study.study_instance_uid,
            association_id=assoc_id,
            now=at,
            previous_state=study.state,
        )
        study.state, study.state_changed_at, study.reason = StudyState.RECEIVING, at, None
