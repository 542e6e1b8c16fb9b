"""When is a study complete? DIMSE has no end-of-study signal, so we infer it (DESIGN §7).

Pure: the caller gathers the facts from the database and passes the time in.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

GAP_FACTOR = 1.5  # a step this much larger than the typical one is a missing slice


class SeriesCompleteness(StrEnum):
    COMPLETE = "complete"  # the expected count arrived, positions without a gap
    INCOMPLETE = "incomplete"  # fewer than expected, or a gap: wait for the rest
    UNKNOWN = "unknown"  # no expected count in the headers


@dataclass(frozen=True)
class SeriesProgress:
    """One CT series: its expected count (ImagesInAcquisition) and what arrived."""

    expected: int | None
    received: int
    positions: tuple[float, ...] = ()
    multiframe: bool = False  # an Enhanced CT instance carries its whole series


@dataclass(frozen=True)
class StudyActivity:
    """What we know about the arrivals of one study since it (re)entered `receiving`."""

    last_received_at: datetime
    open_associations: int  # associations that sent instances and have not ended
    last_association_end: datetime | None  # latest end among those that have ended
    series: tuple[SeriesProgress, ...] = field(default_factory=tuple)


def completeness(series: SeriesProgress) -> SeriesCompleteness:
    if series.multiframe:
        return SeriesCompleteness.COMPLETE
    if not series.expected:
        return SeriesCompleteness.UNKNOWN
    if series.received < series.expected or has_gap(series.positions):
        return SeriesCompleteness.INCOMPLETE
    return SeriesCompleteness.COMPLETE


def has_gap(positions: Sequence[float]) -> bool:
    """A step between neighbouring slices well above the typical one: a slice is missing."""
    zs = sorted(set(round(z, 3) for z in positions))
    steps = [b - a for a, b in itertools.pairwise(zs)]
    if len(steps) < 2:
        return False
    typical = sorted(steps)[len(steps) // 2]
    return typical > 0 and max(steps) > GAP_FACTOR * typical


def completion_reason(
    activity: StudyActivity, now: datetime, *, grace_s: float, idle_timeout_s: float
) -> str | None:
    """A reason string when the study should be queued now, else None.

    - every CT series announced how many images it has, all of them arrived and their
      positions leave no gap: complete at once, even while the association is still open;
    - a series known to be incomplete waits (the grace below does not apply to it);
    - every association that sent the study has ended, `grace_s` ago (a scanner sends one
      series per association, back to back: the grace lets the next one start);
    - or nothing arrived for `idle_timeout_s`: the safety net for peers that keep associations
      open, crashed mid-study, lost a slice, or instances reconciled after a restart.
    """
    idle = now - activity.last_received_at
    if idle >= timedelta(seconds=idle_timeout_s):
        return f"idle for {idle.total_seconds():.0f} s (study.idle_timeout_s)"
    states = {completeness(s) for s in activity.series}
    if SeriesCompleteness.INCOMPLETE in states:
        return None
    if states == {SeriesCompleteness.COMPLETE}:
        received = sum(s.received for s in activity.series)
        return f"all {received} expected CT instances received (ImagesInAcquisition)"
    if activity.open_associations:
        return None
    ended = activity.last_association_end or activity.last_received_at
    if now - ended >= timedelta(seconds=grace_s):
        return f"associations ended {grace_s:g} s ago (study.association_grace_s)"
    return None
