"""Delivery resilience, retention and dead workers, over real associations (component rig)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from scpnode.cli import main
from scpnode.clock import utcnow
from scpnode.db.models import AuditEventRow, DeliveryRow, JobRow, StudyRow
from scpnode.queue import claim, release_dead_claims, sweep_completions
from scpnode.retention import purge_finished
from scpnode.spool import Spool
from scpnode.synth import iter_study_datasets, make_study_spec

SLICES = 12
FAST_BREAKER = "[delivery]\nbreaker_failures = 2\nbreaker_cooldown_s = 1.5\n"


def kinds(rig: Any) -> list[str]:
    with rig.worker.ctx.db.session() as s:
        return [e.kind for e in s.scalars(select(AuditEventRow).order_by(AuditEventRow.seq))]


def send_and_process(rig: Any, seed: int) -> str:
    spec = make_study_spec(seed, n_slices=SLICES)
    assert rig.send(list(iter_study_datasets(spec))) == [0] * SLICES
    rig.complete_and_process()
    return spec.study_instance_uid


def make_due(rig: Any) -> None:
    with rig.worker.ctx.db.session() as s:
        s.execute(update(DeliveryRow).values(next_attempt_at=utcnow() - timedelta(seconds=1)))


def test_circuit_opens_on_a_dead_pacs_and_a_probe_closes_it(make_rig: Any) -> None:
    rig = make_rig(start_pacs=False, extra=FAST_BREAKER.replace("[delivery]\n", ""))
    uids = [send_and_process(rig, seed) for seed in (51, 52, 53)]
    # two consecutive failures opened the circuit; after that nothing was tried
    assert kinds(rig).count("circuit_opened") == 1
    attempts = [rig.studies()[uid]["deliveries"][0]["attempts"] for uid in uids]
    assert sum(attempts) == 2 and attempts[-1] == 0
    make_due(rig)
    assert rig.worker.deliverer.run_once() == 0  # still open: nothing hammered
    rig.pacs.start(port=rig.pacs_port)
    time.sleep(1.6)
    make_due(rig)
    assert rig.worker.deliverer.run_once() == 3  # one probe closes it, then the rest go
    assert kinds(rig).count("circuit_closed") == 1
    assert all(rig.studies()[uid]["status"] == "delivered" for uid in uids)


def test_admin_requeues_failed_deliveries(make_rig: Any, capsys: Any) -> None:
    rig = make_rig(pacs_aet="OTHER")  # the PACS does not know our destination's AE title
    uid = send_and_process(rig, 54)
    (delivery,) = rig.studies()[uid]["deliveries"]
    assert delivery["status"] == "failed"
    config = str(rig.settings.source)
    assert main(["deliveries", "list", "--state", "failed", "--config", config]) == 0
    assert uid in capsys.readouterr().out
    rig.pacs.stop()  # the admin fixes the PACS configuration ...
    rig.pacs = type(rig.pacs)(rig.pacs.root, "PACS", require_called_aet=True)
    rig.pacs.start(port=rig.pacs_port)
    assert main(["deliveries", "retry", "--all-failed", "--config", config]) == 0  # ... retries
    assert "re-queued 1 deliveries" in capsys.readouterr().out
    assert rig.studies()[uid]["status"] == "reported"
    rig.worker.deliverer.run_once()
    row = rig.studies()[uid]
    assert row["status"] == "delivered" and row["deliveries"][0]["attempts"] == 2
    assert "delivery_requeued" in kinds(rig)
    assert main(["deliveries", "retry", "999", "--config", config]) == 1  # unknown ID


def test_retention_purges_finished_studies_and_keeps_the_audit(make_rig: Any) -> None:
    rig = make_rig()
    uid = send_and_process(rig, 55)
    db, spool = rig.worker.ctx.db, Spool(rig.settings.storage.spool_dir)
    assert purge_finished(db, spool, 1.0, utcnow()) == []  # not old enough
    assert purge_finished(db, spool, 0.0, utcnow() + timedelta(days=9)) == []  # 0 keeps all
    assert purge_finished(db, spool, 1.0, utcnow() + timedelta(days=2)) == [uid]
    assert not (spool.root / uid).exists()
    row = rig.studies()[uid]
    assert row["status"] == "delivered" and row["received_instances"] == SLICES
    assert "spool_purged" in kinds(rig)
    assert purge_finished(db, spool, 1.0, utcnow() + timedelta(days=3)) == []  # once


def test_a_dead_workers_job_and_claim_are_released_at_start(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(56, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.recorder.flush()
    db = rig.worker.ctx.db
    sweep_completions(db, utcnow() + timedelta(seconds=5), grace_s=1, idle_timeout_s=60)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    owner = f"{socket.gethostname()}:{dead}"
    job = claim(db, owner, lease_s=3600, now=utcnow())  # the worker that will "die"
    assert job is not None
    assert claim(db, "other:1", lease_s=60, now=utcnow()) is None  # its lease holds ...
    assert release_dead_claims(db, utcnow()) == (1, 0)  # ... until a start-up sees it died
    assert rig.worker.run_burst() == 1
    assert rig.studies()[spec.study_instance_uid]["status"] == "delivered"
    with db.session() as s:
        (job_row,) = s.scalars(select(JobRow)).all()
        study = s.scalars(select(StudyRow)).one()
    assert job_row.attempts == 2 and study.state == "delivered"
    assert "claims_released" in kinds(rig) and "job_reclaimed" in kinds(rig)
    assert release_dead_claims(db, utcnow()) == (0, 0)
    assert owner != f"{socket.gethostname()}:{os.getpid()}"


def test_a_job_whose_lease_expired_is_taken_over(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(57, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.recorder.flush()
    db = rig.worker.ctx.db
    sweep_completions(db, utcnow() + timedelta(seconds=5), grace_s=1, idle_timeout_s=60)
    assert claim(db, "elsewhere:1", lease_s=30, now=utcnow()) is not None  # another host
    assert release_dead_claims(db, utcnow()) == (0, 0)  # not ours to judge
    assert claim(db, "here:2", lease_s=30, now=utcnow() + timedelta(seconds=29)) is None
    taken = claim(db, "here:2", lease_s=30, now=utcnow() + timedelta(seconds=31))
    assert taken is not None and taken.attempt == 2
