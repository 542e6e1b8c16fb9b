"""Read models only the console needs: the dashboard, associations, events, models in use.

Every query is bounded: by an indexed time range (the dashboard looks at days, not years), or
by a page (`limit`/`offset` on an indexed order). Studies and deliveries reuse
`scpnode.audit_views` and `scpnode.delivery`, so the CLI and the console agree.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scpnode.audit_views import event_row, iso
from scpnode.db.models import (
    REPORT_KINDS,
    AssociationRow,
    AuditEventRow,
    DeliveryRow,
    JobRow,
    ResultRow,
    SrRow,
    StudyRow,
)
from scpnode.domain import AuditKind, DeliveryState, JobState, Label


@dataclass(frozen=True)
class DayRate:
    day: str
    studies: int
    analysed: int
    positive: int

    @property
    def rate(self) -> float | None:
        return self.positive / self.analysed if self.analysed else None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def studies_since(session: Session, since: datetime) -> int:
    return int(
        session.scalar(select(func.count(StudyRow.id)).where(StudyRow.first_received_at >= since))
        or 0
    )


def positive_rate_by_day(session: Session, since: datetime, now: datetime) -> list[DayRate]:
    """Per UTC day from `since` to `now`: studies received, analysed (labelled), positive."""
    rows = session.execute(
        select(StudyRow.first_received_at, ResultRow.label)
        .join(ResultRow, ResultRow.id == StudyRow.current_result_id, isouter=True)
        .where(StudyRow.first_received_at >= since)
    )
    studies: Counter[str] = Counter()
    analysed: Counter[str] = Counter()
    positive: Counter[str] = Counter()
    for received, label in rows:
        key = received.date().isoformat()
        studies[key] += 1
        analysed[key] += label is not None
        positive[key] += label == Label.COVID19
    days = []
    day = since.date()
    while day <= now.date():
        key = day.isoformat()
        days.append(DayRate(key, studies[key], analysed[key], positive[key]))
        day += timedelta(days=1)
    return days


def report_latencies(session: Session, since: datetime | None = None) -> list[float]:
    """Seconds from a study's first instance to each delivery of its report, sorted."""
    query = (
        select(StudyRow.first_received_at, DeliveryRow.delivered_at)
        .join(DeliveryRow, DeliveryRow.study_id == StudyRow.id)
        .join(SrRow, SrRow.id == DeliveryRow.sr_id)
        .where(DeliveryRow.state == DeliveryState.DELIVERED, SrRow.kind.in_(REPORT_KINDS))
    )
    if since is not None:
        query = query.where(DeliveryRow.delivered_at >= since)
    return sorted(
        max(0.0, (delivered - first).total_seconds())
        for first, delivered in session.execute(query)
        if delivered is not None
    )


def count_by(session: Session, column: Any) -> dict[str, int]:
    """Rows per value of one (indexed) column: study states, delivery states, outcomes."""
    rows = session.execute(select(column, func.count()).group_by(column))
    return {str(k): int(n) for k, n in rows}


def queue_depth(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count(JobRow.id)).where(
                JobRow.state.in_((JobState.QUEUED, JobState.RUNNING))
            )
        )
        or 0
    )


def _association_conditions(calling_aet: str | None, outcome: str | None) -> list[Any]:
    conditions = []
    if calling_aet:
        conditions.append(AssociationRow.calling_aet == calling_aet)
    if outcome:
        conditions.append(AssociationRow.outcome == outcome)
    return conditions


def count_associations(session: Session, *, calling_aet: str | None, outcome: str | None) -> int:
    conditions = _association_conditions(calling_aet, outcome)
    return int(session.scalar(select(func.count(AssociationRow.id)).where(*conditions)) or 0)


def list_associations(
    session: Session, *, calling_aet: str | None, outcome: str | None, offset: int, limit: int
) -> list[dict[str, Any]]:
    """A page of associations, newest first."""
    rows = session.scalars(
        select(AssociationRow)
        .where(*_association_conditions(calling_aet, outcome))
        .order_by(AssociationRow.started_at.desc(), AssociationRow.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [
        {
            "id": a.id,
            "calling_aet": a.calling_aet,
            "called_aet": a.called_aet,
            "peer": f"{a.peer_host}:{a.peer_port}",
            "started_at": iso(a.started_at),
            "ended_at": iso(a.ended_at),
            "outcome": a.outcome,
            "instances": a.instances,
            "failures": a.failures,
            "bytes": a.bytes,
            "detail": a.detail,
            "seconds": (a.ended_at - a.started_at).total_seconds() if a.ended_at else None,
        }
        for a in rows
    ]


def count_events(session: Session, kind: str | None) -> int:
    """Events of one kind (indexed), or all of them (the chain head's sequence number)."""
    if kind is None:
        return chain_head(session)[0]
    return int(
        session.scalar(select(func.count(AuditEventRow.id)).where(AuditEventRow.kind == kind)) or 0
    )


def list_recent_events(
    session: Session, *, kind: str | None, offset: int, limit: int
) -> list[dict[str, Any]]:
    """A page of audit events, newest first (the full log: `scpnode audit events`)."""
    query = select(AuditEventRow).order_by(AuditEventRow.seq.desc()).offset(offset).limit(limit)
    if kind:
        query = query.where(AuditEventRow.kind == kind)
    return [{**event_row(e), "hash": e.hash} for e in session.scalars(query)]


def chain_head(session: Session) -> tuple[int, str | None]:
    """Events in the chain (the head's sequence number) and the newest hash."""
    last = session.execute(
        select(AuditEventRow.seq, AuditEventRow.hash).order_by(AuditEventRow.seq.desc()).limit(1)
    ).first()
    return (int(last[0]), str(last[1])) if last else (0, None)


def last_verification(session: Session) -> dict[str, Any] | None:
    """The newest `chain_verified` event: when the chain was last checked, by whom, result."""
    event = session.scalar(
        select(AuditEventRow)
        .where(AuditEventRow.kind == AuditKind.CHAIN_VERIFIED)
        .order_by(AuditEventRow.seq.desc())
        .limit(1)
    )
    return None if event is None else {"ts": iso(event.ts), **json.loads(event.detail)}


def models_in_use(session: Session) -> list[dict[str, Any]]:
    """Every model that produced a result: name, version, weights hash, how often, when."""
    rows = session.execute(
        select(
            ResultRow.model_name,
            ResultRow.model_version,
            ResultRow.weights_sha256,
            func.count(),
            func.min(ResultRow.created_at),
            func.max(ResultRow.created_at),
        ).group_by(ResultRow.model_name, ResultRow.model_version, ResultRow.weights_sha256)
    )
    return [
        {
            "model": f"{name}@{version}",
            "weights_sha256": sha,
            "results": int(n),
            "first": iso(first),
            "last": iso(last),
        }
        for name, version, sha, n, first, last in rows
    ]
