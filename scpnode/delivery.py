"""Deliveries: send each SR to each destination until it lands, fails for good, or expires.

A delivery row is claimed with a conditional UPDATE (a short claim window), so several
delivery loops never send the same row at once. The study's status after reporting is
derived from the deliveries of its current SR (DESIGN §4).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from scpnode import audit
from scpnode.breaker import Change, CircuitBreaker
from scpnode.db import Database
from scpnode.db.models import DeliveryAttemptRow, DeliveryRow, ResultRow, SrRow, StudyRow
from scpnode.db.session import rowcount
from scpnode.domain import AuditKind, DeliveryState, StudyState
from scpnode.send import Outcome, Peer, SendResult, store_file

log = logging.getLogger(__name__)
SETTLED_STATES = (StudyState.REPORTED, StudyState.DELIVERED, StudyState.FAILED, StudyState.EXPIRED)
Sender = Callable[[Path, Peer], SendResult]


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 5.0
    max_s: float = 300.0
    jitter: float = 0.2

    def delay(self, attempts: int, rng: random.Random) -> timedelta:
        """Exponential backoff with jitter: 5, 10, 20 ... seconds, capped, ±20 %."""
        base = min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1))
        return timedelta(seconds=base * (1 + rng.uniform(-self.jitter, self.jitter)))


def derive_state(states: list[str]) -> StudyState:
    """delivered if all landed; reported while any is pending; then failed, then expired."""
    if not states or all(s == DeliveryState.DELIVERED for s in states):
        return StudyState.DELIVERED if states else StudyState.REPORTED
    if any(s == DeliveryState.PENDING for s in states):
        return StudyState.REPORTED
    if any(s == DeliveryState.FAILED for s in states):
        return StudyState.FAILED
    return StudyState.EXPIRED


def refresh_study_state(session: Session, study_id: int) -> None:
    """Re-derive a reported study's status from the deliveries of its current result's SR."""
    study = session.get(StudyRow, study_id)
    if study is None or study.state not in SETTLED_STATES or study.current_result_id is None:
        return
    result = session.get(ResultRow, study.current_result_id)
    if result is None or result.outcome != "analysed":
        return
    states = list(
        session.scalars(
            select(DeliveryRow.state)
            .join(SrRow, SrRow.id == DeliveryRow.sr_id)
            .where(SrRow.result_id == result.id, SrRow.kind == "result")
        )
    )
    new_state = derive_state(states)
    if new_state != study.state:
        study.state = new_state
        study.state_changed_at = max(study.state_changed_at, study.last_received_at)


class Deliverer:
    """Sends due deliveries; one call of `run_once` handles everything due now."""

    def __init__(
        self,
        db: Database,
        calling_aet: str,
        policy: RetryPolicy,
        clock: Callable[[], datetime],
        sender: Sender | None = None,
        claim_s: float = 120.0,
        seed: int | None = None,
        breaker: CircuitBreaker | None = None,
        owner: str = "",
    ) -> None:
        self.db = db
        self.calling_aet = calling_aet
        self.policy = policy
        self.clock = clock
        self.sender = sender or (lambda path, peer: store_file(path, peer, calling_aet))
        self.claim_s = claim_s
        self.rng = random.Random(seed)
        self.breaker = breaker or CircuitBreaker()
        self.owner = owner

    def run_once(self) -> int:
        handled = 0
        while (claimed := self._claim_next()) is not None:
            self._attempt(*claimed)
            handled += 1
        return handled

    def _due(self, now: datetime) -> ColumnElement[bool]:
        return (
            (DeliveryRow.state == DeliveryState.PENDING)
            & (DeliveryRow.next_attempt_at <= now)
            & or_(DeliveryRow.claimed_until.is_(None), DeliveryRow.claimed_until < now)
        )

    def _claim_next(self) -> tuple[int, Path, Peer, str] | None:
        now = self.clock()
        due = self._due(now)
        blocked = self.breaker.blocked(now)  # open circuits: their deliveries wait
        if blocked:
            due = due & DeliveryRow.destination.not_in(blocked)
        with self.db.session() as session:
            for row in session.scalars(
                select(DeliveryRow).where(due).order_by(DeliveryRow.next_attempt_at).limit(5)
            ):
                taken = rowcount(
                    session.execute(
                        update(DeliveryRow)
                        .where(DeliveryRow.id == row.id, due)
                        .values(claimed_until=now + timedelta(seconds=self.claim_s),
                                claimed_by=self.owner)
                    )
                )  # fmt: skip
                if taken != 1:
                    continue
                if now >= row.expires_at:
                    self._expire(session, row, now)
                    continue
                sr = session.get(SrRow, row.sr_id)
                assert sr is not None
                self.breaker.attempting(row.destination, now)
                return (
                    row.id,
                    Path(sr.path),
                    Peer(row.ae_title, row.host, row.port),
                    row.destination,
                )
        return None

    def _expire(self, session: Session, row: DeliveryRow, now: datetime) -> None:
        row.state, row.claimed_until = DeliveryState.EXPIRED, None
        row.last_error = "not delivered within delivery.max_age_h"
        audit.append(
            session,
            AuditKind.DELIVERY_EXPIRED,
            study_uid=_study_uid(session, row),
            now=now,
            destination=row.destination,
            attempts=row.attempts,
        )
        refresh_study_state(session, row.study_id)

    def _attempt(self, delivery_id: int, path: Path, peer: Peer, destination: str) -> None:
        started = self.clock()
        try:
            result = self.sender(path, peer)
        except Exception as exc:  # a sender bug must not kill the loop
            log.exception("delivery attempt crashed")
            result = SendResult(Outcome.TRANSIENT, None, f"internal error: {exc}")
        change = self.breaker.record(destination, result.outcome == Outcome.TRANSIENT,
                                     self.clock())  # fmt: skip
        self._record(delivery_id, result, started, destination, change)

    def _record(self, delivery_id: int, result: SendResult, started: datetime,
                destination: str, change: Change | None) -> None:  # fmt: skip
        now = self.clock()
        with self.db.session() as session:
            if change is not None:
                self._audit_circuit(session, destination, change, result, now)
            row = session.get(DeliveryRow, delivery_id)
            assert row is not None
            row.attempts += 1
            row.last_status, row.last_error, row.claimed_until = result.status, None, None
            row.claimed_by = None
            session.add(
                DeliveryAttemptRow(
                    delivery_id=row.id,
                    started_at=started,
                    ended_at=now,
                    outcome=result.outcome,
                    dicom_status=result.status,
                    sop_class_uid=result.sop_class_uid,
                    error=None if result.outcome == Outcome.DELIVERED else result.detail,
                )
            )
            self._apply_outcome(session, row, result, now)
            refresh_study_state(session, row.study_id)

    def _audit_circuit(self, session: Session, destination: str, change: Change,
                       result: SendResult, now: datetime) -> None:  # fmt: skip
        kind = AuditKind.CIRCUIT_OPENED if change == Change.OPENED else AuditKind.CIRCUIT_CLOSED
        log.warning("circuit %s", change, extra={"destination": destination})
        audit.append(session, kind, now=now, destination=destination, last=result.detail,
                     cooldown_s=self.breaker.cooldown_s)  # fmt: skip

    def _apply_outcome(
        self, session: Session, row: DeliveryRow, result: SendResult, now: datetime
    ) -> None:
        study_uid = _study_uid(session, row)
        detail: dict[str, Any] = {
            "destination": row.destination,
            "attempt": row.attempts,
            "status": None if result.status is None else f"0x{result.status:04X}",
            "detail": result.detail,
        }
        if result.outcome == Outcome.DELIVERED:
            row.state, row.delivered_at = DeliveryState.DELIVERED, now
            audit.append(session, AuditKind.DELIVERED, study_uid=study_uid, now=now, **detail)
        elif result.outcome == Outcome.PERMANENT:
            row.state, row.last_error = DeliveryState.FAILED, result.detail
            audit.append(session, AuditKind.DELIVERY_FAILED, study_uid=study_uid, now=now, **detail)
        else:
            row.last_error = result.detail
            row.next_attempt_at = now + self.policy.delay(row.attempts, self.rng)
            audit.append(
                session,
                AuditKind.DELIVERY_ATTEMPT,
                study_uid=study_uid,
                now=now,
                retry_at=row.next_attempt_at.isoformat(),
                **detail,
            )


def _study_uid(session: Session, row: DeliveryRow) -> str | None:
    return session.scalar(select(StudyRow.study_instance_uid).where(StudyRow.id == row.study_id))


def requeue(session: Session, ids: list[int] | None, now: datetime, max_age_h: float,
            actor: str) -> list[int]:  # fmt: skip
    """Put failed (or, by ID, expired) deliveries back in the queue: the admin's retry.

    `ids` None means every failed delivery. A fresh `max_age_h` starts now; the attempt log
    and the last error stay, so the audit still shows what happened before.
    """
    query = select(DeliveryRow)
    if ids is None:
        query = query.where(DeliveryRow.state == DeliveryState.FAILED)
    else:
        query = query.where(
            DeliveryRow.id.in_(ids),
            DeliveryRow.state.in_((DeliveryState.FAILED, DeliveryState.EXPIRED)),
        )
    done = []
    for row in session.scalars(query.order_by(DeliveryRow.id)):
        previous = row.state
        row.state, row.next_attempt_at = DeliveryState.PENDING, now
        row.expires_at = now + timedelta(hours=max_age_h)
        row.claimed_until, row.claimed_by = None, None
        audit.append(session, AuditKind.DELIVERY_REQUEUED, study_uid=_study_uid(session, row),
                     now=now, delivery_id=row.id, destination=row.destination,
                     previous_state=previous, actor=actor)  # fmt: skip
        refresh_study_state(session, row.study_id)
        done.append(row.id)
    return done


def list_deliveries(session: Session, state: str | None = None, *, newest_first: bool = False,
                    offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Deliveries with their study and object; `limit`/`offset` page them (the web console)."""
    query = select(DeliveryRow, StudyRow.study_instance_uid, SrRow.sop_instance_uid, SrRow.kind)
    query = query.join(StudyRow, StudyRow.id == DeliveryRow.study_id)
    order = DeliveryRow.id.desc() if newest_first else DeliveryRow.id
    query = query.join(SrRow, SrRow.id == DeliveryRow.sr_id).order_by(order).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    if state is not None:
        query = query.where(DeliveryRow.state == state)
    return [
        {"id": d.id, "study_instance_uid": study, "sop_instance_uid": sop, "kind": kind,
         "destination": d.destination, "status": d.state, "attempts": d.attempts,
         "last_status": None if d.last_status is None else f"0x{d.last_status:04X}",
         "last_error": d.last_error, "next_attempt_at": d.next_attempt_at.isoformat(),
         "expires_at": d.expires_at.isoformat()}
        for d, study, sop, kind in session.execute(query)
    ]  # fmt: skip
