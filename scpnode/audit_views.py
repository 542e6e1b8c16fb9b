"""Read models of the audit database for `scpnode audit` and the web console.

One query per kind of fact, grouped by study, so listing many studies stays a handful of
queries. The JSON shape is the contract of DESIGN §4. The study filters (`StudyFilter`) are
shared by `audit studies` and the console's Studies page, so both answer the same question
the same way; pages and exports select study IDs with indexed queries, then fill in the
facts of one page (or one export batch) at a time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from scpnode.db.models import (
    REPORT_KINDS,
    AuditEventRow,
    DeliveryAttemptRow,
    DeliveryRow,
    InstanceRow,
    ResultRow,
    SliceScoreRow,
    SrRow,
    StudyRow,
)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


LABEL_NONE = "none"  # filter value: studies without a label (not analysed, undetermined, open)
SORT_KEYS = ("received", "changed", "calling_aet", "status", "label", "probability")


@dataclass(frozen=True)
class StudyFilter:
    """What the Studies page and `audit studies` filter on; None/empty means "any".

    `since` is inclusive and `until` exclusive (see `parse_bound` for whole days); the calling
    AE is the one that sent the study's first instance (`calling_aet` in the JSON); `label`
    is a label or `LABEL_NONE`; the probability bounds are inclusive and leave out studies
    without a probability.
    """

    since: datetime | None = None
    until: datetime | None = None
    calling_aet: str | None = None
    statuses: tuple[str, ...] = ()
    label: str | None = None
    min_p: float | None = None
    max_p: float | None = None

    @property
    def needs_result(self) -> bool:
        return self.label is not None or self.min_p is not None or self.max_p is not None


def parse_bound(text: str, *, end: bool = False) -> datetime:
    """An ISO 8601 instant (UTC when it has no offset), or a date: its start, or with `end`
    the start of the next day, so `--until 2026-03-31` includes all of March 31st."""
    text = text.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        start = datetime.combine(day, time(), tzinfo=UTC)
        return start + timedelta(days=1) if end else start
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _filtered(query: Select[Any], f: StudyFilter) -> Select[Any]:
    if f.needs_result:
        query = query.join(ResultRow, ResultRow.id == StudyRow.current_result_id, isouter=True)
    conditions = []
    if f.since is not None:
        conditions.append(StudyRow.first_received_at >= f.since)
    if f.until is not None:
        conditions.append(StudyRow.first_received_at < f.until)
    if f.calling_aet:
        conditions.append(StudyRow.first_calling_aet == f.calling_aet)
    if f.statuses:
        conditions.append(StudyRow.state.in_(f.statuses))
    if f.label == LABEL_NONE:
        conditions.append(ResultRow.label.is_(None))
    elif f.label is not None:
        conditions.append(ResultRow.label == f.label)
    if f.min_p is not None:
        conditions.append(ResultRow.probability >= f.min_p)
    if f.max_p is not None:
        conditions.append(ResultRow.probability <= f.max_p)
    return query.where(*conditions)


def count_studies(session: Session, f: StudyFilter) -> int:
    return int(session.scalar(_filtered(select(func.count(StudyRow.id)), f)) or 0)


def select_study_ids(
    session: Session, f: StudyFilter, *, sort: str = "received", descending: bool = False,
    offset: int = 0, limit: int | None = None,
) -> list[int]:  # fmt: skip
    """IDs of the matching studies in display order (ties broken by ID, so pages are stable)."""
    query = _filtered(select(StudyRow.id), f)
    if sort in ("label", "probability") and not f.needs_result:
        query = query.join(ResultRow, ResultRow.id == StudyRow.current_result_id, isouter=True)
    column = {
        "received": StudyRow.first_received_at, "changed": StudyRow.state_changed_at,
        "calling_aet": StudyRow.first_calling_aet, "status": StudyRow.state,
        "label": ResultRow.label, "probability": ResultRow.probability,
    }[sort]  # fmt: skip
    order = (column.desc(), StudyRow.id.desc()) if descending else (column, StudyRow.id)
    query = query.order_by(*order).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def studies_by_id(session: Session, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The JSON rows of these studies, in the order given."""
    found = {s.id: s for s in session.scalars(select(StudyRow).where(StudyRow.id.in_(ids)))}
    return study_rows(session, [found[i] for i in ids if i in found])


