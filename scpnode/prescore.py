"""Score a study's slices while it is still arriving, so that completion leaves only the tail.

Inference used to start when the study completed: a 300-slice study then paid ~2 s of CPU
scoring after its last slice. Now a worker with no job in hand takes a short lease on one
`receiving` study (workers sharing the database never score the same study at once), scores
the not-yet-scored instances of the series the scope rules would analyse so far, and stores
each score keyed by the instance's bytes and the served weights. The study's job then reuses
every score that is still valid and scores only the rest (`load_prescores`); the scores are
deleted when the job ends (`forget_prescores`). A score is only a cache: losing one costs
time, never correctness, because the job re-scores whatever is missing or stale.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Select, delete, exists, or_, select, update
from sqlalchemy.orm import Session

from scpnode import scope
from scpnode.db import Database
from scpnode.db.models import InstanceRow, PrescoreRow, StudyRow
from scpnode.db.session import rowcount, writer_lock
from scpnode.domain import StudyState
from scpnode.infer.decoders import DecoderPool, SliceMeasure
from scpnode.infer.dicom_slices import SliceReadError, known_slice
from scpnode.infer.engine import LoadedModel
from scpnode.infer.stream import PlacedScore, ScoredSlice, score_slices

log = logging.getLogger(__name__)
#: how long the scope decision (which series of an arriving study to score) is reused. The
#: rules read every instance row (~30 ms for 600 instances, each step); a decision a second
#: old nearly always still holds, and the job decides again at completion, using only the
#: scores of the series it picks.
DECISION_REUSE_S = 1.0
# a job for the study may still be waiting: scores stored now are still used
_STORABLE = (StudyState.RECEIVING, StudyState.QUEUED)


def study_instances(db: Database, study_id: int) -> list[InstanceRow]:
    """The study's received instances still on disk (a purged study keeps only its rows)."""
    with db.session() as session:
        return list(session.scalars(_on_disk(session, study_id).order_by(InstanceRow.id)))


def _on_disk(session: Session, study_id: int) -> Select[InstanceRow]:
    study = session.get(StudyRow, study_id)
    query = select(InstanceRow).where(
        InstanceRow.study_id == study_id, InstanceRow.is_own.is_(False)
    )
    if study is not None and study.purged_at is not None:
        query = query.where(InstanceRow.received_at > study.purged_at)
    return query


def load_prescores(
    db: Database, rows: Sequence[InstanceRow], weights_sha256: str, *, need_measure: bool
) -> dict[int, PlacedScore]:
    """instance id → its stored score, for the rows whose bytes and weights still match."""
    by_id = {r.id: r for r in rows}
    if not by_id:
        return {}
    with db.session() as session:
        stored = session.scalars(
            select(PrescoreRow).where(
                PrescoreRow.instance_id.in_(list(by_id)),
                PrescoreRow.weights_sha256 == weights_sha256,
            )
        ).all()
    found = {}
    for p in stored:
        row = by_id[p.instance_id]
        if p.sha256 != row.sha256 or (need_measure and p.measure is None):
            continue  # the instance was replaced, or the lung gate needs what was not measured
        z = p.instance_number if p.position is None else p.position
        scored = ScoredSlice(row.sop_instance_uid, row.sop_class_uid, Path(row.path), z,
                             p.probability, p.measure)  # fmt: skip
        found[row.id] = PlacedScore(scored, p.position, p.instance_number)
    return found


def forget_prescores(db: Database, study_id: int) -> None:
    """The job used them (or will score again): drop the study's scores and its lease."""
    with db.session() as session:
        session.execute(delete(PrescoreRow).where(PrescoreRow.study_id == study_id))
        session.execute(
            update(StudyRow)
            .where(StudyRow.id == study_id, StudyRow.prescore_owner.is_not(None))
            .values(prescore_owner=None, prescore_until=None)
        )


@dataclass(frozen=True)
class _Task:
    study_id: int
    rows: list[InstanceRow]


