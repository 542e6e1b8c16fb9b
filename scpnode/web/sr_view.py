"""An SR from the outbox as the study page shows it: its content tree as indented lines
(`scpnode.sr_text`, the same text the demo prints) and the key slices it references."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from scpnode.sr_text import referenced_images, sr_lines


@dataclass(frozen=True)
class SrView:
    lines: list[str] = field(default_factory=list)
    key_uids: tuple[str, ...] = ()
    error: str | None = None


def read_sr(path: str | Path) -> SrView:
    """The SR at `path`; a missing or unreadable file is shown as such, never a 500."""
    try:
        ds = pydicom.dcmread(path)
        return SrView(sr_lines(ds), tuple(referenced_images(ds)))
    except (OSError, InvalidDicomError, AttributeError, KeyError, ValueError) as exc:
        return SrView(error=f"SR file not readable: {type(exc).__name__}: {exc}")
