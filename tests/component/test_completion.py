"""Completion without waiting blindly, over real associations: a study whose CT series are all
there (ImagesInAcquisition reached, no position gap) is queued at once; one with a missing
slice waits for it (or for the idle timer), not for the association grace."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pynetdicom import AE

from scpnode.clock import utcnow
from scpnode.queue import sweep_completions
from scpnode.synth import iter_study_datasets, make_study_spec

N = 14


def sweep(rig: Any, after_s: float) -> list[str]:
    rig.recorder.flush()
    return sweep_completions(rig.worker.ctx.db, utcnow() + timedelta(seconds=after_s),
                             grace_s=2, idle_timeout_s=60)  # fmt: skip


def test_complete_study_is_queued_while_its_association_is_still_open(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(81, n_slices=N)
    ae = AE(ae_title="CT01")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", rig.port, ae_title="SCPNODE")
    try:
        datasets = list(iter_study_datasets(spec))
        for ds in datasets[:-1]:
            assert assoc.send_c_store(ds).Status == 0
        assert sweep(rig, 0) == []  # one short: not yet
        assert assoc.send_c_store(datasets[-1]).Status == 0
        assert sweep(rig, 0) == [spec.study_instance_uid]  # no grace, no idle wait
    finally:
        assoc.release()
    rig.worker.run_burst()
    assert rig.studies()[spec.study_instance_uid]["status"] == "delivered"
    events = rig.show(spec.study_instance_uid)["events"]
    complete = next(e for e in events if e["kind"] == "study_complete")
    assert "expected CT instances received" in complete["detail"]["reason"]


def test_study_with_a_missing_slice_waits_for_it(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(82, n_slices=N)
    datasets = sorted(iter_study_datasets(spec), key=lambda ds: int(ds.InstanceNumber))
    missing = datasets.pop(N // 2)
    assert rig.send(datasets) == [0] * (N - 1)  # association released
    assert sweep(rig, 5) == []  # past the grace: still waiting for the slice
    assert rig.send([missing]) == [0]  # the scanner's retry brings it
    assert sweep(rig, 0) == [spec.study_instance_uid]


def test_a_slice_that_never_comes_is_given_up_on_at_the_idle_timer(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(83, n_slices=N)
    datasets = list(iter_study_datasets(spec))[1:]
    rig.send(datasets)
    assert sweep(rig, 30) == []
    assert sweep(rig, 61) == [spec.study_instance_uid]
