from datetime import UTC, datetime, timedelta

from scpnode.breaker import Change, CircuitBreaker

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_opens_after_consecutive_transient_failures_and_probes_once() -> None:
    breaker = CircuitBreaker(failures=3, cooldown_s=60)
    assert [breaker.record("pacs", True, at(i)) for i in range(3)] == [None, None, Change.OPENED]
    assert breaker.blocked(at(10)) == ["pacs"]
    assert breaker.blocked(at(63)) == []  # cool-down over: one probe may go
    breaker.attempting("pacs", at(63))
    assert breaker.blocked(at(63)) == ["pacs"]  # ... and only one
    assert breaker.record("pacs", True, at(64)) is None  # probe failed: open again
    assert breaker.blocked(at(100)) == ["pacs"] and breaker.blocked(at(125)) == []
    breaker.attempting("pacs", at(125))
    assert breaker.record("pacs", False, at(126)) == Change.CLOSED
    assert breaker.blocked(at(126)) == []


def test_success_resets_the_count_and_destinations_are_independent() -> None:
    breaker = CircuitBreaker(failures=2, cooldown_s=60)
    breaker.record("a", True, at(0))
    breaker.record("a", False, at(1))
    assert breaker.record("a", True, at(2)) is None  # count restarted
    assert breaker.record("b", True, at(3)) is None
    assert breaker.record("b", True, at(4)) == Change.OPENED
    assert breaker.blocked(at(5)) == ["b"]


def test_a_permanent_failure_means_the_pacs_answered() -> None:
    breaker = CircuitBreaker(failures=1, cooldown_s=60)
    assert breaker.record("pacs", True, at(0)) == Change.OPENED
    assert breaker.record("pacs", False, at(61)) == Change.CLOSED
