"""Scope and series selection (DESIGN §7): what to analyse in a study, and why.

Pure functions over header summaries, so every rule is unit-tested and every decision comes
with a reason the admin can read in the audit log.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from scpnode.domain import CHEST_KEYWORDS, LUNG_KERNELS

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
CT_CLASSES = (CT_IMAGE, ENHANCED_CT)
AXIAL_MIN_COS = 0.95  # |normal . z| for a series to count as axial (about 18 degrees)


class InstanceInfo(Protocol):
    """The header facts selection reads; the instance rows of the audit DB have them all."""

    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def series_instance_uid(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def modality(self) -> str: ...
    @property
    def body_part(self) -> str: ...
    @property
    def study_description(self) -> str: ...
    @property
    def series_description(self) -> str: ...
    @property
    def protocol_name(self) -> str: ...
    @property
    def image_type(self) -> str: ...
    @property
    def kernel(self) -> str: ...
    @property
    def slice_thickness(self) -> float | None: ...
    @property
    def orientation(self) -> str: ...
    @property
    def position(self) -> str: ...
    @property
    def rows(self) -> int | None: ...
    @property
    def columns(self) -> int | None: ...


@dataclass(frozen=True)
class ScopeRules:
    chest_keywords: tuple[str, ...] = CHEST_KEYWORDS
    lung_kernels: tuple[str, ...] = LUNG_KERNELS
    min_slices: int = 10
    thickness_range_mm: tuple[float, float] = (0.5, 5.0)


class Verdict(StrEnum):
    IGNORE = "ignore"
    NOT_ANALYSED = "not_analysed"
    ANALYSE = "analyse"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    series_instance_uid: str | None = None


def decide(instances: Sequence[InstanceInfo], rules: ScopeRules) -> Decision:
    """Ignore (out of scope), not analysed (in scope, nothing usable) or analyse one series."""
    ct = [i for i in instances if i.sop_class_uid in CT_CLASSES or i.modality == "CT"]
    if not ct:
        return Decision(Verdict.IGNORE, "no CT images in the study")
    chest = [i for i in ct if _is_chest(i, rules)]
    if not chest:
        parts = sorted({i.body_part or i.study_description or "unknown" for i in ct})
        return Decision(
            Verdict.IGNORE, f"not a chest CT (body part/description: {', '.join(parts)})"
        )
    patients = sorted({i.patient_id for i in ct if i.patient_id})
    if len(patients) > 1:
        return Decision(Verdict.NOT_ANALYSED, f"mixed patients in one study ({len(patients)} IDs)")
    by_series: dict[str, list[InstanceInfo]] = defaultdict(list)
    for info in ct:
        by_series[info.series_instance_uid].append(info)
    usable, problems = [], []
    for series_uid, members in sorted(by_series.items()):
        problem = series_problem(members, rules)
        if problem:
            problems.append(f"series {series_uid}: {problem}")
        else:
            usable.append((series_uid, members))
    if not usable:
        return Decision(Verdict.NOT_ANALYSED, "no usable series: " + "; ".join(problems))
    best_uid, best = min(usable, key=lambda item: _preference(item[1], rules))
    reason = _describe(best, rules)
    if len(usable) > 1:
        reason += (
            f"; preferred over {len(usable) - 1} other usable series (lung kernel, "
            "then thinner slices, then z coverage)"
        )
    return Decision(Verdict.ANALYSE, reason, best_uid)


def series_problem(members: Sequence[InstanceInfo], rules: ScopeRules) -> str | None:
    """Why a CT series cannot be analysed, or None when it can."""
    first = members[0]
    image_type = [v.upper() for v in first.image_type.split("\\")]
    if first.sop_class_uid == ENHANCED_CT:
        return "Enhanced CT (multi-frame) is stored but not analysed yet"
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer"
    if image_type and image_type[0] == "DERIVED":
        return "derived images (not ORIGINAL)"
    if not is_axial(first.orientation):
        return "not axial"
    thickness = first.slice_thickness
    low, high = rules.thickness_range_mm
    if thickness is not None and not low <= thickness <= high:
        return f"slice thickness {thickness:g} mm outside the model's {low:g}-{high:g} mm"
    sizes = {(m.rows, m.columns) for m in members}
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c}" for r, c in sorted(sizes, key=str))
        return f"mixed matrix sizes in one series ({shown})"
    if len(members) < rules.min_slices:
        return f"only {len(members)} slices (study.min_slices = {rules.min_slices})"
    return None


def is_axial(orientation: str) -> bool:
    normal = _normal(orientation)
    return normal is not None and abs(normal[2]) >= AXIAL_MIN_COS


def is_lung_kernel(kernel: str, rules: ScopeRules) -> bool:
    text = kernel.upper()
    return any(re.search(pattern, text) for pattern in rules.lung_kernels)


def z_positions(members: Sequence[InstanceInfo]) -> list[float]:
    """Positions along the slice normal (ImagePositionPatient projected), where known."""
    normal = _normal(members[0].orientation) or (0.0, 0.0, 1.0)
    zs = [_project(m.position, normal) for m in members]
    return [z for z in zs if z is not None]


def z_coverage_mm(members: Sequence[InstanceInfo]) -> float:
    values = z_positions(members)
    return max(values) - min(values) if values else 0.0


def _preference(
    members: Sequence[InstanceInfo], rules: ScopeRules
) -> tuple[int, float, float, str]:
    first = members[0]
    return (
        0 if is_lung_kernel(first.kernel, rules) else 1,
        first.slice_thickness if first.slice_thickness is not None else math.inf,
        -z_coverage_mm(members),
        first.series_instance_uid,
    )


def _describe(members: Sequence[InstanceInfo], rules: ScopeRules) -> str:
    first = members[0]
    kernel = first.kernel or "unknown"
    lung = "lung kernel" if is_lung_kernel(first.kernel, rules) else "non-lung kernel"
    thickness = f"{first.slice_thickness:g} mm" if first.slice_thickness is not None else "? mm"
    return (
        f"series {first.series_instance_uid}: {len(members)} axial slices, {lung} "
        f"{kernel}, {thickness}, z coverage {z_coverage_mm(members):.0f} mm"
    )


def _is_chest(info: InstanceInfo, rules: ScopeRules) -> bool:
    text = " ".join(
        (info.body_part, info.study_description, info.series_description, info.protocol_name)
    ).upper()
    return any(keyword in text for keyword in rules.chest_keywords)


def _floats(text: str) -> list[float] | None:
    try:
        return [float(v) for v in text.split("\\")] if text else None
    except ValueError:
        return None


def _normal(orientation: str) -> tuple[float, float, float] | None:
    values = _floats(orientation)
    if values is None or len(values) != 6:
        return None
    r, c = values[:3], values[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in n))
    return None if norm == 0 else (n[0] / norm, n[1] / norm, n[2] / norm)


def _project(position: str, normal: tuple[float, float, float]) -> float | None:
    values = _floats(position)
    if values is None or len(values) != 3:
        return None
    return sum(p * n for p, n in zip(values, normal, strict=True))