class Prescorer:
    """One worker's background scoring: `step()` scores at most one batch, so a queued job
    waits for one batch at most."""

    def __init__(
        self,
        db: Database,
        model: LoadedModel,
        rules: scope.ScopeRules,
        *,
        owner: str,
        clock: Callable[[], datetime],
        batch_size: int,
        measure: SliceMeasure | None,
        lease_s: float = 10.0,
        threads: int | None = None,
        decoders: DecoderPool | None = None,
    ) -> None:
        self.db, self.model, self.owner, self.clock = db, model, owner, clock
        # a series still arriving may be shorter than the minimum it must reach at completion
        self.rules = dataclasses.replace(rules, min_slices=1)
        self.batch_size, self.measure, self.lease_s = batch_size, measure, lease_s
        # CPU: score ahead on fewer threads than a job, so the SCP keeps a core for the scanner
        self.threads = threads
        self.decoders = decoders
        self.watching = False  # some study is still arriving: the worker polls faster
        self._unreadable: set[tuple[int, str]] = set()  # (instance id, sha256): left to the job
        self._caught_up: dict[int, datetime] = {}  # study id → last_received_at when all scored
        self._decided: dict[int, tuple[datetime, str | None]] = {}  # study id → (when, series)

    def step(self) -> bool:
        """Score one batch of waiting slices, from one study or several (a batch is filled
        across studies arriving at once); False when there is nothing to score."""
        tasks = self._next_tasks()
        if not tasks:
            return False
        started = time.perf_counter()
        rows = [r for task in tasks for r in task.rows]
        try:
            with _threads(self.threads):
                placed = score_slices(self.model, [known_slice(r) for r in rows],
                                      batch_size=self.batch_size, measure=self.measure,
                                      decoders=self.decoders)  # fmt: skip
        except SliceReadError as exc:
            bad = [r for r in rows if Path(r.path) == exc.path] or rows[:1]
            self._unreadable.update((r.id, r.sha256) for r in bad)
            log.info("slice not scored ahead; its job will report it",
                     extra={"study_id": bad[0].study_id, "reason": exc.reason})  # fmt: skip
            return True
        except Exception:
            # not a bad file but our failure on these slices: left to the job (which fails
            # with a reason, or reports them), rather than retried at every poll
            self._unreadable.update((r.id, r.sha256) for r in rows)
            log.exception("scoring ahead failed; the job will score these slices",
                          extra={"studies": len(tasks), "slices": len(rows)})  # fmt: skip
            return True
        by_path = {p.slice.path: p for p in placed}
        stored = sum(self._store(t, [by_path[Path(r.path)] for r in t.rows]) for t in tasks)
        seconds = round(time.perf_counter() - started, 3)
        log.debug("scored ahead", extra={"studies": len(tasks), "slices": stored,
                                         "seconds": seconds})  # fmt: skip
        return True

    def _next_tasks(self) -> list[_Task]:
        now = self.clock()
        free = or_(StudyRow.prescore_owner.is_(None), StudyRow.prescore_owner == self.owner,
                   StudyRow.prescore_until < now)  # fmt: skip
        with self.db.session() as session:
            receiving = session.execute(
                select(StudyRow.id, StudyRow.last_received_at, free)
                .where(StudyRow.state == StudyState.RECEIVING)
                .order_by(StudyRow.first_received_at)
            ).all()
        self.watching = bool(receiving)
        self._caught_up = {r.id: self._caught_up[r.id] for r in receiving
                           if r.id in self._caught_up}  # fmt: skip
        self._decided = {r.id: self._decided[r.id] for r in receiving if r.id in self._decided}
        tasks, room = [], self.batch_size
        for study_id, last_received, is_free in receiving:
            if not is_free or self._caught_up.get(study_id) == last_received:
                continue  # another worker's, or nothing new since we scored all of it
            todo = self._unscored(study_id, room, now)
            if not todo:
                self._caught_up[study_id] = last_received
            elif self._take_lease(study_id, now):
                tasks.append(_Task(study_id, todo[:room]))
                room -= len(tasks[-1].rows)
                if room == 0:
                    break
        return tasks

    def _unscored(self, study_id: int, room: int, now: datetime) -> list[InstanceRow]:
        """Up to `room` instances of the chosen series with no usable score yet.

        Nothing left under a reused decision is checked against a fresh one before the study
        counts as caught up: a better series may have arrived since.
        """
        for fresh in (False, True):
            series_uid, decided_now = self._series(study_id, now, fresh=fresh)
            rows = [] if series_uid is None else self._unscored_in(study_id, series_uid, room)
            if rows or decided_now:
                return rows
        return []

    def _unscored_in(self, study_id: int, series_uid: str, room: int) -> list[InstanceRow]:
        scored = select(PrescoreRow.id).where(
            PrescoreRow.instance_id == InstanceRow.id,
            PrescoreRow.sha256 == InstanceRow.sha256,  # not the score of a replaced version
            PrescoreRow.weights_sha256 == self.model.identity.weights_sha256,
        )
        if self.measure is not None:  # the lung gate needs what was not measured
            scored = scored.where(PrescoreRow.measure.is_not(None))
        with self.db.session() as session:
            rows = session.scalars(
                _on_disk(session, study_id)
                .where(InstanceRow.series_instance_uid == series_uid, ~exists(scored))
                .order_by(InstanceRow.id)
                .limit(room + len(self._unreadable))
            ).all()
        return [r for r in rows if (r.id, r.sha256) not in self._unreadable][:room]

    def _series(self, study_id: int, now: datetime, *, fresh: bool) -> tuple[str | None, bool]:
        """(the series the scope rules pick on what has arrived, or None; whether decided
        now). A decision younger than DECISION_REUSE_S is reused unless `fresh`."""
        when, series_uid = self._decided.get(study_id, (None, None))
        reuse = timedelta(seconds=DECISION_REUSE_S)
        if not fresh and when is not None and timedelta(0) <= now - when < reuse:
            return series_uid, False
        decision = scope.decide(study_instances(self.db, study_id), self.rules)
        analyse = decision.verdict == scope.Verdict.ANALYSE
        series_uid = decision.series_instance_uid if analyse else None
        self._decided[study_id] = (now, series_uid)
        return series_uid, True

    def _take_lease(self, study_id: int, now: datetime) -> bool:
        with self.db.session() as session:
            return rowcount(session.execute(
                update(StudyRow)
                .where(StudyRow.id == study_id, StudyRow.state == StudyState.RECEIVING,
                       or_(StudyRow.prescore_owner.is_(None),
                           StudyRow.prescore_owner == self.owner,
                           StudyRow.prescore_until < now))
                .values(prescore_owner=self.owner,
                        prescore_until=now + timedelta(seconds=self.lease_s))
            )) == 1  # fmt: skip

    def _store(self, task: _Task, placed: Sequence[PlacedScore]) -> int:
        """Keep the scores if the study can still use them (no job has started on it)."""
        rows = {Path(r.path): r for r in task.rows}
        with self.db.session() as session:
            writer_lock(session)
            study = session.get(StudyRow, task.study_id)
            if study is None or study.state not in _STORABLE:
                return 0
            if study.prescore_owner not in (None, self.owner):
                return 0  # our lease ran out and another worker took the study over
            return _insert(session, task.study_id, rows, placed,
                           self.model.identity.weights_sha256, self.clock())  # fmt: skip


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `count` for the block (None: unchanged)."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _insert(session: Session, study_id: int, rows: dict[Path, InstanceRow],
            placed: Sequence[PlacedScore], weights_sha256: str, now: datetime) -> int:  # fmt: skip
    ids = [rows[p.slice.path].id for p in placed]
    session.execute(
        delete(PrescoreRow).where(
            PrescoreRow.instance_id.in_(ids), PrescoreRow.weights_sha256 == weights_sha256
        )
    )  # stale scores of replaced instances
    session.add_all(
        PrescoreRow(
            instance_id=rows[p.slice.path].id, study_id=study_id,
            sha256=rows[p.slice.path].sha256, weights_sha256=weights_sha256,
            probability=p.slice.probability, measure=p.slice.measure, position=p.position,
            instance_number=p.instance_number, created_at=now,
        )
        for p in placed
    )  # fmt: skip
    return len(placed)
