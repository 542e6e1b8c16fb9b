"""One study job, end to end: scope → select → infer → aggregate → report → outbox.

The SR is built once and written to the outbox before the database says it exists; its UIDs
are derived from the input, so a job repeated after a crash produces the same SOP Instance UID
and a PACS never shows two reports for one input.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from model_zoo.preprocess import lung_fraction
from scpnode import audit, report, scope, uids
from scpnode.aggregate import aggregate
from scpnode.config import Settings
from scpnode.db import Database
from scpnode.db.models import (
    InstanceRow,
    ResultRow,
    SliceScoreRow,
    StudyRow,
)
from scpnode.delivery import refresh_study_state
from scpnode.domain import (
    AuditKind,
    JobState,
    ModelIdentity,
    NodeIdentity,
    SliceScore,
    StudyResult,
    StudyState,
)
from scpnode.extras import build_extras
from scpnode.infer.decoders import DecoderPool
from scpnode.infer.dicom_slices import SliceReadError, known_slice, read_slice
from scpnode.infer.engine import LoadedModel
from scpnode.infer.stream import ScoredSlice, in_anatomical_order, score_slices
from scpnode.outbox import next_instance_number, previous_report, register_sr
from scpnode.prescore import load_prescores, study_instances
from scpnode.queue import ClaimedJob, finish_job, settle_study
from scpnode.study_rule import StudyRule, study_rule

log = logging.getLogger(__name__)
SR_SERIES_NUMBER = 9901
NOT_ANALYSED_EVIDENCE = 5


@dataclass(frozen=True)
class PipelineContext:
    """Everything a job needs, built once per worker process."""

    db: Database
    settings: Settings
    model: LoadedModel
    node: NodeIdentity
    rules: scope.ScopeRules
    clock: Callable[[], datetime]
    decoders: DecoderPool | None = None  # `model.decode_processes` > 0
    batch_size: int = 16  # `model.batch_size` resolved for the model's device

    @property
    def rule(self) -> StudyRule:
        return study_rule(self.settings.model, self.model.card)

    @property
    def threshold(self) -> tuple[float, str]:
        rule = self.rule
        return rule.threshold, rule.threshold_source


@dataclass(frozen=True)
class _Analysis:
    result: StudyResult
    scores: list[SliceScore]
    series_uid: str
    selection: str
    fingerprint: str
    seconds: float
    heat: dict[str, np.ndarray]  # Grad-CAM per key slice, when `[report] heatmaps`
    prescored: int = 0  # slices scored while the study was still arriving


def process_job(ctx: PipelineContext, job: ClaimedJob) -> None:
    """Run one claimed job; every outcome ends in a study state and an audit event."""
    rows = study_instances(ctx.db, job.study_id)
    decision = scope.decide(rows, ctx.rules)
    if decision.verdict == scope.Verdict.IGNORE:
        _finish_ignored(ctx, job, decision.reason)
        return
    if decision.verdict == scope.Verdict.NOT_ANALYSED:
        ct_rows = [r for r in rows if r.modality == "CT" or r.sop_class_uid in scope.CT_CLASSES]
        _finish_not_analysed(ctx, job, decision.reason, ct_rows)
        return
    selected = [r for r in rows if r.series_instance_uid == decision.series_instance_uid]
    fingerprint = input_fingerprint(selected)
    if _unchanged(ctx, job, fingerprint):
        return
    with ctx.db.session() as session:
        audit.append(
            session,
            AuditKind.SERIES_SELECTED,
            study_uid=job.study_uid,
            now=ctx.clock(),
            series_instance_uid=decision.series_instance_uid,
            reason=decision.reason,
        )
    try:
        analysis = _analyse(ctx, selected, decision, fingerprint)
    except SliceReadError as exc:
        _finish_not_analysed(ctx, job, f"undecodable pixel data: {exc}", selected)
        return
    _finish_analysed(ctx, job, analysis, selected)


def input_fingerprint(rows: Sequence[InstanceRow]) -> str:
    """Same analysed instances with the same bytes → same fingerprint (and SR UID)."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.sop_instance_uid):
        digest.update(f"{row.sop_instance_uid}:{row.sha256}\n".encode())
    return digest.hexdigest()


