"""Audit events as IHE ATNA / DICOM audit messages (PS3.15 A.5), one JSON object per line.

A site's audit record repository speaks ATNA, not our tables. Each line carries the DICOM
audit message structure (EventIdentification, ActiveParticipant, AuditSourceIdentification,
ParticipantObjectIdentification) in JSON, plus our own event (sequence, kind, hash) so that a
line can be checked against `scpnode audit verify`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from scpnode.domain import AuditKind

# (EventID code, meaning, EventActionCode, EventTypeCode or None)
_APP = ("110100", "Application Activity")
_TRANSFER = ("110104", "DICOM Instances Transferred")
_ACCESS = ("110103", "DICOM Instances Accessed")
_ALERT = ("110113", "Security Alert")
_MAP: dict[str, tuple[tuple[str, str], str, tuple[str, str] | None]] = {
    AuditKind.NODE_STARTED: (_APP, "E", ("110120", "Application Start")),
    AuditKind.NODE_STOPPED: (_APP, "E", ("110121", "Application Stop")),
    AuditKind.ASSOCIATION_REJECTED: (_ALERT, "E", ("110126", "Node Authentication")),
    AuditKind.CONTEXT_REJECTED: (_TRANSFER, "C", None),
    AuditKind.INSTANCE_STORED: (_TRANSFER, "C", None),
    AuditKind.INSTANCE_REPLACED: (_TRANSFER, "U", None),
    AuditKind.INSTANCE_REJECTED: (_TRANSFER, "C", None),
    AuditKind.INSTANCE_RECONCILED: (_TRANSFER, "C", None),
    AuditKind.STUDY_RESULT: (_ACCESS, "R", None),
    AuditKind.SR_CREATED: (_ACCESS, "C", None),
    AuditKind.DELIVERED: (_TRANSFER, "R", None),
    AuditKind.DELIVERY_ATTEMPT: (_TRANSFER, "R", None),
    AuditKind.DELIVERY_FAILED: (_TRANSFER, "R", None),
    AuditKind.DELIVERY_REQUEUED: (_APP, "E", None),
    AuditKind.SPOOL_PURGED: (_ACCESS, "D", None),
}
_FAILURES = {AuditKind.ASSOCIATION_REJECTED: "4", AuditKind.CONTEXT_REJECTED: "4",
             AuditKind.INSTANCE_REJECTED: "4", AuditKind.DELIVERY_ATTEMPT: "4",
             AuditKind.DELIVERY_FAILED: "8"}  # fmt: skip


def message(event: dict[str, Any], node_ae: str, device_uid: str) -> dict[str, Any] | None:
    """The audit message for one event (as `audit_views.list_events` returns it), or None
    for internal events that have no ATNA counterpart."""
    mapped = _MAP.get(event["kind"])
    if mapped is None:
        return None
    (code, meaning), action, event_type = mapped
    identification: dict[str, Any] = {
        "EventID": _code(code, meaning), "EventActionCode": action,
        "EventDateTime": event["ts"], "EventOutcomeIndicator": _FAILURES.get(event["kind"], "0"),
    }  # fmt: skip
    if event_type:
        identification["EventTypeCode"] = [_code(*event_type)]
    return {
        "EventIdentification": identification,
        "ActiveParticipant": _participants(event, node_ae),
        "AuditSourceIdentification": {
            "AuditSourceID": device_uid,
            "AuditEnterpriseSiteID": node_ae,
        },
        "ParticipantObjectIdentification": _objects(event),
        "scpnode": {"seq": event["seq"], "kind": event["kind"], "detail": event["detail"]},
    }


def _code(code: str, meaning: str) -> dict[str, str]:
    return {"csd-code": code, "codeSystemName": "DCM", "originalText": meaning}


def _participants(event: dict[str, Any], node_ae: str) -> list[dict[str, Any]]:
    detail = event["detail"]
    us = {"UserID": node_ae, "UserIsRequestor": False,
          "RoleIDCode": _code("110153", "Source Role ID")}  # fmt: skip
    peer_ae = detail.get("calling_aet") or detail.get("destination") or detail.get("actor")
    if not peer_ae:
        return [us]
    peer: dict[str, Any] = {"UserID": peer_ae, "UserIsRequestor": True}
    if "peer" in detail:
        peer["NetworkAccessPointID"] = str(detail["peer"]).rsplit(":", 1)[0]
        peer["NetworkAccessPointTypeCode"] = "2"  # IP address
    return [peer, us]


def _objects(event: dict[str, Any]) -> list[dict[str, Any]]:
    study = event.get("study_instance_uid")
    if not study:
        return []
    return [{"ParticipantObjectID": study, "ParticipantObjectTypeCode": "2",
             "ParticipantObjectTypeCodeRole": "3",
             "ParticipantObjectIDTypeCode": _code("110180", "Study Instance UID")}]  # fmt: skip


def json_lines(events: list[dict[str, Any]], node_ae: str, device_uid: str) -> Iterator[str]:
    for event in events:
        msg = message(event, node_ae, device_uid)
        if msg is not None:
            yield json.dumps(msg, sort_keys=True, default=str)
