"""Scoring while the study arrives, over real associations and a real SQLite file: slices are
scored before the study completes, the job reuses exactly those scores (same numbers as a cold
run), a replaced instance is scored again, two workers never score one study at once, and a
running worker loop does it on its own."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import delete, func, select

from scpnode.clock import utcnow
from scpnode.db.models import InstanceRow, PrescoreRow, SliceScoreRow, StudyRow
from scpnode.infer.dicom_slices import KnownSlice
from scpnode.infer.stream import score_series
from scpnode.prescore import Prescorer
from scpnode.queue import sweep_completions
from scpnode.synth import iter_study_datasets, make_study_spec

N = 12


def prescored(rig: Any) -> int:
    with rig.worker.ctx.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(PrescoreRow)) or 0)


def drain(prescorer: Prescorer) -> int:
    """Step until nothing is left to score (bounded); returns the steps that did work."""
    for steps in range(50):
        if not prescorer.step():
            return steps
    raise AssertionError("scoring ahead never ran out of work")


def inference_event(rig: Any, uid: str) -> dict[str, Any]:
    events = rig.show(uid)["events"]
    return next(e for e in events if e["kind"] == "inference_done")["detail"]


def instance_paths(rig: Any) -> dict[str, Path]:
    with rig.worker.ctx.db.session() as s:
        return {r.sop_instance_uid: Path(r.path) for r in s.scalars(select(InstanceRow))}


def slice_scores(rig: Any) -> dict[str, float]:
    with rig.worker.ctx.db.session() as s:
        return {r.sop_instance_uid: r.probability for r in s.scalars(select(SliceScoreRow))}


def test_slices_are_scored_while_the_study_arrives_and_reused_by_its_job(make_rig: Any) -> None:
    rig = make_rig()
    prescorer = rig.worker.prescorer
    assert prescorer is not None  # on by default
    spec = make_study_spec(91, n_slices=N)
    datasets = list(iter_study_datasets(spec))
    assert rig.send(datasets[: N // 2]) == [0] * (N // 2)
    rig.recorder.flush()
    threads = torch.get_num_threads()
    assert prescorer.threads == max(1, threads - 1)  # CPU: a core stays with the SCP
    assert drain(prescorer) >= 1
    assert torch.get_num_threads() == threads  # jobs still get every thread
    assert prescored(rig) == N // 2  # half the study is here: half is scored
    assert rig.send(datasets[N // 2 :]) == [0] * (N - N // 2)
    rig.recorder.flush()
    drain(prescorer)
    assert prescored(rig) == N

    rig.complete_and_process()
    study = rig.studies()[spec.study_instance_uid]
    assert study["status"] == "delivered"
    assert inference_event(rig, spec.study_instance_uid)["scored_while_arriving"] == N
    assert prescored(rig) == 0  # the job used them; the cache is emptied

    # the same numbers a cold job computes from the files
    cold = score_series(rig.worker.ctx.model, list(instance_paths(rig).values()))
    stored = slice_scores(rig)
    assert len(cold) == N
    np.testing.assert_allclose(
        [stored[s.sop_instance_uid] for s in cold], [s.probability for s in cold], atol=1e-6
    )


def test_the_worker_reads_the_pixels_where_the_scp_noted_them(
    make_rig: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring ahead and the job get each slice with its row's pixel layout, not a bare path
    to parse again; the scores are those of parsing the files."""
    from scpnode import pipeline, prescore

    rig = make_rig()
    given: list[object] = []
    for module in (prescore, pipeline):
        real = module.score_slices

        def spy(model, sources, *args, real=real, **kwargs):  # type: ignore[no-untyped-def]
            given.extend(sources)
            return real(model, sources, *args, **kwargs)

        monkeypatch.setattr(module, "score_slices", spy)
    spec = make_study_spec(96, n_slices=N)
    datasets = list(iter_study_datasets(spec))
    assert rig.send(datasets[: N // 2]) == [0] * (N // 2)
    rig.recorder.flush()
    drain(rig.worker.prescorer)
    assert len(given) == N // 2
    with rig.worker.ctx.db.session() as s:  # half the study is not there to score ahead
        s.execute(delete(PrescoreRow).where(PrescoreRow.id % 2 == 0))
    assert rig.send(datasets[N // 2 :]) == [0] * (N - N // 2)
    rig.complete_and_process()
    assert rig.studies()[spec.study_instance_uid]["status"] == "delivered"
    assert len(given) == N + N // 4 and all(isinstance(g, KnownSlice) for g in given)
    parsed = score_series(rig.worker.ctx.model, list(instance_paths(rig).values()))
    stored = slice_scores(rig)
    np.testing.assert_allclose(
        [stored[s.sop_instance_uid] for s in parsed], [s.probability for s in parsed], atol=1e-6
    )


def test_a_replaced_instance_is_scored_again(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(92, n_slices=N)
    datasets = list(iter_study_datasets(spec))
    assert rig.send(datasets) == [0] * N
    rig.recorder.flush()
    drain(rig.worker.prescorer)
    assert prescored(rig) == N
    changed = datasets[3]
    pixels = changed.pixel_array.copy()
    pixels[100:300, 100:300] = pixels.max()  # new bytes under the same SOP Instance UID
    changed.PixelData = pixels.tobytes()
    assert rig.send([changed]) == [0]
    rig.complete_and_process()
    assert inference_event(rig, spec.study_instance_uid)["scored_while_arriving"] == N - 1
    stored = slice_scores(rig)
    path = instance_paths(rig)[changed.SOPInstanceUID]
    fresh = score_series(rig.worker.ctx.model, [path])[0].probability
    assert abs(stored[changed.SOPInstanceUID] - fresh) < 1e-6


def test_two_workers_never_score_one_study_at_once(make_rig: Any) -> None:
    rig = make_rig()
    first = rig.worker.prescorer
    ctx = rig.worker.ctx
    second = Prescorer(ctx.db, ctx.model, ctx.rules, owner="other-host:1", clock=ctx.clock,
                       batch_size=4, measure=None)  # fmt: skip
    spec = make_study_spec(93, n_slices=N)
    assert rig.send(list(iter_study_datasets(spec))) == [0] * N
    rig.recorder.flush()
    assert first.step()  # takes the study's lease
    assert not second.step()  # the only arriving study is held by the first worker
    with ctx.db.session() as s:
        study = s.scalars(select(StudyRow)).one()
        assert study.prescore_owner == first.owner
    drain(first)
    assert prescored(rig) == N


def test_a_running_worker_scores_ahead_and_reports_without_a_poll(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(94, n_slices=N)
    stop = threading.Event()
    loop = threading.Thread(target=rig.worker.run, args=(stop,), daemon=True)
    loop.start()
    try:
        assert rig.send(list(iter_study_datasets(spec))) == [0] * N
        rig.recorder.flush()
        deadline = time.monotonic() + 30
        while prescored(rig) < N and time.monotonic() < deadline:
            time.sleep(0.05)
        assert prescored(rig) == N  # scored before the study was complete
        rig.recorder.flush()
        sweep_completions(rig.worker.ctx.db, utcnow() + timedelta(seconds=5), grace_s=1,
                          idle_timeout_s=60)  # fmt: skip
        deadline = time.monotonic() + 30
        while rig.studies()[spec.study_instance_uid]["status"] != "delivered":
            assert time.monotonic() < deadline, rig.studies()[spec.study_instance_uid]
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    assert inference_event(rig, spec.study_instance_uid)["scored_while_arriving"] == N


def test_an_undecodable_slice_is_left_to_the_job_and_the_rest_is_scored(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(95, n_slices=N)
    datasets = list(iter_study_datasets(spec))
    bad = datasets[5]
    bad.PixelData = bad.PixelData[:100]  # header fine, pixels truncated
    assert rig.send(datasets) == [0] * N  # acknowledged: stored as received
    rig.recorder.flush()
    drain(rig.worker.prescorer)  # ends: the bad slice is not retried for ever
    assert prescored(rig) == N - 1
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "not_analysed" and "undecodable" in row["reason"]
    assert prescored(rig) == 0


def test_a_failure_scoring_ahead_is_not_retried_at_every_poll(
    make_rig: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a bad file but a failure of ours: the slices are left to the job, which reports
    the study, instead of the same batch failing again at every poll."""
    from scpnode import prescore

    rig = make_rig()
    calls = [0]

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        raise RuntimeError("out of something")

    monkeypatch.setattr(prescore, "score_slices", failing)
    spec = make_study_spec(97, n_slices=N)
    assert rig.send(list(iter_study_datasets(spec))) == [0] * N
    rig.recorder.flush()
    assert drain(rig.worker.prescorer) == 1 and calls[0] == 1
    assert prescored(rig) == 0
    rig.complete_and_process()
    assert rig.studies()[spec.study_instance_uid]["status"] == "delivered"


def test_one_batch_is_filled_across_studies_arriving_at_once(make_rig: Any) -> None:
    rig = make_rig()
    small = [make_study_spec(96 + i, n_slices=6) for i in range(2)]
    for spec in small:
        assert rig.send(list(iter_study_datasets(spec))) == [0] * 6
    rig.recorder.flush()
    assert rig.worker.prescorer.batch_size >= 12
    assert rig.worker.prescorer.step()  # one step, one batch: both studies' slices
    assert prescored(rig) == 12
    with rig.worker.ctx.db.session() as s:
        assert {st.prescore_owner for st in s.scalars(select(StudyRow))} == {
            rig.worker.prescorer.owner
        }
    assert not rig.worker.prescorer.step()


def test_decoder_processes_serve_scoring_ahead_and_the_job(make_rig: Any) -> None:
    """`model.decode_processes = 2`: the worker's pool is used by both paths."""
    from scpnode.worker import build_worker

    rig = make_rig()
    model = rig.settings.model.model_copy(update={"decode_processes": 2})
    worker = build_worker(rig.settings.model_copy(update={"model": model}))
    assert worker.ctx.decoders is not None and worker.prescorer.decoders is worker.ctx.decoders
    try:
        spec = make_study_spec(98, n_slices=N)
        datasets = list(iter_study_datasets(spec))
        assert rig.send(datasets[: N // 2]) == [0] * (N // 2)
        rig.recorder.flush()
        drain(worker.prescorer)
        assert prescored(rig) == N // 2
        assert rig.send(datasets[N // 2 :]) == [0] * (N - N // 2)
        rig.recorder.flush()
        sweep_completions(worker.ctx.db, utcnow() + timedelta(seconds=5), grace_s=1,
                          idle_timeout_s=60)  # fmt: skip
        assert worker.run_burst() == 1  # the other half scored by the pool at completion
        assert rig.studies()[spec.study_instance_uid]["status"] == "delivered"
        assert inference_event(rig, spec.study_instance_uid)["scored_while_arriving"] == N // 2
    finally:
        worker.ctx.decoders.close()


def test_the_resolved_batch_size_reaches_jobs_and_scoring_ahead(make_rig: Any) -> None:
    """`model.batch_size = "auto"` is 16 slices on a CPU; a number is used as given."""
    from scpnode.worker import build_worker

    rig = make_rig()
    assert rig.settings.model.batch_size == "auto"
    assert rig.worker.ctx.batch_size == 16 == rig.worker.prescorer.batch_size
    model = rig.settings.model.model_copy(update={"batch_size": 5})
    worker = build_worker(rig.settings.model_copy(update={"model": model}))
    assert worker.ctx.batch_size == 5 == worker.prescorer.batch_size


class Clocked:
    """A prescorer on a clock the test moves, and two series of one study: a soft-kernel one
    and a lung-kernel one the scope rules prefer."""

    def __init__(self, rig: Any, seed: int) -> None:
        from scpnode.synth import extra_series

        self.rig, ctx = rig, rig.worker.ctx
        self.now = utcnow()
        self.prescorer = Prescorer(ctx.db, ctx.model, ctx.rules, owner="clocked:1",
                                   clock=lambda: self.now, batch_size=4, measure=None)  # fmt: skip
        self.soft = make_study_spec(seed, n_slices=N)
        self.lung = extra_series(self.soft, kernel="LUNG", thickness=1.0, n_slices=N,
                                 lung_kernel=True)  # fmt: skip

    def send(self, spec: Any) -> None:
        assert self.rig.send(list(iter_study_datasets(spec))) == [0] * N
        self.rig.recorder.flush()

    def scored(self) -> dict[str, int]:
        with self.rig.worker.ctx.db.session() as s:
            counts = dict(s.execute(
                select(InstanceRow.series_instance_uid, func.count())
                .join(PrescoreRow, PrescoreRow.instance_id == InstanceRow.id)
                .group_by(InstanceRow.series_instance_uid)
            ).all())  # fmt: skip
        names = {self.soft.series_instance_uid: "soft", self.lung.series_instance_uid: "lung"}
        return {names[uid]: n for uid, n in counts.items()}


def test_the_series_choice_is_reused_briefly_then_made_again(make_rig: Any) -> None:
    """The scope rules run at most once per DECISION_REUSE_S per arriving study; a better
    series that arrives meanwhile is picked at the next decision."""
    from scpnode.prescore import DECISION_REUSE_S

    c = Clocked(make_rig(), 95)
    c.send(c.soft)
    assert c.prescorer.step() and c.scored() == {"soft": 4}
    c.send(c.lung)
    c.now += timedelta(seconds=DECISION_REUSE_S / 2)
    assert c.prescorer.step()  # the decision a moment ago still stands
    assert c.scored() == {"soft": 8}
    c.now += timedelta(seconds=DECISION_REUSE_S)
    assert c.prescorer.step()  # decided again: the lung kernel wins
    assert c.scored() == {"soft": 8, "lung": 4}


def test_nothing_left_under_a_reused_choice_is_checked_against_a_fresh_one(
    make_rig: Any,
) -> None:
    """The soft series is finished within the reuse window, after the lung series arrived:
    the study is not taken as caught up before the rules are asked again."""
    c = Clocked(make_rig(), 96)
    c.send(c.soft)
    assert c.prescorer.step() and c.scored() == {"soft": 4}
    c.send(c.lung)
    assert c.prescorer.step() and c.prescorer.step()  # the clock stands still
    assert c.scored() == {"soft": 12}
    assert c.prescorer.step()
    assert c.scored() == {"soft": 12, "lung": 4}
