"""Jinja filters: how times, probabilities, sizes and durations read on the console.

Times are shown in UTC with a trailing Z, as stored, so what the admin reads on the page is
what `scpnode audit` prints and what the exports contain.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def when(value: Any) -> str:
    if value in (None, ""):
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return str(moment.strftime("%Y-%m-%d %H:%M:%SZ"))


def probability(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def size(value: Any) -> str:
    if value is None or value < 0:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.0f} %"


FILTERS = {"when": when, "p": probability, "size": size, "duration": duration, "pct": percent}
