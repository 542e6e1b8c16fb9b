"""DICOM UID grammar and the node's derived (deterministic) UIDs.

UIDs go into filesystem paths, so they are checked against the PS3.5 §9.1 grammar before use.
Our own UIDs are derived (``2.25.`` + a UUIDv5) so that reprocessing the same input yields the
same UIDs and a PACS never shows a duplicate report.
"""

from __future__ import annotations

import re
import uuid

# PS3.5 §9.1: components of digits, no leading zero (except "0" itself), dot separated, <= 64.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_NAMESPACE = uuid.UUID("7f0c1d2e-5b8a-5e41-9c3a-5c706e6f6465")  # fixed forever: "scpnode"


def is_valid_uid(value: object) -> bool:
    """True when `value` is a string that follows the DICOM UID grammar."""
    return isinstance(value, str) and len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def derive_uid(*parts: str) -> str:
    """A UID that depends only on `parts` (``2.25`` form, PS3.5 §B.2)."""
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def node_device_uid(ae_title: str) -> str:
    """The device observer UID of a node: stable as long as its AE title is."""
    return derive_uid("node-device", ae_title)


def algorithm_device_uid(model_name: str, weights_sha256: str) -> str:
    """The algorithm's Device UID: changes whenever the weights change (IHE AIR)."""
    return derive_uid("algorithm", model_name, weights_sha256)


def sr_series_uid(study_uid: str, node_device: str) -> str:
    """All reports of one node on one study share a series."""
    return derive_uid("sr-series", study_uid, node_device)


def sr_instance_uid(study_uid: str, input_fingerprint: str, model_tag: str) -> str:
    """Same study, same analysed instances, same model: same SOP Instance UID."""
    return derive_uid("sr-instance", study_uid, input_fingerprint, model_tag)


def key_objects_series_uid(study_uid: str, node_device: str) -> str:
    return derive_uid("kos-series", study_uid, node_device)


def key_objects_instance_uid(sr_uid: str) -> str:
    """One Key Object Selection per SR: it follows the SR's identity."""
    return derive_uid("kos-instance", sr_uid)


def heatmap_series_uid(study_uid: str, node_device: str) -> str:
    return derive_uid("heatmap-series", study_uid, node_device)


def heatmap_instance_uid(sr_uid: str, source_sop_uid: str) -> str:
    return derive_uid("heatmap-instance", sr_uid, source_sop_uid)