def _unchanged(ctx: PipelineContext, job: ClaimedJob, fingerprint: str) -> bool:
    """Reprocess only when the analysed series changed or gained instances (DESIGN §7)."""
    with ctx.db.session() as session:
        study = session.get(StudyRow, job.study_id)
        if study is None or study.analysed_fingerprint != fingerprint:
            return False
        now = ctx.clock()
        audit.append(
            session,
            AuditKind.STUDY_UNCHANGED,
            study_uid=job.study_uid,
            now=now,
            reason="analysed input unchanged; not reprocessed",
        )
        current = (
            session.get(ResultRow, study.current_result_id) if study.current_result_id else None
        )
        not_analysed = current is not None and current.outcome == "not_analysed"
        state = StudyState.NOT_ANALYSED if not_analysed else StudyState.REPORTED
        settle_study(session, job.study_id, state, now, current.reason if current else None)
        refresh_study_state(session, job.study_id)
        finish_job(session, job.job_id, JobState.DONE, now, "input unchanged")
    return True


def _analyse(
    ctx: PipelineContext,
    selected: Sequence[InstanceRow],
    decision: scope.Decision,
    fingerprint: str,
) -> _Analysis:
    started = time.perf_counter()
    rule = ctx.rule
    # slices scored while the study arrived are reused; the rest are scored batch by batch,
    # decoded ahead of the model: never the whole series in memory
    ready = load_prescores(ctx.db, selected, ctx.model.identity.weights_sha256,
                           need_measure=rule.lung_gate)  # fmt: skip
    rest = [known_slice(r) for r in selected if r.id not in ready]
    slices = in_anatomical_order([
        *ready.values(),
        *score_slices(ctx.model, rest, batch_size=ctx.batch_size,
                      measure=lung_fraction if rule.lung_gate else None,
                      decoders=ctx.decoders),
    ])  # fmt: skip
    scores = [
        SliceScore(s.sop_instance_uid, s.sop_class_uid, i, s.z, s.probability)
        for i, s in enumerate(slices)
    ]
    votes = None
    if rule.lung_gate:
        votes = [(s.measure or 0.0) >= rule.lung_min_fraction for s in slices]
    result = aggregate(
        scores,
        threshold=rule.threshold,
        method=rule.method,
        top_fraction=rule.top_fraction,
        slice_threshold=rule.slice_threshold,
        indeterminate=ctx.settings.model.indeterminate,
        key_slices=ctx.settings.model.key_slices,
        votes=votes,
        calibrate=rule.calibrator,
        calibration=None if rule.calibrator is None else rule.calibrator.method,
    )
    seconds = time.perf_counter() - started
    heat = _heat(ctx, slices, result) if ctx.settings.report.heatmaps else {}
    return _Analysis(result, scores, str(decision.series_instance_uid), decision.reason,
                     fingerprint, seconds, heat, len(ready))  # fmt: skip


def _heat(ctx: PipelineContext, slices: Sequence[ScoredSlice], result: StudyResult) -> dict:
    """Grad-CAM of the key slices (read again: only scores were kept); an empty map (and a
    log line) if it cannot be computed."""
    from scpnode.infer.gradcam import grad_cam

    paths = {s.sop_instance_uid: s.path for s in slices}
    keys = [s.sop_instance_uid for s in result.key_slices]
    try:
        hu = [read_slice(paths[k])[0].hu for k in keys]
        return dict(zip(keys, grad_cam(ctx.model, hu), strict=True))
    except Exception:
        log.exception("Grad-CAM failed; heat maps skipped")
        return {}


