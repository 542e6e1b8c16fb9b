from dataclasses import dataclass

from scpnode.scope import CT_IMAGE, ENHANCED_CT, ScopeRules, Verdict, decide


@dataclass(frozen=True)
class InstanceInfo:
    """What an instance row carries, for the scope rules."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    patient_id: str = ""
    modality: str = ""
    body_part: str = ""
    study_description: str = ""
    series_description: str = ""
    protocol_name: str = ""
    image_type: str = ""
    kernel: str = ""
    slice_thickness: float | None = None
    orientation: str = ""
    position: str = ""
    rows: int | None = 512
    columns: int | None = 512


AXIAL = "1\\0\\0\\0\\1\\0"
CORONAL = "1\\0\\0\\0\\0\\-1"
RULES = ScopeRules(min_slices=3)


def series(
    uid: str,
    n: int = 5,
    *,
    kernel: str = "B30f",
    thickness: float = 1.0,
    orientation: str = AXIAL,
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    body_part: str = "CHEST",
    sop_class: str = CT_IMAGE,
    patient: str = "P1",
    spacing: float = 1.0,
) -> list[InstanceInfo]:
    return [
        InstanceInfo(
            sop_instance_uid=f"{uid}.{i + 1}",
            series_instance_uid=uid,
            sop_class_uid=sop_class,
            patient_id=patient,
            modality="CT",
            body_part=body_part,
            image_type=image_type,
            kernel=kernel,
            slice_thickness=thickness,
            orientation=orientation,
            position=f"0\\0\\{i * spacing}",
        )
        for i in range(n)
    ]


def test_no_ct_is_ignored() -> None:
    dose = InstanceInfo("1.1", "1.9", "1.2.840.10008.5.1.4.1.1.88.67", modality="SR")
    assert decide([dose], RULES).verdict == Verdict.IGNORE


def test_head_ct_is_ignored_with_the_body_part() -> None:
    d = decide(series("1.5", body_part="HEAD"), RULES)
    assert d.verdict == Verdict.IGNORE and "HEAD" in d.reason


def test_chest_found_in_descriptions() -> None:
    infos = [
        InstanceInfo(**{**i.__dict__, "body_part": "", "study_description": "CT THORAX"})
        for i in series("1.5")
    ]
    assert decide(infos, RULES).verdict == Verdict.ANALYSE


def test_unusable_series_give_not_analysed_with_every_reason() -> None:
    infos = (
        series("1.1", image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
        + series("1.2", orientation=CORONAL)
        + series("1.3", thickness=8.0)
        + series("1.4", n=2)
        + series("1.6", sop_class=ENHANCED_CT, n=1)
    )
    d = decide(infos, RULES)
    assert d.verdict == Verdict.NOT_ANALYSED
    for words in ("localizer", "not axial", "8 mm", "only 2 slices", "Enhanced CT"):
        assert words in d.reason


def test_mixed_patients_are_not_analysed() -> None:
    d = decide(series("1.1", patient="A") + series("1.2", patient="B"), RULES)
    assert d.verdict == Verdict.NOT_ANALYSED and "mixed patients" in d.reason


def test_prefers_lung_kernel_then_thinner_then_coverage() -> None:
    soft_thin = series("1.1", kernel="B30f", thickness=1.0)
    lung_thick = series("1.2", kernel="B70f", thickness=3.0)
    d = decide(soft_thin + lung_thick, RULES)
    assert d.series_instance_uid == "1.2" and "lung kernel" in d.reason and "preferred" in d.reason
    d = decide(series("1.3", thickness=2.0) + series("1.4", thickness=1.0), RULES)
    assert d.series_instance_uid == "1.4"
    d = decide(series("1.5", spacing=1.0) + series("1.6", spacing=3.0), RULES)
    assert d.series_instance_uid == "1.6"


def test_derived_series_not_used() -> None:
    d = decide(series("1.1", image_type="DERIVED\\SECONDARY\\AXIAL"), RULES)
    assert d.verdict == Verdict.NOT_ANALYSED and "derived" in d.reason


def test_mixed_matrix_sizes_are_not_analysed() -> None:
    members = series("1.1")
    odd = InstanceInfo(
        **{**members[0].__dict__, "sop_instance_uid": "1.1.99", "rows": 256, "columns": 256}
    )
    d = decide([*members, odd], RULES)
    assert d.verdict == Verdict.NOT_ANALYSED and "mixed matrix sizes" in d.reason
    assert "256x256" in d.reason and "512x512" in d.reason
