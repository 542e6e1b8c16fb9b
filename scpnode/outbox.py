"""The outbox: every SR written once, registered, and given one delivery per destination.

Retries resend the stored bytes; an input seen before (same derived SOP Instance UID) reuses
its report instead of building a second one.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scpnode import audit, report
from scpnode.config import Settings
from scpnode.db.models import REPORT_KINDS, DeliveryRow, SrRow
from scpnode.domain import AuditKind, DeliveryState
from scpnode.spool import file_sha256


def register_sr(
    session: Session,
    settings: Settings,
    study_id: int,
    study_uid: str,
    result_id: int,
    sr: Dataset,
    kind: str,
    now: datetime,
) -> SrRow:
    """Write the SR to the outbox, add its row and its pending deliveries, audit it."""
    existing = session.scalar(select(SrRow).where(SrRow.sop_instance_uid == sr.SOPInstanceUID))
    if existing is not None:  # an input seen before: resend that very report
        return existing
    path = write_outbox(settings.outbox_dir, study_uid, sr)
    digest, size = file_sha256(path)
    row = SrRow(study_id=study_id, result_id=result_id, sop_instance_uid=sr.SOPInstanceUID,
                series_instance_uid=sr.SeriesInstanceUID, kind=kind, path=str(path),
                sha256=digest, bytes=size, created_at=now)  # fmt: skip
    session.add(row)
    session.flush()
    open_deliveries(session, settings, row, now)
    audit.append(session, AuditKind.SR_CREATED, study_uid=study_uid, now=now,
                 sr_sop_instance_uid=row.sop_instance_uid, kind=kind, bytes=size,
                 destinations=[d.name for d in settings.destinations])  # fmt: skip
    return row


def open_deliveries(session: Session, settings: Settings, sr: SrRow, now: datetime) -> None:
    expires = now + timedelta(hours=settings.delivery.max_age_h)
    for dest in settings.destinations:
        session.add(DeliveryRow(
            sr_id=sr.id, study_id=sr.study_id, destination=dest.name, ae_title=dest.ae_title,
            host=dest.host, port=dest.port, state=DeliveryState.PENDING, attempts=0,
            created_at=now, expires_at=expires, next_attempt_at=now,
        ))  # fmt: skip


def write_outbox(outbox: Path, study_uid: str, sr: Dataset) -> Path:
    """Atomic write: a delivery never reads half a report."""
    target = outbox / study_uid / f"{sr.SOPInstanceUID}.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_suffix(f".{os.getpid()}.part")
    temp.write_bytes(report.sr_to_bytes(sr))
    temp.replace(target)
    return target


def next_instance_number(session: Session, study_id: int) -> int:
    count = session.scalar(
        select(func.count())
        .select_from(SrRow)
        .where(SrRow.study_id == study_id, SrRow.kind.in_(REPORT_KINDS))
    )
    return int(count or 0) + 1


def previous_report(session: Session, study_id: int) -> list[Dataset]:
    """The latest result SR of the study, for the new one's Predecessor Documents Sequence."""
    latest = session.scalars(
        select(SrRow)
        .where(SrRow.study_id == study_id, SrRow.kind == "result")
        .order_by(SrRow.id.desc())
        .limit(1)
    ).first()
    if latest is None or not Path(latest.path).exists():
        return []
    return [pydicom.dcmread(latest.path, stop_before_pixels=True)]
