"""When is a study complete? DIMSE has no end-of-study signal, so we infer it (DESIGN §7).

Pure: the caller gathers the facts from the database and passes the time in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class StudyActivity:
    """What we know about the arrivals of one study since it (re)entered `receiving`."""

    last_received_at: datetime
    open_associations: int  # associations that sent instances and have not ended
    last_association_end: datetime | None  # latest end among those that have ended


def completion_reason(
    activity: StudyActivity, now: datetime, *, grace_s: float, idle_timeout_s: float
) -> str | None:
    """A reason string when the study should be queued now, else None.

    - every association that sent it has ended, `grace_s` ago (a scanner sends one series per
      association, back to back: the grace lets the next one start);
    - or nothing arrived for `idle_timeout_s`: the safety net for peers that keep associations
      open, crashed mid-study, or instances reconciled after a restart.
    """
    idle = now - activity.last_received_at
    if idle >= timedelta(seconds=idle_timeout_s):
        return f"idle for {idle.total_seconds():.0f} s (study.idle_timeout_s)"
    if activity.open_associations:
        return None
    ended = activity.last_association_end or activity.last_received_at
    if now - ended >= timedelta(seconds=grace_s):
        return f"associations ended {grace_s:g} s ago (study.association_grace_s)"
    return None