def _finish_ignored(ctx: PipelineContext, job: ClaimedJob, reason: str) -> None:
    with ctx.db.session() as session:
        now = ctx.clock()
        settle_study(session, job.study_id, StudyState.IGNORED, now, reason)
        audit.append(
            session, AuditKind.STUDY_IGNORED, study_uid=job.study_uid, now=now, reason=reason
        )
        finish_job(session, job.job_id, JobState.DONE, now)


def _finish_not_analysed(
    ctx: PipelineContext, job: ClaimedJob, reason: str, rows: Sequence[InstanceRow]
) -> None:
    fingerprint = hashlib.sha256(("not-analysed\n" + input_fingerprint(rows)).encode()).hexdigest()
    if _unchanged(ctx, job, fingerprint):
        return
    evidence = [_header(Path(r.path)) for r in rows[:NOT_ANALYSED_EVIDENCE]]
    with ctx.db.session() as session:
        now = ctx.clock()
        sop_uid = uids.sr_instance_uid(job.study_uid, fingerprint, ctx.model.identity.tag)
        sr = report.build_not_analysed_sr(
            evidence=evidence,
            reason=reason,
            model=ctx.model.identity,
            node=ctx.node,
            series_instance_uid=uids.sr_series_uid(job.study_uid, ctx.node.device_uid),
            sop_instance_uid=sop_uid,
            instance_number=next_instance_number(session, job.study_id),
            series_number=SR_SERIES_NUMBER,
            now=now,
        )
        result = _result_row(
            job,
            ctx.model.identity,
            now,
            outcome="not_analysed",
            reason=reason,
            fingerprint=fingerprint,
        )
        session.add(result)
        session.flush()
        register_sr(
            session, ctx.settings, job.study_id, job.study_uid, result.id, sr, "not_analysed", now
        )
        audit.append(
            session,
            AuditKind.STUDY_NOT_ANALYSED,
            study_uid=job.study_uid,
            now=now,
            reason=reason,
            sr_sop_instance_uid=sop_uid,
        )
        _settle(session, job, result, fingerprint, StudyState.NOT_ANALYSED, now, reason)


def _finish_analysed(
    ctx: PipelineContext, job: ClaimedJob, analysis: _Analysis, selected: Sequence[InstanceRow]
) -> None:
    paths = {r.sop_instance_uid: Path(r.path) for r in selected}
    evidence = [_header(paths[s.sop_instance_uid]) for s in analysis.result.key_slices]
    model = ctx.model.identity
    with ctx.db.session() as session:
        now = ctx.clock()
        sop_uid = uids.sr_instance_uid(job.study_uid, analysis.fingerprint, model.tag)
        sr = report.build_result_sr(
            evidence=evidence,
            result=analysis.result,
            model=model,
            node=ctx.node,
            series_instance_uid=uids.sr_series_uid(job.study_uid, ctx.node.device_uid),
            sop_instance_uid=sop_uid,
            instance_number=next_instance_number(session, job.study_id),
            series_number=SR_SERIES_NUMBER,
            predecessors=previous_report(session, job.study_id),
            now=now,
        )
        result = _analysed_row(ctx, job, analysis, now)
        session.add(result)
        session.flush()
        session.add_all(
            SliceScoreRow(
                result_id=result.id,
                sop_instance_uid=s.sop_instance_uid,
                slice_index=s.index,
                z=s.z,
                probability=s.probability,
            )
            for s in analysis.scores
        )
        _audit_result(session, job, analysis, model, now)
        register_sr(
            session, ctx.settings, job.study_id, job.study_uid, result.id, sr, "result", now
        )
        for kind, extra in _extras(ctx, job, analysis, sr, evidence, paths, now, session):
            register_sr(session, ctx.settings, job.study_id, job.study_uid, result.id, extra,
                        kind, now)  # fmt: skip
        _settle(session, job, result, analysis.fingerprint, StudyState.REPORTED, now, None)