def iter_studies(
    session: Session, f: StudyFilter, *, sort: str = "received", descending: bool = False,
    batch: int = 500,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Every matching study, a batch at a time (exports and the CLI on 100,000 studies)."""
    ids = select_study_ids(session, f, sort=sort, descending=descending)
    for start in range(0, len(ids), batch):
        yield from studies_by_id(session, ids[start : start + batch])


def list_studies(session: Session, study_uids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    query = select(StudyRow).order_by(StudyRow.first_received_at, StudyRow.id)
    if study_uids is not None:
        query = query.where(StudyRow.study_instance_uid.in_(study_uids))
    return study_rows(session, list(session.scalars(query)))


def study_rows(session: Session, studies: list[StudyRow]) -> list[dict[str, Any]]:
    """The DESIGN §4 row of each study: a handful of grouped queries, whatever the count."""
    ids = [s.id for s in studies]
    counts = _instance_counts(session, ids)
    aets = _calling_aets(session, ids)
    results = _current_results(session, studies)
    srs = _current_srs(session, results)
    deliveries = _deliveries(session, [sr.id for sr in srs.values()])
    rows = []
    for study in studies:
        result = results.get(study.id)
        sr = srs.get(study.id)
        rows.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "calling_aet": study.first_calling_aet,
                "calling_aets": aets.get(study.id, []),
                "received_instances": counts.get(study.id, 0),
                "status": study.state,
                "reason": study.reason,
                "label": result.label if result else None,
                "probability": result.probability if result else None,
                "model": f"{result.model_name}@{result.model_version}" if result else None,
                "sr_sop_instance_uid": sr.sop_instance_uid if sr else None,
                "deliveries": deliveries.get(sr.id, []) if sr else [],
                "first_received_at": iso(study.first_received_at),
                "last_received_at": iso(study.last_received_at),
                "status_changed_at": iso(study.state_changed_at),
            }
        )
    return rows


def _instance_counts(session: Session, ids: list[int]) -> dict[int, int]:
    if not ids:
        return {}
    rows = session.execute(
        select(InstanceRow.study_id, func.count(func.distinct(InstanceRow.sop_instance_uid)))
        .where(InstanceRow.study_id.in_(ids))
        .group_by(InstanceRow.study_id)
    )
    return {study_id: int(n) for study_id, n in rows}


def _calling_aets(session: Session, ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = defaultdict(list)
    if not ids:
        return found
    rows = session.execute(
        select(InstanceRow.study_id, InstanceRow.calling_aet, func.min(InstanceRow.id))
        .where(InstanceRow.study_id.in_(ids), InstanceRow.calling_aet != "")
        .group_by(InstanceRow.study_id, InstanceRow.calling_aet)
        .order_by(func.min(InstanceRow.id))
    )
    for study_id, aet, _ in rows:
        found[study_id].append(aet)
    return found


def _current_results(session: Session, studies: list[StudyRow]) -> dict[int, ResultRow]:
    ids = [s.current_result_id for s in studies if s.current_result_id]
    if not ids:
        return {}
    return {r.study_id: r for r in session.scalars(select(ResultRow).where(ResultRow.id.in_(ids)))}


def _current_srs(session: Session, results: dict[int, ResultRow]) -> dict[int, SrRow]:
    ids = [r.id for r in results.values()]
    if not ids:
        return {}
    return {
        sr.study_id: sr
        for sr in session.scalars(
            select(SrRow).where(SrRow.result_id.in_(ids), SrRow.kind.in_(REPORT_KINDS))
        )
    }


def _deliveries(session: Session, sr_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if not sr_ids:
        return found
    for d in session.scalars(
        select(DeliveryRow).where(DeliveryRow.sr_id.in_(sr_ids)).order_by(DeliveryRow.id)
    ):
        found[d.sr_id].append(
            {
                "destination": d.destination,
                "status": d.state,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "last_status": None if d.last_status is None else f"0x{d.last_status:04X}",
                "delivered_at": iso(d.delivered_at),
            }
        )
    return found


def show_study(session: Session, study_uid: str) -> dict[str, Any] | None:
    """One study with its series, results (with slice scores), SRs, deliveries and events."""
    study = session.scalar(select(StudyRow).where(StudyRow.study_instance_uid == study_uid))
    if study is None:
        return None
    summary = list_studies(session, [study_uid])[0]
    summary["series"] = _series(session, study.id)
    summary["results"] = [
        _result(session, r)
        for r in session.scalars(
            select(ResultRow).where(ResultRow.study_id == study.id).order_by(ResultRow.id)
        )
    ]
    summary["reports"] = [
        _sr(session, sr)
        for sr in session.scalars(
            select(SrRow).where(SrRow.study_id == study.id).order_by(SrRow.id)
        )
    ]
    summary["events"] = list_events(session, study_uid)
    return summary


def _series(session: Session, study_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(
            InstanceRow.series_instance_uid,
            InstanceRow.modality,
            InstanceRow.sop_class_uid,
            InstanceRow.series_description,
            InstanceRow.is_own,
            func.count(),
        )
        .where(InstanceRow.study_id == study_id)
        .group_by(
            InstanceRow.series_instance_uid,
            InstanceRow.modality,
            InstanceRow.sop_class_uid,
            InstanceRow.series_description,
            InstanceRow.is_own,
        )
        .order_by(func.min(InstanceRow.id))
    )
    return [
        {
            "series_instance_uid": uid,
            "modality": modality,
            "sop_class_uid": cls,
            "description": desc,
            "own_object": bool(own),
            "instances": int(n),
        }
        for uid, modality, cls, desc, own, n in rows
    ]


def _result(session: Session, r: ResultRow) -> dict[str, Any]:
    slices = session.execute(
        select(
            SliceScoreRow.slice_index,
            SliceScoreRow.z,
            SliceScoreRow.probability,
            SliceScoreRow.sop_instance_uid,
        )
        .where(SliceScoreRow.result_id == r.id)
        .order_by(SliceScoreRow.slice_index)
    )
    return {
        "created_at": iso(r.created_at),
        "outcome": r.outcome,
        "reason": r.reason,
        "series_instance_uid": r.series_instance_uid,
        "selection_reason": r.selection_reason,
        "model": f"{r.model_name}@{r.model_version}",
        "weights_sha256": r.weights_sha256,
        "label": r.label,
        "finding": r.finding,
        "probability": r.probability,
        "threshold": r.threshold,
        "threshold_source": r.threshold_source,
        "aggregation": r.aggregation,
        "n_slices": r.n_slices,
        "device": r.device,
        "inference_s": r.inference_s,
        "slices": [
            {"index": i, "z": z, "probability": p, "sop_instance_uid": uid}
            for i, z, p, uid in slices
        ],
    }


def _sr(session: Session, sr: SrRow) -> dict[str, Any]:
    deliveries = []
    for d in session.scalars(select(DeliveryRow).where(DeliveryRow.sr_id == sr.id)):
        attempts = session.scalars(
            select(DeliveryAttemptRow)
            .where(DeliveryAttemptRow.delivery_id == d.id)
            .order_by(DeliveryAttemptRow.id)
        )
        deliveries.append(
            {
                "id": d.id,
                "destination": d.destination,
                "status": d.state,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "attempt_log": [
                    {
                        "started_at": iso(a.started_at),
                        "outcome": a.outcome,
                        "sop_class_uid": a.sop_class_uid,
                        "dicom_status": None
                        if a.dicom_status is None
                        else f"0x{a.dicom_status:04X}",
                        "error": a.error,
                    }
                    for a in attempts
                ],
            }
        )
    return {
        "sop_instance_uid": sr.sop_instance_uid,
        "series_instance_uid": sr.series_instance_uid,
        "kind": sr.kind,
        "path": sr.path,
        "sha256": sr.sha256,
        "created_at": iso(sr.created_at),
        "deliveries": deliveries,
    }


def list_events(session: Session, study_uid: str | None = None) -> list[dict[str, Any]]:
    """Events oldest first; for one study, also the events of the associations that sent it."""
    query = select(AuditEventRow).order_by(AuditEventRow.seq)
    if study_uid is not None:
        associations = (
            select(InstanceRow.association_id)
            .join(StudyRow, StudyRow.id == InstanceRow.study_id)
            .where(
                StudyRow.study_instance_uid == study_uid, InstanceRow.association_id.is_not(None)
            )
            .distinct()
        )
        query = query.where(
            or_(
                AuditEventRow.study_instance_uid == study_uid,
                and_(
                    AuditEventRow.study_instance_uid.is_(None),
                    AuditEventRow.association_id.in_(associations),
                ),
            )
        )
    return [event_row(e) for e in session.scalars(query)]


def event_row(e: AuditEventRow) -> dict[str, Any]:
    """One audit event as the CLI's JSON and the console show it."""
    return {
        "seq": e.seq,
        "ts": iso(e.ts),
        "kind": e.kind,
        "study_instance_uid": e.study_instance_uid,
        "association_id": e.association_id,
        "detail": json.loads(e.detail),
    }
