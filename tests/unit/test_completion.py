from datetime import UTC, datetime, timedelta

from scpnode.completion import StudyActivity, completion_reason

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def reason(activity: StudyActivity, after_s: float) -> str | None:
    return completion_reason(
        activity, T0 + timedelta(seconds=after_s), grace_s=2, idle_timeout_s=60
    )


def test_open_association_waits_until_idle_timeout() -> None:
    a = StudyActivity(last_received_at=T0, open_associations=1, last_association_end=None)
    assert reason(a, 30) is None
    assert "idle" in (reason(a, 60) or "")


def test_grace_after_the_last_association_ended() -> None:
    a = StudyActivity(
        last_received_at=T0, open_associations=0, last_association_end=T0 + timedelta(seconds=1)
    )
    assert reason(a, 2.5) is None
    assert "grace" in (reason(a, 3.0) or "")


def test_reconciled_instances_without_association_use_last_arrival() -> None:
    a = StudyActivity(last_received_at=T0, open_associations=0, last_association_end=None)
    assert reason(a, 1) is None and reason(a, 2) is not None
