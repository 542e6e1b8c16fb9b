from datetime import UTC, datetime, timedelta

from scpnode.completion import (
    SeriesCompleteness,
    SeriesProgress,
    StudyActivity,
    completeness,
    completion_reason,
    has_gap,
)

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


def steps(n: int, missing: int | None = None) -> tuple[float, ...]:
    return tuple(float(i) * 2.5 for i in range(n) if i != missing)


def progress(expected: int | None, n: int, missing: int | None = None) -> SeriesProgress:
    zs = steps(n, missing)
    return SeriesProgress(expected=expected, received=len(zs), positions=zs)


def test_expected_count_reached_completes_while_the_association_is_open() -> None:
    a = StudyActivity(
        T0, open_associations=1, last_association_end=None, series=(progress(40, 40),)
    )
    assert "expected" in (reason(a, 0) or "")


def test_a_missing_slice_waits_for_the_idle_timer_not_the_grace() -> None:
    gap = StudyActivity(T0, 0, T0, series=(progress(40, 40, missing=17),))
    assert completeness(gap.series[0]) == SeriesCompleteness.INCOMPLETE
    assert reason(gap, 30) is None and "idle" in (reason(gap, 60) or "")
    short = StudyActivity(T0, 0, T0, series=(progress(40, 39),))
    assert reason(short, 30) is None


def test_unknown_counts_fall_back_to_the_grace() -> None:
    a = StudyActivity(T0, 0, T0, series=(progress(None, 40), progress(20, 20)))
    assert reason(a, 1) is None and "grace" in (reason(a, 2.5) or "")
    enhanced = StudyActivity(T0, 1, None, series=(SeriesProgress(None, 1, multiframe=True),))
    assert "expected" in (reason(enhanced, 0) or "")


def test_gaps() -> None:
    assert not has_gap(steps(10)) and has_gap(steps(10, missing=4))
    assert not has_gap((0.0, 5.0)) and not has_gap(())
