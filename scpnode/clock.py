"""The one clock of the node: every timestamp and timer reads it, so tests can pin time."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Aware UTC now. Stored naive-UTC in the database, printed as ISO 8601 with offset."""
    return datetime.now(UTC)
