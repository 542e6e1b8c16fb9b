"""Shared vocabulary of every stage: states, kinds and small immutable records.

Nothing here imports a heavy library, so every module (and every test) can depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# Scope rules (DESIGN §7), shared by the settings defaults and `scope.ScopeRules`.
CHEST_KEYWORDS = ("CHEST", "THORA", "LUNG", "PULM")
LUNG_KERNELS = (
    "LUNG", r"^B[LR]?[5-9]\d", r"^I[5-9]\d", r"^FC[58]\d", r"^L$", r"^Y[A-D]$", "BONEPLUS",
)  # fmt: skip


class StudyState(StrEnum):
    """Life cycle of a study; the last four are derived from its deliveries (DESIGN §4)."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    PROCESSING = "processing"
    REPORTED = "reported"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    NOT_ANALYSED = "not_analysed"
    IGNORED = "ignored"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"


class AssociationOutcome(StrEnum):
    OPEN = "open"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"


class Label(StrEnum):
    """Study decision, spelled as in `ground_truth.csv` and the audit JSON."""

    COVID19 = "covid19"
    NON_COVID19 = "non_covid19"


class Finding(StrEnum):
    """What the SR says about COVID-19 (SCT Present / Absent / Undetermined)."""

    PRESENT = "present"
    ABSENT = "absent"
    UNDETERMINED = "undetermined"


class AuditKind(StrEnum):
    """Every audit event kind; the admin's timeline of a study is built from these."""

    NODE_STARTED = "node_started"
    NODE_STOPPED = "node_stopped"
    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
    ASSOCIATION_RELEASED = "association_released"
    ASSOCIATION_ABORTED = "association_aborted"
    CONNECTION_DROPPED = "connection_dropped"
    CONTEXT_REJECTED = "context_rejected"
    INSTANCE_STORED = "instance_stored"
    INSTANCE_DUPLICATE = "instance_duplicate"
    INSTANCE_REPLACED = "instance_replaced"
    INSTANCE_REJECTED = "instance_rejected"
    INSTANCE_RECONCILED = "instance_reconciled"
    OWN_OBJECT_RECEIVED = "own_object_received"
    STUDY_REOPENED = "study_reopened"
    STUDY_COMPLETE = "study_complete"
    STUDY_IGNORED = "study_ignored"
    STUDY_UNCHANGED = "study_unchanged"
    SERIES_SELECTED = "series_selected"
    STUDY_NOT_ANALYSED = "study_not_analysed"
    JOB_CLAIMED = "job_claimed"
    JOB_RECLAIMED = "job_reclaimed"
    JOB_FAILED = "job_failed"
    INFERENCE_DONE = "inference_done"
    STUDY_RESULT = "study_result"
    SR_CREATED = "sr_created"
    EXTRAS_FAILED = "extras_failed"
    DELIVERY_ATTEMPT = "delivery_attempt"
    DELIVERED = "delivered"
    DELIVERY_FAILED = "delivery_failed"
    DELIVERY_EXPIRED = "delivery_expired"
    DELIVERY_REQUEUED = "delivery_requeued"
    CIRCUIT_OPENED = "circuit_opened"
    CIRCUIT_CLOSED = "circuit_closed"
    SPOOL_PURGED = "spool_purged"
    CLAIMS_RELEASED = "claims_released"
    # the web console's users and their actions (every admin action is audited)
    USER_ADDED = "user_added"
    USER_REMOVED = "user_removed"
    USER_PASSWORD_SET = "user_password_set"  # noqa: S105 (an event name, not a secret)
    USER_LOGIN = "user_login"
    USER_LOGIN_FAILED = "user_login_failed"
    USER_LOGOUT = "user_logout"
    CHAIN_VERIFIED = "chain_verified"
    SR_DOWNLOADED = "sr_downloaded"


@dataclass(frozen=True)
class SliceScore:
    """One analysed slice: where it is (z, index in the sorted series) and what the model said."""

    sop_instance_uid: str
    sop_class_uid: str
    index: int
    z: float
    probability: float


@dataclass(frozen=True)
class StudyResult:
    """The study decision and how it was reached (method and threshold are reported).

    `label` is None when the probability falls in the indeterminate band (finding Undetermined).
    """

    label: Label | None
    finding: Finding
    probability: float
    threshold: float
    aggregation: str
    n_slices: int
    key_slices: tuple[SliceScore, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ModelIdentity:
    """Who made the decision; written into every SR and audit row."""

    name: str
    version: str
    weights_sha256: str
    synthetic: bool
    intended_use: str = "research; not a medical device"
    manufacturer: str = "scpnode"

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def is_research(self) -> bool:
        return "research" in self.intended_use.lower()


@dataclass(frozen=True)
class NodeIdentity:
    """The node as a DICOM device: stable across restarts and weight changes."""

    ae_title: str
    device_uid: str
    manufacturer: str = "scpnode"
    model_name: str = "scpnode"
    software_version: str = "0"
