import random

from scpnode.delivery import RetryPolicy, derive_state
from scpnode.domain import StudyState
from scpnode.send import Outcome, classify_status


def test_status_classification() -> None:
    assert classify_status(0x0000) == Outcome.DELIVERED
    assert classify_status(0xB000) == Outcome.DELIVERED  # warnings count as delivered
    assert classify_status(0xA700) == Outcome.TRANSIENT
    assert classify_status(0xA900) == Outcome.PERMANENT
    assert classify_status(0xC000) == Outcome.PERMANENT
    assert classify_status(0x0122) == Outcome.PERMANENT


def test_study_status_from_deliveries() -> None:
    assert derive_state([]) == StudyState.REPORTED
    assert derive_state(["delivered", "delivered"]) == StudyState.DELIVERED
    assert derive_state(["delivered", "pending"]) == StudyState.REPORTED
    assert derive_state(["failed", "pending"]) == StudyState.REPORTED
    assert derive_state(["failed", "delivered"]) == StudyState.FAILED
    assert derive_state(["expired", "delivered"]) == StudyState.EXPIRED
    assert derive_state(["expired", "failed"]) == StudyState.FAILED


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    policy, rng = RetryPolicy(initial_s=5, max_s=60, jitter=0.2), random.Random(1)
    delays = [policy.delay(n, rng).total_seconds() for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        base = min(60, 5 * 2 ** (n - 1))
        assert 0.8 * base <= d <= 1.2 * base
