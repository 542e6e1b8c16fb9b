"""What the SCP tells the recorder: plain records, written to the database off the wire.

The association thread only builds these and drops them on a queue; it never waits for the
database (DESIGN §7: the DB row may follow; start-up reconciliation covers a crash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from scpnode.headers import InstanceHeader
from scpnode.spool import StoreKind


@dataclass(frozen=True)
class AssociationOpened:
    key: int
    calling_aet: str
    called_aet: str
    peer_host: str
    peer_port: int
    at: datetime
    rejected_contexts: tuple[str, ...] = ()


@dataclass(frozen=True)
class AssociationClosed:
    key: int
    outcome: str  # released | aborted
    at: datetime


@dataclass(frozen=True)
class AssociationRejected:
    calling_aet: str
    called_aet: str
    peer_host: str
    peer_port: int
    reason: str
    result: int
    source: int
    diagnostic: int
    at: datetime


@dataclass(frozen=True)
class InstanceReceived:
    key: int
    calling_aet: str
    header: InstanceHeader
    kind: StoreKind
    path: str
    sha256: str
    size: int
    at: datetime
    kept_aside: str | None = None


@dataclass(frozen=True)
class InstanceRefused:
    key: int
    calling_aet: str
    sop_instance_uid: str
    sop_class_uid: str
    status: int
    reason: str
    at: datetime
    study_uid: str | None = field(default=None)


@dataclass(frozen=True)
class ConnectionDropped:
    """A connection that closed before any valid A-ASSOCIATE-RQ (junk, a probe, failed TLS)."""

    peer_host: str
    peer_port: int
    at: datetime


Record = (
    AssociationOpened
    | AssociationClosed
    | AssociationRejected
    | InstanceReceived
    | InstanceRefused
    | ConnectionDropped
)
