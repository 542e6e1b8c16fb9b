"""Durable study jobs: enqueue on completion, claim with a lease, finish or fail.

Every transition is a conditional UPDATE checked by its row count, so two processes (or two
nodes on one PostgreSQL database) never queue or claim the same study twice. A worker that
dies leaves a lease that expires; the next claim takes the job over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from scpnode import audit, scope
from scpnode.completion import SeriesProgress, StudyActivity, completion_reason
from scpnode.db import Database
from scpnode.db.models import AssociationRow, DeliveryRow, InstanceRow, JobRow, StudyRow
from scpnode.db.session import rowcount
from scpnode.domain import AuditKind, JobState, StudyState
from scpnode.owners import is_dead_local_owner

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class ClaimedJob:
    job_id: int
    study_id: int
    study_uid: str
    attempt: int


def sweep_completions(
    db: Database, now: datetime, *, grace_s: float, idle_timeout_s: float
) -> list[str]:
    """Queue every `receiving` study that is complete; returns their UIDs."""
    queued = []
    with db.session() as session:
        studies = session.scalars(
            select(StudyRow).where(StudyRow.state == StudyState.RECEIVING)
        ).all()
    for study in studies:
        with db.session() as session:
            activity = _activity(session, study)
            reason = completion_reason(
                activity, now, grace_s=grace_s, idle_timeout_s=idle_timeout_s
            )
            if reason and _queue_study(session, study, reason, now):
                queued.append(study.study_instance_uid)
    return queued


def _activity(session: Session, study: StudyRow) -> StudyActivity:
    assoc_ids = (
        select(InstanceRow.association_id)
        .where(
            InstanceRow.study_id == study.id,
            InstanceRow.received_at >= study.state_changed_at,
            InstanceRow.association_id.is_not(None),
        )
        .distinct()
    )
    open_count, last_end = session.execute(
        select(
            func.count().filter(AssociationRow.ended_at.is_(None)),
            func.max(AssociationRow.ended_at),
        ).where(AssociationRow.id.in_(assoc_ids))
    ).one()
    return StudyActivity(study.last_received_at, int(open_count or 0), last_end,
                         _series_progress(session, study))  # fmt: skip


def _series_progress(session: Session, study: StudyRow) -> tuple[SeriesProgress, ...]:
    """Per CT series: the expected count its headers announce, and what arrived."""
    rows = session.scalars(
        select(InstanceRow).where(InstanceRow.study_id == study.id,
                                  InstanceRow.is_own.is_(False),
                                  InstanceRow.sop_class_uid.in_(scope.CT_CLASSES))
    ).all()  # fmt: skip
    by_series: dict[str, list[InstanceRow]] = {}
    for row in rows:
        by_series.setdefault(row.series_instance_uid, []).append(row)
    return tuple(
        SeriesProgress(
            expected=max((m.images_in_acquisition or 0 for m in members), default=0) or None,
            received=len(members),
            positions=tuple(scope.z_positions(members)),
            multiframe=any(m.sop_class_uid == scope.ENHANCED_CT for m in members),
        )
        for members in by_series.values()
    )


def _queue_study(session: Session, study: StudyRow, reason: str, now: datetime) -> bool:
    moved = rowcount(
        session.execute(
            update(StudyRow)
            .where(
                StudyRow.id == study.id,
                StudyRow.state == StudyState.RECEIVING,
                StudyRow.last_received_at == study.last_received_at,
            )
            .values(state=StudyState.QUEUED, state_changed_at=now)
        )
    )
    if moved != 1:
        return False
    session.add(JobRow(study_id=study.id, state=JobState.QUEUED, created_at=now, attempts=0))
    audit.append(
        session,
        AuditKind.STUDY_COMPLETE,
        study_uid=study.study_instance_uid,
        now=now,
        reason=reason,
    )
    return True


def claim(db: Database, owner: str, lease_s: float, now: datetime) -> ClaimedJob | None:
    """Take the oldest queued job, or one whose lease expired (its worker died)."""
    claimable = or_(
        JobRow.state == JobState.QUEUED,
        and_(JobRow.state == JobState.RUNNING, JobRow.lease_expires_at < now),
    )
    for _ in range(10):
        with db.session() as session:
            job = session.scalars(  # SKIP LOCKED: PostgreSQL; SQLite has one writer anyway
                select(JobRow)
                .where(claimable)
                .order_by(JobRow.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if job is None:
                return None
            taken = rowcount(
                session.execute(
                    update(JobRow)
                    .where(JobRow.id == job.id, claimable)
                    .values(
                        state=JobState.RUNNING,
                        lease_owner=owner,
                        claimed_at=now,
                        lease_expires_at=now + timedelta(seconds=lease_s),
                        attempts=JobRow.attempts + 1,
                    )
                )
            )
            if taken != 1:
                continue
            return _start(session, job, owner, now)
    return None


def _start(session: Session, job: JobRow, owner: str, now: datetime) -> ClaimedJob | None:
    session.refresh(job)
    study = session.get(StudyRow, job.study_id)
    assert study is not None
    uid = study.study_instance_uid
    if job.attempts > 1:
        audit.append(
            session,
            AuditKind.JOB_RECLAIMED,
            study_uid=uid,
            now=now,
            job_id=job.id,
            attempt=job.attempts,
            owner=owner,
        )
    if job.attempts > MAX_ATTEMPTS:
        _finish(session, job, JobState.FAILED, now, "gave up after repeated worker failures")
        _set_study(session, study, StudyState.FAILED, now, "processing failed repeatedly")
        return None
    if study.state not in (StudyState.QUEUED, StudyState.PROCESSING):
        _finish(session, job, JobState.DONE, now, f"superseded: study is {study.state}")
        return None
    _set_study(session, study, StudyState.PROCESSING, now, None)
    audit.append(
        session,
        AuditKind.JOB_CLAIMED,
        study_uid=uid,
        now=now,
        job_id=job.id,
        owner=owner,
        attempt=job.attempts,
    )
    return ClaimedJob(job.id, study.id, uid, job.attempts)


def heartbeat(db: Database, job_id: int, owner: str, lease_s: float, now: datetime) -> bool:
    with db.session() as session:
        return (
            rowcount(
                session.execute(
                    update(JobRow)
                    .where(
                        JobRow.id == job_id,
                        JobRow.lease_owner == owner,
                        JobRow.state == JobState.RUNNING,
                    )
                    .values(lease_expires_at=now + timedelta(seconds=lease_s))
                )
            )
            == 1
        )


def finish_job(
    session: Session, job_id: int, state: JobState, now: datetime, error: str | None = None
) -> None:
    job = session.get(JobRow, job_id)
    if job is not None:
        _finish(session, job, state, now, error)


def _finish(
    session: Session, job: JobRow, state: JobState, now: datetime, error: str | None
) -> None:
    job.state, job.finished_at, job.error, job.lease_expires_at = state, now, error, None


def _set_study(
    session: Session, study: StudyRow, state: StudyState, now: datetime, reason: str | None
) -> None:
    study.state, study.state_changed_at, study.reason = state, now, reason


def settle_study(
    session: Session, study_id: int, state: StudyState, now: datetime, reason: str | None = None
) -> bool:
    """Leave `processing` for `state`, unless new instances reopened the study meanwhile."""
    return (
        rowcount(
            session.execute(
                update(StudyRow)
                .where(StudyRow.id == study_id, StudyRow.state == StudyState.PROCESSING)
                .values(state=state, state_changed_at=now, reason=reason)
            )
        )
        == 1
    )


def release_dead_claims(db: Database, now: datetime) -> tuple[int, int]:
    """Free the jobs and delivery claims of local processes that died (kill -9, OOM, crash),
    so a restart resumes their work now rather than when the lease runs out."""
    with db.session() as session:
        jobs = [j for j in session.scalars(select(JobRow).where(JobRow.state == JobState.RUNNING))
                if is_dead_local_owner(j.lease_owner)]  # fmt: skip
        for job in jobs:
            job.lease_expires_at = now
        deliveries = [d for d in session.scalars(
            select(DeliveryRow).where(DeliveryRow.claimed_by.is_not(None)))
            if is_dead_local_owner(d.claimed_by)]  # fmt: skip
        for delivery in deliveries:
            delivery.claimed_until, delivery.claimed_by = None, None
        if jobs or deliveries:
            audit.append(session, AuditKind.CLAIMS_RELEASED, now=now,
                         jobs=[j.id for j in jobs], deliveries=[d.id for d in deliveries],
                         owners=sorted({str(j.lease_owner) for j in jobs}
                                       | {str(d.claimed_by) for d in deliveries}))  # fmt: skip
    return len(jobs), len(deliveries)
