"""Append-only, hash-chained audit events: the admin's record of what happened and why.

Every event is written in the caller's transaction, so an event exists exactly when the change
it describes does. Appends are serialised across processes and nodes: on SQLite by its single
write lock, on PostgreSQL by the writer advisory lock (`pg_advisory_xact_lock`, taken before the
head row is read), so the chain never forks and `seq` order is commit order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from scpnode.clock import utcnow
from scpnode.db.models import AuditEventRow, ChainHeadRow
from scpnode.db.session import writer_lock
from scpnode.domain import AuditKind

GENESIS = "0" * 64


def append(
    session: Session,
    kind: AuditKind,
    /,
    *,
    study_uid: str | None = None,
    association_id: int | None = None,
    now: datetime | None = None,
    **detail: Any,
) -> AuditEventRow:
    """Add one event to the chain (flushed, committed with the caller's transaction)."""
    seq, prev = _advance_head(session)
    row = AuditEventRow(
        seq=seq,
        ts=(now or utcnow()).astimezone(UTC),
        kind=str(kind),
        study_instance_uid=study_uid,
        association_id=association_id,
        detail=json.dumps(detail, sort_keys=True, default=str),
        prev_hash=prev,
    )
    row.hash = event_hash(row)
    session.add(row)
    session.execute(update(ChainHeadRow).where(ChainHeadRow.id == 1).values(head_hash=row.hash))
    return row


def _advance_head(session: Session) -> tuple[int, str]:
    writer_lock(session)  # also covers the very first append, when no head row exists yet
    result = session.execute(
        update(ChainHeadRow)
        .where(ChainHeadRow.id == 1)
        .values(seq=ChainHeadRow.seq + 1)
        .returning(ChainHeadRow.seq, ChainHeadRow.head_hash)
    ).first()
    if result is None:
        session.add(ChainHeadRow(id=1, seq=1, head_hash=GENESIS))
        session.flush()
        return 1, GENESIS
    return int(result[0]), str(result[1])


def event_hash(row: AuditEventRow) -> str:
    payload = json.dumps(
        [
            row.seq,
            row.ts.isoformat(),
            row.kind,
            row.study_instance_uid,
            row.association_id,
            row.detail,
            row.prev_hash,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    events: int
    first_broken_seq: int | None = None
    problem: str | None = None


def verify_chain(session: Session, batch: int = 5000) -> ChainCheck:
    """Recompute every hash in order; report the first event that does not fit."""
    prev, expected_seq, count, last_seq = GENESIS, 1, 0, 0
    while True:
        rows = session.scalars(  # chain order is seq (ids may interleave on PostgreSQL)
            select(AuditEventRow)
            .where(AuditEventRow.seq > last_seq)
            .order_by(AuditEventRow.seq)
            .limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            problem = _check_row(row, prev, expected_seq)
            if problem:
                return ChainCheck(False, count, row.seq, problem)
            prev, expected_seq, count, last_seq = row.hash, row.seq + 1, count + 1, row.seq
    head = session.get(ChainHeadRow, 1)
    if head is not None and (head.head_hash != prev or head.seq != expected_seq - 1):
        return ChainCheck(False, count, expected_seq, "events after the last one were removed")
    return ChainCheck(True, count)


def _check_row(row: AuditEventRow, prev: str, expected_seq: int) -> str | None:
    if row.seq != expected_seq:
        return f"sequence gap: expected {expected_seq}, found {row.seq}"
    if row.prev_hash != prev:
        return "previous-hash link does not match"
    if event_hash(row) != row.hash:
        return "content does not match its hash"
    return None
