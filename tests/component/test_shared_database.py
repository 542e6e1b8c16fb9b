"""Several processes on one database: claims never double, the audit chain never forks, and
`db upgrade` is a no-op the second time — on SQLite and on a real PostgreSQL server.

Each thread opens its own `Database` (own engine, own connections), as separate processes or
nodes would; a barrier releases them together so their transactions really overlap.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, func, inspect, select

from scpnode import audit
from scpnode.clock import utcnow
from scpnode.db import Database
from scpnode.db.models import AssociationRow, AuditEventRow, Base, InstanceRow, JobRow, StudyRow
from scpnode.domain import AuditKind, JobState, StudyState
from scpnode.headers import summarise
from scpnode.ingest import Recorder, record_instance
from scpnode.queue import claim, finish_job, sweep_completions
from scpnode.receive.records import InstanceReceived
from scpnode.reconcile import reconcile
from scpnode.spool import Spool, StoreKind
from tests.conftest import ct_small

THREADS = 6


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    return str(request.getfixturevalue("pg_url"))


def together(url: str, work: Callable[[Database, int], Any]) -> list[Any]:
    """Run `work(db, i)` in THREADS threads, each with its own Database, started at once."""
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS
    errors: list[BaseException] = []

    def run(i: int) -> None:
        db = Database(url)
        try:
            barrier.wait(30)
            results[i] = work(db, i)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish in 120 s"
    assert not errors, errors
    return results


def add_studies(db: Database, n: int, state: StudyState, with_jobs: bool = False) -> None:
    long_ago = utcnow() - timedelta(hours=1)
    with db.session() as session:
        for i in range(n):
            study = StudyRow(study_instance_uid=f"1.2.826.0.1.3680043.10.99.{i + 1}",
                             state=state, first_calling_aet="CT01", first_received_at=long_ago,
                             last_received_at=long_ago, state_changed_at=long_ago)  # fmt: skip
            session.add(study)
            session.flush()
            if with_jobs:
                session.add(JobRow(study_id=study.id, state=JobState.QUEUED, created_at=long_ago,
                                   attempts=0))  # fmt: skip


def chain_ok(db: Database) -> int:
    with db.session() as session:
        check = audit.verify_chain(session)
    assert check.ok, check
    return check.events


def test_concurrent_completion_sweeps_queue_each_study_once(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    add_studies(db, 40, StudyState.RECEIVING)

    def sweep(worker_db: Database, _i: int) -> list[str]:
        return sweep_completions(worker_db, utcnow(), grace_s=1, idle_timeout_s=60)

    queued = [uid for part in together(db_url, sweep) for uid in part]
    with db.session() as session:
        jobs = Counter(session.scalars(select(JobRow.study_id)))
        complete = Counter(session.scalars(select(AuditEventRow.study_instance_uid).where(
            AuditEventRow.kind == AuditKind.STUDY_COMPLETE)))  # fmt: skip
    assert len(queued) == len(set(queued)) == 40, Counter(queued).most_common(3)
    assert len(jobs) == 40 and set(jobs.values()) == {1}
    assert set(complete.values()) == {1}
    assert chain_ok(db) == 40
    db.dispose()


def test_concurrent_claims_take_each_job_once(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    add_studies(db, 40, StudyState.QUEUED, with_jobs=True)

    def drain(worker_db: Database, i: int) -> list[int]:
        taken = []
        while (job := claim(worker_db, f"test:{i}", 60, utcnow())) is not None:
            taken.append(job.job_id)
            with worker_db.session() as session:
                finish_job(session, job.job_id, JobState.DONE, utcnow())
        return taken

    claims = [job for part in together(db_url, drain) for job in part]
    assert sorted(claims) == sorted(set(claims)) and len(claims) == 40
    with db.session() as session:
        assert set(session.scalars(select(JobRow.attempts))) == {1}
    assert chain_ok(db) == 40  # one job_claimed each, appended from six writers
    db.dispose()


def test_expired_lease_is_taken_over_once(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    add_studies(db, 1, StudyState.QUEUED, with_jobs=True)
    first = claim(db, "deadhost:1", 5, utcnow())
    assert first is not None
    assert claim(db, "other:2", 5, utcnow()) is None  # lease still running
    later = utcnow() + timedelta(seconds=6)
    takers = together(db_url, lambda d, i: claim(d, f"taker:{i}", 5, later))
    won = [job for job in takers if job is not None]
    assert len(won) == 1 and won[0].attempt == 2 and won[0].job_id == first.job_id
    with db.session() as session:
        kinds = list(session.scalars(select(AuditEventRow.kind).order_by(AuditEventRow.seq)))
    assert kinds.count(AuditKind.JOB_RECLAIMED) == 1
    db.dispose()


def test_concurrent_appends_keep_one_chain(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()

    def append_many(worker_db: Database, i: int) -> None:
        for n in range(15):
            with worker_db.session() as session:
                audit.append(session, AuditKind.NODE_STARTED, pid=i, n=n)

    together(db_url, append_many)  # the very first append races to create the chain head
    assert chain_ok(db) == THREADS * 15
    db.dispose()


def test_upgrade_from_empty_then_again_is_a_no_op(db_url: str) -> None:
    """Three `scpnode db upgrade` processes at once (nodes and workers starting together),
    then once more: the same revision, the same tables, and the schema equals the models."""
    env = {**os.environ, "SCPNODE_DATABASE__URL": db_url}
    env.pop("SCPNODE_CONFIG", None)
    command = [sys.executable, "-m", "scpnode", "db", "upgrade"]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for _ in range(3)]  # fmt: skip
    for run in runs:
        output = run.communicate(timeout=120)[0]
        assert run.returncode == 0, output.decode()
    db = Database(db_url)
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        revision = context.get_current_revision()
        tables = sorted(inspect(conn).get_table_names())
        assert compare_metadata(context, Base.metadata) == []  # migrations == models
    db.upgrade()
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == revision == "0003"
        assert sorted(inspect(conn).get_table_names()) == tables
    db.dispose()


def test_upgrade_from_the_first_release_keeps_its_rows(db_url: str) -> None:
    """A node upgraded from revision 0001 keeps its studies and gains the scoring-ahead
    columns and table (0002) empty."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from scpnode.db.models import PrescoreRow
    from scpnode.db.session import MIGRATIONS

    db = Database(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")
        connection.execute(text(
            "INSERT INTO studies (id, study_instance_uid, state, first_calling_aet, "
            "first_received_at, last_received_at, state_changed_at) VALUES (1, '1.2.3', "
            "'reported', 'CT01', :t, :t, :t)"), {"t": utcnow().replace(tzinfo=None)})  # fmt: skip
    db.upgrade()
    with db.session() as session:
        study = session.scalars(select(StudyRow)).one()
        assert (study.study_instance_uid, study.state) == ("1.2.3", "reported")
        assert study.prescore_owner is None and study.prescore_until is None
        assert session.scalars(select(PrescoreRow)).all() == []
    db.dispose()


def test_restart_closes_only_its_own_dead_associations(db_url: str, tmp_path: Path) -> None:
    """Two SCP nodes share the database: one restarting must not abort the other's open
    associations (completion would then fire early on a study still arriving)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    db = Database(db_url)
    db.upgrade()
    owners = ["other-node:4242", f"{socket.gethostname()}:{dead.pid}"]
    with db.session() as session:
        for owner in owners:
            row = AssociationRow(calling_aet="CT01", called_aet="SCPNODE", peer_host="127.0.0.1",
                                 peer_port=1, started_at=utcnow(), outcome="open", instances=0,
                                 failures=0, bytes=0, scp_owner=owner)  # fmt: skip
            session.add(row)
    reconcile(db, Spool(tmp_path / "spool"))
    with db.session() as session:
        outcome = {
            o: s
            for o, s in session.execute(select(AssociationRow.scp_owner, AssociationRow.outcome))
        }
    assert outcome == {"other-node:4242": "open", f"{socket.gethostname()}:{dead.pid}": "aborted"}
    db.dispose()


def test_a_header_with_nul_characters_is_recorded(db_url: str, tmp_path: Path) -> None:
    """PostgreSQL text cannot hold NUL: a broken header must not keep the instance out."""
    ds = ct_small()
    ds.StudyDescription = "CHEST\x00\x00"
    ds.SeriesDescription = "AX\x00LUNG"
    db = Database(db_url)
    db.upgrade()
    rec = InstanceReceived(
        key=0,
        calling_aet="CT01",
        header=summarise(ds),
        kind=StoreKind.STORED,
        path=str(tmp_path / "x.dcm"),
        sha256="0" * 64,
        size=1,
        at=utcnow(),
    )
    with db.session() as session:
        record_instance(session, rec, None)
    with db.session() as session:
        row = session.scalars(select(InstanceRow)).one()
    assert (row.study_description, row.series_description) == ("CHEST", "AXLUNG")
    db.dispose()


def test_two_recorders_creating_one_study_take_turns(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two SCP processes record the first instances of one new study at the same moment: the
    second waits for the first's study row (the writer lock, taken before the recorder looks
    the study up) instead of failing on it and redoing its batch a record at a time."""
    setup = Database(db_url)
    setup.upgrade()
    first, second = Database(db_url), Database(db_url)
    ds = ct_small()
    records = []
    for i in (1, 2):
        ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.{i}"
        records.append(InstanceReceived(key=i, calling_aet="CT01", header=summarise(ds),
                                        kind=StoreKind.STORED, path=str(tmp_path / f"{i}.dcm"),
                                        sha256="0" * 64, size=1, at=utcnow()))  # fmt: skip
    second_done = threading.Event()

    def second_batch() -> None:
        Recorder(second)._apply_batch([records[1]])
        second_done.set()

    fired: list[str] = []

    def just_before_the_study_insert(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if not fired and statement.startswith("INSERT INTO studies"):
            fired.append(statement)
            threading.Thread(target=second_batch, daemon=True).start()
            second_done.wait(1.0)  # holding the lock, the second cannot finish meanwhile

    event.listen(first.engine, "before_cursor_execute", just_before_the_study_insert)
    with caplog.at_level(logging.ERROR, logger="scpnode.ingest"):
        Recorder(first)._apply_batch([records[0]])
        assert second_done.wait(60)
    assert fired
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    with setup.session() as session:
        assert session.scalar(select(func.count()).select_from(StudyRow)) == 1
        assert session.scalar(select(func.count()).select_from(InstanceRow)) == 2
    for db in (setup, first, second):
        db.dispose()
