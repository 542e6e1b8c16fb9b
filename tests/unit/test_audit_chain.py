from pathlib import Path

from sqlalchemy import update

from scpnode import audit
from scpnode.db import Database
from scpnode.db.models import AuditEventRow
from scpnode.domain import AuditKind


def make_db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path}/audit.db")
    db.upgrade()
    db.upgrade()  # safe twice
    return db


def test_chain_verifies_and_detects_tampering(tmp_path: Path) -> None:
    db = make_db(tmp_path)
    with db.session() as s:
        for i in range(5):
            audit.append(s, AuditKind.STUDY_COMPLETE, study_uid="1.2.3", reason=f"r{i}")
    with db.session() as s:
        check = audit.verify_chain(s)
    assert check.ok and check.events == 5
    with db.session() as s:
        s.execute(
            update(AuditEventRow)
            .where(AuditEventRow.seq == 3)
            .values(detail='{"reason": "edited"}')
        )
    with db.session() as s:
        check = audit.verify_chain(s)
    assert not check.ok and check.first_broken_seq == 3 and "hash" in (check.problem or "")


def test_deleting_the_last_event_is_detected(tmp_path: Path) -> None:
    db = make_db(tmp_path)
    with db.session() as s:
        for _ in range(3):
            audit.append(s, AuditKind.NODE_STARTED)
    with db.session() as s:
        s.query(AuditEventRow).filter(AuditEventRow.seq == 3).delete()
    with db.session() as s:
        assert not audit.verify_chain(s).ok


def test_rolled_back_events_leave_no_gap(tmp_path: Path) -> None:
    db = make_db(tmp_path)
    with db.session() as s:
        audit.append(s, AuditKind.NODE_STARTED)
    try:
        with db.session() as s:
            audit.append(s, AuditKind.NODE_STOPPED)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with db.session() as s:
        audit.append(s, AuditKind.NODE_STOPPED)
        assert audit.verify_chain(s).ok
