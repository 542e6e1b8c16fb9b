"""Optional objects beside the SR (`[report]`): a Key Object Selection of the key slices and
Grad-CAM heat-map overlays. Extras never hold up the report: if one cannot be built, the SR
still goes out and the audit says why the extra did not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from scpnode import report, uids
from scpnode.config import ReportSettings
from scpnode.domain import ModelIdentity, NodeIdentity, SliceScore, StudyResult

log = logging.getLogger(__name__)
HEATMAPS_PER_VERSION = 100  # heat-map instance numbers: 1.. for the first SR, 101.. for the next


def build_extras(
    *, settings: ReportSettings, sr: Dataset, result: StudyResult, evidence: Sequence[Dataset],
    heat: Mapping[str, np.ndarray], paths: Mapping[str, Path], model: ModelIdentity,
    node: NodeIdentity, now: datetime,
) -> list[tuple[str, Dataset]]:  # fmt: skip
    """(kind, dataset) for every enabled extra; raises only on programming errors upstream."""
    study_uid = str(sr.StudyInstanceUID)
    objects: list[tuple[str, Dataset]] = []
    if settings.key_object_selection:
        kos = report.build_key_object_selection(
            evidence=evidence, result=result, model=model, node=node,
            series_instance_uid=uids.key_objects_series_uid(study_uid, node.device_uid),
            sop_instance_uid=uids.key_objects_instance_uid(str(sr.SOPInstanceUID)),
            instance_number=int(sr.InstanceNumber), now=now,
        )  # fmt: skip
        objects.append(("key_objects", kos))
    if settings.heatmaps:
        for rank, score in enumerate(result.key_slices):
            objects.append(("heatmap", _heatmap(sr, score, rank, heat, paths, model, node, now)))
    return objects


def _heatmap(
    sr: Dataset, score: SliceScore, rank: int, heat: Mapping[str, np.ndarray],
    paths: Mapping[str, Path], model: ModelIdentity, node: NodeIdentity, now: datetime,
) -> Dataset:  # fmt: skip
    source = pydicom.dcmread(paths[score.sop_instance_uid])
    number = (int(sr.InstanceNumber) - 1) * HEATMAPS_PER_VERSION + rank + 1
    return report.build_heatmap(
        source=source, heat=heat[score.sop_instance_uid], probability=score.probability,
        model=model, node=node,
        series_instance_uid=uids.heatmap_series_uid(str(sr.StudyInstanceUID), node.device_uid),
        sop_instance_uid=uids.heatmap_instance_uid(str(sr.SOPInstanceUID), score.sop_instance_uid),
        instance_number=number, now=now,
    )  # fmt: skip