def _extras(ctx: PipelineContext, job: ClaimedJob, analysis: _Analysis, sr: Dataset,
            evidence: list[Dataset], paths: dict[str, Path], now: datetime,
            session: Session) -> list[tuple[str, Dataset]]:  # fmt: skip
    """The optional key images; a failure is audited and never holds up the SR."""
    wanted = ctx.settings.report
    if not (wanted.key_object_selection or wanted.heatmaps):
        return []
    if wanted.heatmaps and not analysis.heat:
        wanted = wanted.model_copy(update={"heatmaps": False})
        audit.append(session, AuditKind.EXTRAS_FAILED, study_uid=job.study_uid, now=now,
                     reason="Grad-CAM could not be computed; heat maps skipped")  # fmt: skip
    try:
        return build_extras(settings=wanted, sr=sr, result=analysis.result, evidence=evidence,
                            heat=analysis.heat, paths=paths, model=ctx.model.identity,
                            node=ctx.node, now=now)  # fmt: skip
    except Exception as exc:
        log.exception("key images could not be built")
        audit.append(session, AuditKind.EXTRAS_FAILED, study_uid=job.study_uid, now=now,
                     reason=f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip
        return []


def _audit_result(
    session: Session, job: ClaimedJob, analysis: _Analysis, model: ModelIdentity, now: datetime
) -> None:
    r = analysis.result
    audit.append(
        session,
        AuditKind.INFERENCE_DONE,
        study_uid=job.study_uid,
        now=now,
        slices=r.n_slices,
        scored_while_arriving=analysis.prescored,
        seconds=round(analysis.seconds, 3),
        model=model.tag,
    )
    audit.append(
        session,
        AuditKind.STUDY_RESULT,
        study_uid=job.study_uid,
        now=now,
        label=r.label,
        finding=r.finding,
        probability=round(r.probability, 6),
        threshold=r.threshold,
        aggregation=r.aggregation,
        model=model.tag,
        key_slices=[s.sop_instance_uid for s in r.key_slices],
    )


def _analysed_row(
    ctx: PipelineContext, job: ClaimedJob, analysis: _Analysis, now: datetime
) -> ResultRow:
    r = analysis.result
    row = _result_row(
        job,
        ctx.model.identity,
        now,
        outcome="analysed",
        reason=None,
        fingerprint=analysis.fingerprint,
    )
    row.series_instance_uid, row.selection_reason = analysis.series_uid, analysis.selection
    row.threshold, row.threshold_source = r.threshold, ctx.threshold[1]
    row.aggregation, row.probability = r.aggregation, r.probability
    row.label = None if r.label is None else str(r.label)
    row.finding, row.n_slices = str(r.finding), r.n_slices
    row.device, row.inference_s = str(ctx.model.device), analysis.seconds
    return row


def _result_row(
    job: ClaimedJob,
    model: ModelIdentity,
    now: datetime,
    *,
    outcome: str,
    reason: str | None,
    fingerprint: str,
) -> ResultRow:
    return ResultRow(
        study_id=job.study_id,
        job_id=job.job_id,
        created_at=now,
        outcome=outcome,
        reason=reason,
        input_fingerprint=fingerprint,
        model_name=model.name,
        model_version=model.version,
        weights_sha256=model.weights_sha256,
        n_slices=0,
    )


def _settle(
    session: Session,
    job: ClaimedJob,
    result: ResultRow,
    fingerprint: str,
    state: StudyState,
    now: datetime,
    reason: str | None,
) -> None:
    study = session.get(StudyRow, job.study_id)
    assert study is not None
    study.analysed_fingerprint, study.current_result_id = fingerprint, result.id
    settle_study(session, job.study_id, state, now, reason)
    refresh_study_state(session, job.study_id)
    finish_job(session, job.job_id, JobState.DONE, now)


def _header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)
