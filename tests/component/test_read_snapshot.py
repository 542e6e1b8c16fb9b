"""Views read one committed state while the node writes (SQLite and PostgreSQL).

Each test commits a write from another `Database` (another engine, as another process would)
at the worst moment: between two queries of one view. A view that read each query at its own
moment would pair old and new rows: a false "chain broken" alarm, or a study still
"reported" beside a delivery that has landed (what once made `scpnode demo` print a wrong
status).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import DBAPIError

from scpnode import audit
from scpnode.audit_views import list_studies, show_study
from scpnode.clock import utcnow
from scpnode.db import Database
from scpnode.db.models import DeliveryRow, JobRow, ResultRow, SrRow, StudyRow
from scpnode.delivery import refresh_study_state
from scpnode.domain import AuditKind, DeliveryState, JobState, StudyState

STUDY_UID = "1.2.826.0.1.3680043.10.99.7"


@pytest.fixture(params=["sqlite", "postgresql"])
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    """A reader and a writer on one database."""
    url = (
        f"sqlite:///{tmp_path}/views.db"
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    reader, writer = Database(url), Database(url)
    reader.upgrade()
    yield reader, writer
    reader.dispose()
    writer.dispose()


@contextmanager
def commit_before(reader: Database, table: str, write: Callable[[], None]) -> Iterator[list[str]]:
    """Run `write` (its own transaction) just before the reader's first SELECT from `table`."""
    fired: list[str] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if (
            not fired
            and statement.lstrip().upper().startswith("SELECT")
            and (f"FROM {table}" in statement)
        ):
            fired.append(statement)
            write()

    event.listen(reader.engine, "before_cursor_execute", hook)
    try:
        yield fired
    finally:
        event.remove(reader.engine, "before_cursor_execute", hook)


def test_chain_check_during_appends_finds_no_tampering(dbs: tuple[Database, Database]) -> None:
    reader, writer = dbs
    with writer.session() as session:
        for i in range(3):
            audit.append(session, AuditKind.STUDY_COMPLETE, study_uid=STUDY_UID, reason=f"r{i}")

    def append_one() -> None:
        with writer.session() as session:
            audit.append(session, AuditKind.NODE_STOPPED)

    with commit_before(reader, "audit_chain_head", append_one) as fired, reader.snapshot() as s:
        check = audit.verify_chain(s)
    assert fired, "the append was not injected between the event and head reads"
    assert check.ok and check.events == 3, check
    with reader.snapshot() as session:
        assert audit.verify_chain(session).events == 4


def reported_study(writer: Database) -> None:
    """A reported study whose SR's one delivery is still pending."""
    now = utcnow() - timedelta(minutes=5)
    with writer.session() as session:
        study = StudyRow(study_instance_uid=STUDY_UID, state=StudyState.REPORTED,
                         first_calling_aet="CT01", first_received_at=now, last_received_at=now,
                         state_changed_at=now)  # fmt: skip
        session.add(study)
        session.flush()
        job = JobRow(study_id=study.id, state=JobState.DONE, created_at=now, attempts=1)
        session.add(job)
        session.flush()
        result = ResultRow(study_id=study.id, job_id=job.id, created_at=now, outcome="analysed",
                           input_fingerprint="f" * 64, model_name="ctnet10",
                           model_version="test", weights_sha256="0" * 64, probability=0.9,
                           label="covid19", n_slices=3)  # fmt: skip
        session.add(result)
        session.flush()
        study.current_result_id = result.id
        sr = SrRow(study_id=study.id, result_id=result.id, sop_instance_uid="2.25.1",
                   series_instance_uid="2.25.2", kind="result", path="/nonexistent",
                   sha256="0" * 64, bytes=1, created_at=now)  # fmt: skip
        session.add(sr)
        session.flush()
        session.add(DeliveryRow(sr_id=sr.id, study_id=study.id, destination="pacs",
                                ae_title="PACS", host="127.0.0.1", port=104,
                                state=DeliveryState.PENDING, attempts=0, created_at=now,
                                expires_at=now + timedelta(hours=1),
                                next_attempt_at=now))  # fmt: skip


def test_study_status_and_deliveries_come_from_one_moment(
    dbs: tuple[Database, Database],
) -> None:
    reader, writer = dbs
    reported_study(writer)

    def delivery_lands() -> None:  # what Deliverer._record commits on success
        with writer.session() as session:
            row = session.scalars(select(DeliveryRow)).one()
            row.state, row.delivered_at, row.attempts = DeliveryState.DELIVERED, utcnow(), 1
            refresh_study_state(session, row.study_id)

    with commit_before(reader, "deliveries", delivery_lands) as fired, reader.snapshot() as s:
        (row,) = list_studies(s, [STUDY_UID])
    assert fired, "the delivery was not injected between the study and delivery reads"
    assert (row["status"], [d["status"] for d in row["deliveries"]]) == ("reported", ["pending"])
    with reader.snapshot() as session:
        shown = show_study(session, STUDY_UID)
    assert shown is not None
    assert (shown["status"], [d["status"] for d in shown["deliveries"]]) == (
        "delivered",
        ["delivered"],
    )


def test_a_snapshot_refuses_writes_and_leaves_its_connection_writable(
    dbs: tuple[Database, Database],
) -> None:
    reader, writer = dbs
    with pytest.raises(DBAPIError, match=r"(?i)read.?only"), reader.snapshot() as session:
        audit.append(session, AuditKind.NODE_STARTED)
    with reader.session() as session:  # the pooled connection is writable again
        audit.append(session, AuditKind.NODE_STARTED)
    with writer.snapshot() as session:
        assert audit.verify_chain(session).events == 1
