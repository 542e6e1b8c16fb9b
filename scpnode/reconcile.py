"""Start-up reconciliation of the spool and the database (DESIGN §7).

Acknowledged means stored: a file can be in the spool while its row is not (the process died
between the rename and the recorder's commit). At start-up every such file is put back in the
database, and associations a previous run left open are closed as aborted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select

from scpnode import audit
from scpnode.clock import utcnow
from scpnode.db import Database
from scpnode.db.models import AssociationRow, InstanceRow, StudyRow
from scpnode.domain import AssociationOutcome, AuditKind
from scpnode.headers import UnreadableDataset, read_header
from scpnode.ingest import record_instance
from scpnode.owners import is_dead_local_owner, process_owner
from scpnode.receive.records import InstanceReceived
from scpnode.spool import Spool, StoreKind, file_sha256

log = logging.getLogger(__name__)


def reconcile(db: Database, spool: Spool) -> int:
    """Put spool files without an instance row back into the database; close stale associations."""
    now = utcnow()
    with db.session() as session:
        open_rows = session.scalars(
            select(AssociationRow).where(AssociationRow.outcome == AssociationOutcome.OPEN)
        ).all()
        # only associations of SCP processes on this host that died: another node sharing
        # the database may be receiving on its own open associations right now
        stale = [r for r in open_rows if _left_by_a_dead_process(r.scp_owner)]
        for row in stale:
            row.outcome, row.ended_at = AssociationOutcome.ABORTED, now
            audit.append(
                session,
                AuditKind.ASSOCIATION_ABORTED,
                association_id=row.id,
                now=now,
                reason="node stopped before the association ended",
            )
    added = 0
    for study_dir in _study_dirs(spool):
        added += _reconcile_study(db, study_dir)
    return added


def _left_by_a_dead_process(owner: str | None) -> bool:
    """No owner (older rows), our own "host:pid" (a container restarted with the same PID),
    or a process of this host that no longer exists."""
    return owner is None or owner == process_owner() or is_dead_local_owner(owner)


def _study_dirs(spool: Spool) -> list[Path]:
    if not spool.root.exists():
        return []
    return [p for p in spool.root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _reconcile_study(db: Database, study_dir: Path) -> int:
    with db.session() as session:
        known = set(
            session.scalars(
                select(InstanceRow.path)
                .join(StudyRow, StudyRow.id == InstanceRow.study_id)
                .where(StudyRow.study_instance_uid == study_dir.name)
            )
        )
        added = 0
        for path in sorted(study_dir.glob("*/*.dcm")):
            if str(path) in known:
                continue
            try:
                header = read_header(path)
            except UnreadableDataset:
                log.error("spool file unreadable, left in place", extra={"path": str(path)})
                continue
            digest, size = file_sha256(path)
            rec = InstanceReceived(
                key=0,
                calling_aet="",
                header=header,
                kind=StoreKind.STORED,
                path=str(path),
                sha256=digest,
                size=size,
                at=utcnow(),
            )
            record_instance(session, rec, None)
            audit.append(
                session,
                AuditKind.INSTANCE_RECONCILED,
                study_uid=header.study_uid,
                sop_instance_uid=header.sop_uid,
            )
            added += 1
        return added
