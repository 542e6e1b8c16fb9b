"""Spool retention: remove the received files of finished studies after `storage.retention_days`.

Audit rows, results and the outbox are kept, so "what happened to study X" still has an
answer; only the pixels go. Studies that may still need work (receiving, queued, processing,
reported with pending deliveries, failed, expired) are never purged.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta

from sqlalchemy import or_, select

from scpnode import audit
from scpnode.db import Database
from scpnode.db.models import StudyRow
from scpnode.domain import AuditKind, StudyState
from scpnode.spool import Spool

log = logging.getLogger(__name__)
FINISHED = (StudyState.DELIVERED, StudyState.IGNORED, StudyState.NOT_ANALYSED)


def purge_finished(db: Database, spool: Spool, retention_days: float, now: datetime) -> list[str]:
    """Purge eligible studies; returns their UIDs. 0 days means keep everything."""
    if retention_days <= 0:
        return []
    cutoff = now - timedelta(days=retention_days)
    with db.session() as session:
        candidates = list(session.scalars(
            select(StudyRow).where(StudyRow.state.in_(FINISHED),
                                   StudyRow.state_changed_at < cutoff,
                                   or_(StudyRow.purged_at.is_(None),
                                       StudyRow.purged_at < StudyRow.state_changed_at))
            .limit(1000)))  # fmt: skip
    purged = []
    for study in candidates:
        if _purge_one(db, spool, study, now):
            purged.append(study.study_instance_uid)
    return purged


def _purge_one(db: Database, spool: Spool, study: StudyRow, now: datetime) -> bool:
    folder = spool.root / study.study_instance_uid  # UIDs were validated before they were paths
    files = list(folder.rglob("*.dcm")) if folder.exists() else []
    size = sum(p.stat().st_size for p in files)
    with db.session() as session:
        row = session.get(StudyRow, study.id)
        purged_again = (
            row is not None
            and row.purged_at is not None
            and (row.purged_at >= row.state_changed_at)
        )
        if row is None or row.state not in FINISHED or purged_again:
            return False  # reopened or purged meanwhile
        row.purged_at = now
        audit.append(session, AuditKind.SPOOL_PURGED, study_uid=row.study_instance_uid, now=now,
                     files=len(files), bytes=size, state=row.state)  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    log.info("spool purged", extra={"study": study.study_instance_uid, "files": len(files)})
    return True
