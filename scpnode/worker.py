"""The worker process: claims study jobs and runs them; a second thread delivers SRs.

Warm shutdown (rq style): SIGTERM stops taking new jobs, the job in hand finishes, queued
work stays in the database. `burst` mode drains what is there and returns, which makes the
worker testable without timing games.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from scpnode import audit
from scpnode.app import (
    StartupError,
    load_checked_card,
    make_deliverer,
    node_identity,
    open_database,
    resolve_weights,
    scope_rules,
)
from scpnode.clock import utcnow
from scpnode.config import Settings
from scpnode.delivery import Deliverer
from scpnode.domain import AuditKind, JobState, StudyState
from scpnode.owners import process_owner
from scpnode.pipeline import PipelineContext, process_job
from scpnode.prescore import Prescorer, forget_prescores

if TYPE_CHECKING:
    from scpnode.infer.engine import LoadedModel
from scpnode.queue import (
    ClaimedJob,
    claim,
    finish_job,
    heartbeat,
    release_dead_claims,
    settle_study,
)

log = logging.getLogger(__name__)
PROMPT_POLL_S = 0.1


class Worker:
    """Job loop (this thread) plus delivery loop (its own thread)."""

    def __init__(
        self,
        ctx: PipelineContext,
        deliverer: Deliverer,
        *,
        owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
        prescorer: Prescorer | None = None,
    ) -> None:
        self.ctx = ctx
        self.deliverer = deliverer
        self.owner = owner or process_owner()
        self.clock = clock or ctx.clock
        self.lease_s = ctx.settings.worker.lease_s
        self.poll_s = ctx.settings.worker.poll_interval_s
        self.prescorer = prescorer
        self._deliver_now = threading.Event()  # a job just wrote an SR: send it without a poll

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: jobs here, deliveries in a thread; both end warm."""
        sender = threading.Thread(
            target=self._delivery_loop, args=(stop,), name="delivery", daemon=True
        )
        sender.start()
        while not stop.is_set():
            if self.run_one_job():
                self._deliver_now.set()
            elif not self._prescore():
                stop.wait(self._idle_wait())
        self._deliver_now.set()
        sender.join(timeout=60)
        if self.ctx.decoders is not None:
            self.ctx.decoders.close()

    def _prescore(self) -> bool:
        """Between jobs, score slices of studies still arriving; errors only cost time."""
        if self.prescorer is None:
            return False
        try:
            return self.prescorer.step()
        except Exception:
            log.exception("scoring ahead failed; the study's job will score its slices")
            return False

    def _idle_wait(self) -> float:
        """While a study is arriving its job can be queued any moment: look more often."""
        watching = self.prescorer is not None and self.prescorer.watching
        return min(self.poll_s, PROMPT_POLL_S) if watching else self.poll_s

    def run_burst(self) -> int:
        """Process every queued job and every due delivery, then return how many jobs ran."""
        jobs = 0
        while self.run_one_job():
            jobs += 1
        self.deliverer.run_once()
        return jobs

    def run_one_job(self) -> bool:
        job = claim(self.ctx.db, self.owner, self.lease_s, self.clock())
        if job is None:
            return False
        with self._lease_kept(job):
            try:
                process_job(self.ctx, job)
            except Exception as exc:
                log.exception("job failed", extra={"job_id": job.job_id})
                self._fail(job, exc)
        try:
            forget_prescores(self.ctx.db, job.study_id)
        except Exception:  # only a cache: a leftover score is matched by bytes, never misused
            log.exception("could not drop the study's scores made ahead")
        return True

    def _delivery_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self.deliverer.run_once():
                    self._deliver_now.wait(self.poll_s)
                    self._deliver_now.clear()
            except Exception:
                log.exception("delivery loop error; continuing")
                stop.wait(self.poll_s * 4)

    @contextmanager
    def _lease_kept(self, job: ClaimedJob) -> Iterator[None]:
        """Extend the job's lease while it runs, so only a dead worker loses its job."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.lease_s / 3):
                heartbeat(self.ctx.db, job.job_id, self.owner, self.lease_s, self.clock())

        thread = threading.Thread(target=beat, name="lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=5)

    def _fail(self, job: ClaimedJob, exc: Exception) -> None:
        """A job that raised: the study is `failed` with the reason; the node keeps going."""
        now = self.clock()
        reason = f"processing error: {type(exc).__name__}: {exc}"[:500]
        with self.ctx.db.session() as session:
            finish_job(session, job.job_id, JobState.FAILED, now, reason)
            settle_study(session, job.study_id, StudyState.FAILED, now, reason)
            audit.append(
                session,
                AuditKind.JOB_FAILED,
                study_uid=job.study_uid,
                now=now,
                job_id=job.job_id,
                error=reason,
            )


def prescore_threads(model: LoadedModel) -> int | None:
    """On the CPU, scoring ahead leaves one core to the SCP receiving the study; a GPU
    worker needs its CPU threads only to decode."""
    if model.device.type != "cpu":
        return None
    import torch

    return max(1, torch.get_num_threads() - 1)


def build_worker(settings: Settings) -> Worker:
    """Everything one worker process needs; raises StartupError with the key to fix."""
    from scpnode.infer.engine import (
        DeviceError,
        ModelLoadError,
        load_model,
        resolve_batch_size,
        resolve_device,
    )

    db = open_database(settings)
    release_dead_claims(db, utcnow())
    weights = resolve_weights(settings, train=False)
    card = load_checked_card(settings, weights)
    try:
        model = load_model(settings.model.name, weights, resolve_device(settings.model.device),
                           settings.model.precision)  # fmt: skip
    except DeviceError as exc:
        raise StartupError(f"model.device: {exc}") from None
    except (ModelLoadError, ValueError) as exc:
        raise StartupError(f"model.weights: {exc}") from None
    decoders = None
    if settings.model.decode_processes:
        from scpnode.infer.decoders import DecoderPool

        decoders = DecoderPool(model.card, settings.model.decode_processes)
    batch_size = resolve_batch_size(settings.model.batch_size, model.device)
    ctx = PipelineContext(
        decoders=decoders,
        batch_size=batch_size,
        db=db,
        settings=settings,
        model=model,
        node=node_identity(settings),
        rules=scope_rules(settings, card),
        clock=utcnow,
    )
    from scpnode.warmup import warm_up

    warm_s = warm_up(model, ctx.node, batch_size, decoders)
    log.info(
        "worker ready",
        extra={
            "model": model.identity.tag,
            "device": str(model.device),
            "precision": model.precision,
            "batch_size": batch_size,
            "decode_processes": settings.model.decode_processes,
            "synthetic": model.identity.synthetic,
            "warm_up_s": round(warm_s, 2),
        },
    )
    prescorer = None
    if settings.worker.prescore:
        from model_zoo.preprocess import lung_fraction

        prescorer = Prescorer(db, model, ctx.rules, owner=process_owner(), clock=utcnow,
                              batch_size=batch_size,
                              measure=lung_fraction if ctx.rule.lung_gate else None,
                              threads=prescore_threads(model), decoders=decoders)  # fmt: skip
    return Worker(ctx, make_deliverer(db, settings), prescorer=prescorer)
