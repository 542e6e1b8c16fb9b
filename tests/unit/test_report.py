"""The SR builder: content codes, provenance, determinism, character sets and real validators.

Evidence is pydicom's bundled CT_small.dcm, rewritten into a small series with distinct SOP
Instance UIDs and positions and read back header-only, as the pipeline does.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID

from scpnode.domain import Finding, Label, ModelIdentity, NodeIdentity, SliceScore, StudyResult
from scpnode.report.sr import (
    MAX_KEY_SLICES,
    NOT_ANALYSED_HEAD,
    RESEARCH_MARK,
    RESULT_HEAD,
    build_not_analysed_sr,
    build_result_sr,
    is_own_object,
    series_description,
    sr_to_bytes,
)
from scpnode.uids import algorithm_device_uid, derive_uid, node_device_uid

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MODEL = ModelIdentity(name="ctnet10", version="1.2.0", weights_sha256="ab" * 32, synthetic=True)
NODE = NodeIdentity(
    ae_title="SCPNODE", device_uid=node_device_uid("SCPNODE"), software_version="0.1"
)
SERIES_UID = derive_uid("test-sr-series")
SOP_UID = derive_uid("test-sr-instance")
TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _write_series(
    folder: Path, n: int, charset: str | None = None, name: str | None = None
) -> list[Dataset]:
    """`n` header-only slices of one series, written to disk and read back like received ones."""
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    base = pydicom.dcmread(path)
    folder.mkdir(parents=True, exist_ok=True)
    if charset is not None:
        base.SpecificCharacterSet = charset
    if name is not None:
        base.PatientName = name
    slices: list[Dataset] = []
    for i in range(n):
        ds = copy.deepcopy(base)
        uid = UID(derive_uid("ct", str(i)))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 5.0 * i]
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
        slices.append(pydicom.dcmread(folder / f"{i}.dcm", stop_before_pixels=True))
    return slices


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return _write_series(tmp_path_factory.mktemp("ct"), 12)


def _result(slices: list[Dataset], finding: Finding = Finding.PRESENT, k: int = 5) -> StudyResult:
    keys = tuple(
        SliceScore(ds.SOPInstanceUID, ds.SOPClassUID, i, float(i), 0.95 - 0.01 * i)
        for i, ds in enumerate(slices[:k])
    )
    label = Label.COVID19 if finding is Finding.PRESENT else Label.NON_COVID19
    return StudyResult(label, finding, 0.8125, 0.5, "mean of top-k", len(slices), keys)


def _build(evidence: list[Dataset], **overrides: object) -> Dataset:
    kwargs: dict[str, object] = {
        "evidence": evidence,
        "result": _result(evidence),
        "model": MODEL,
        "node": NODE,
        "series_instance_uid": SERIES_UID,
        "sop_instance_uid": SOP_UID,
        "instance_number": 1,
        "now": NOW,
    }
    kwargs.update(overrides)
    return build_result_sr(**kwargs)  # type: ignore[arg-type]


def _not_analysed(evidence: list[Dataset]) -> Dataset:
    return build_not_analysed_sr(
        evidence=evidence,
        reason="no axial series with enough slices",
        model=MODEL,
        node=NODE,
        series_instance_uid=SERIES_UID,
        sop_instance_uid=derive_uid("test-na"),
        instance_number=2,
        now=NOW,
    )


def _read(ds: Dataset) -> Dataset:
    return pydicom.dcmread(BytesIO(sr_to_bytes(ds)))


def _items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of the tree, depth first."""
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from _items(item)


def _name(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodeValue, code.CodingSchemeDesignator


def _find(ds: Dataset, value: str, scheme: str = "DCM") -> list[Dataset]:
    return [i for i in _items(ds) if "ConceptNameCodeSequence" in i and _name(i) == (value, scheme)]


def _covid_evaluation(ds: Dataset) -> str:
    (item,) = _find(ds, "840539006", "SCT")
    return item.ConceptCodeSequence[0].CodeValue


def test_result_sr_round_trip(series: list[Dataset]) -> None:
    result = _result(series)
    sr = _read(_build(series, result=result))
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.file_meta.MediaStorageSOPClassUID == COMPREHENSIVE_3D_SR
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.Modality) == ("UNVERIFIED", "COMPLETE", "SR")
    assert sr.StudyInstanceUID == series[0].StudyInstanceUID
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == (SERIES_UID, SOP_UID)
    assert (sr.Manufacturer, sr.SoftwareVersions) == (NODE.manufacturer, NODE.software_version)
    assert (sr.ContentDate, sr.ContentTime) == ("20240506", "070809")
    assert (sr.InstanceCreationDate, sr.TimezoneOffsetFromUTC) == ("20240506", "+0000")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert _covid_evaluation(sr) == "52101004"
    (finding,) = {i.ConceptCodeSequence[0].CodeValue for i in _find(sr, "121071")}
    assert finding == "840539006"
    (observer,) = _find(sr, "121012")
    assert str(observer.UID) == NODE.device_uid
    (procedure,) = _find(sr, "121058")
    assert procedure.ConceptCodeSequence[0].CodeValue == "25045-6"


def test_probabilities_are_unitless_nums(series: list[Dataset]) -> None:
    result = _result(series)
    sr = _read(_build(series, result=result))
    probabilities = _find(sr, "122157")
    assert len(probabilities) == 1 + len(result.key_slices)
    for num in probabilities:
        value = num.MeasuredValueSequence[0]
        unit = value.MeasurementUnitsCodeSequence[0]
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
    assert float(probabilities[0].MeasuredValueSequence[0].NumericValue) == result.probability
    (threshold,) = _find(sr, "122411")
    assert float(threshold.MeasuredValueSequence[0].NumericValue) == result.threshold
    params = [i.TextValue for i in _find(sr, "111002")]
    assert "aggregation: mean of top-k" in params and "threshold: 0.5" in params


def test_key_slices_are_source_images(series: list[Dataset]) -> None:
    result = _result(series, k=4)
    sr = _read(_build(series, result=result))
    refs = [i.ReferencedSOPSequence[0] for i in _find(sr, "121112")]
    keys = {s.sop_instance_uid for s in result.key_slices}
    assert {r.ReferencedSOPInstanceUID for r in refs} == keys
    assert len(refs) == 2 * len(keys)  # study group + one group per key slice
    assert {r.ReferencedSOPClassUID for r in refs} == {series[0].SOPClassUID}
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert keys <= {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence}


def test_key_slices_are_capped_and_must_be_in_evidence(series: list[Dataset]) -> None:
    sr = _build(series, result=_result(series, k=12))
    assert len(_find(sr, "112039")) == 1 + MAX_KEY_SLICES
    with pytest.raises(ValueError, match="key slice"):
        _build(series[1:], result=_result(series, k=3))


@pytest.mark.parametrize(
    ("finding", "code"),
    [(Finding.ABSENT, "272519000"), (Finding.UNDETERMINED, "373068000")],
)
def test_other_findings(series: list[Dataset], finding: Finding, code: str) -> None:
    sr = _read(_build(series, result=_result(series, finding=finding)))
    assert _covid_evaluation(sr) == code


def test_series_description_marks_ai_research_and_synthetic(series: list[Dataset]) -> None:
    sr = _read(_build(series))
    assert sr.SeriesDescription == f"{RESULT_HEAD} SYNTHETIC {RESEARCH_MARK}"
    assert "AI" in sr.SeriesDescription and "UNVERIFIED" in sr.SeriesDescription
    comments = [i.TextValue for i in _find(sr, "121106")]
    assert any("SYNTHETIC" in c for c in comments)


@pytest.mark.parametrize("head", [RESULT_HEAD, NOT_ANALYSED_HEAD])
@pytest.mark.parametrize("synthetic", [True, False])
@pytest.mark.parametrize("use", ["research; not a medical device", "clinical"])
def test_series_description_fits_lo(head: str, synthetic: bool, use: str) -> None:
    model = ModelIdentity("m", "1", "00", synthetic=synthetic, intended_use=use)
    text = series_description(head, model)
    assert len(text) <= 64
    assert ("SYNTHETIC" in text) is synthetic
    assert (RESEARCH_MARK in text) is model.is_research


def test_contributing_equipment_describes_the_algorithm(series: list[Dataset]) -> None:
    sr = _read(_build(series))
    items = [
        i
        for i in sr.ContributingEquipmentSequence
        if i.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    ]
    assert len(items) == 1
    (item,) = items
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    assert (item.Manufacturer, item.ManufacturerModelName) == (MODEL.manufacturer, MODEL.name)
    assert item.SoftwareVersions == MODEL.version
    assert item.DeviceUID == algorithm_device_uid(MODEL.name, MODEL.weights_sha256)
    assert item.DeviceUID != NODE.device_uid


def test_bytes_are_deterministic_and_follow_the_weights(series: list[Dataset]) -> None:
    assert sr_to_bytes(_build(series)) == sr_to_bytes(_build(series))
    other = ModelIdentity(MODEL.name, MODEL.version, "cd" * 32, synthetic=True)
    assert sr_to_bytes(_build(series, model=other)) != sr_to_bytes(_build(series))


def test_missing_type2_attributes_are_written_empty(series: list[Dataset]) -> None:
    evidence = [copy.deepcopy(ds) for ds in series[:3]]
    for keyword in TYPE2:
        delattr(evidence[0], keyword)
    sr = _read(_build(evidence, result=_result(evidence, k=3)))
    for keyword in TYPE2:
        assert keyword in sr, keyword
        assert sr[keyword].value in ("", None), keyword
    assert "PatientID" not in evidence[0]  # the caller's dataset is left alone


def test_invalid_patient_sex_is_blanked(series: list[Dataset]) -> None:
    evidence = [copy.deepcopy(ds) for ds in series[:2]]
    evidence[0].PatientSex = "X"
    sr = _read(_build(evidence, result=_result(evidence, k=2)))
    assert sr.PatientSex in ("", None)


@pytest.mark.parametrize(
    ("charset", "name", "codec"),
    [("ISO_IR 192", "Müller^Jörg", "utf-8"), ("ISO_IR 100", "Gómez^Ana", "latin-1")],
)
def test_character_sets_are_carried_over(
    tmp_path: Path, charset: str, name: str, codec: str
) -> None:
    evidence = _write_series(tmp_path, 2, charset=charset, name=name)
    raw = sr_to_bytes(_build(evidence, result=_result(evidence, k=2)))
    assert name.encode(codec) in raw
    sr = pydicom.dcmread(BytesIO(raw))
    assert sr.SpecificCharacterSet == charset
    assert str(sr.PatientName) == name


def test_predecessor_is_referenced(series: list[Dataset]) -> None:
    earlier = _read(_build(series, sop_instance_uid=derive_uid("earlier")))
    sr = _read(_build(series, predecessors=[earlier]))
    study = sr.PredecessorDocumentsSequence[0]
    assert study.StudyInstanceUID == earlier.StudyInstanceUID
    ref = study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == earlier.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == COMPREHENSIVE_3D_SR


def test_not_analysed_sr(series: list[Dataset]) -> None:
    sr = _read(_not_analysed(series[:3]))
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.SeriesDescription.startswith(NOT_ANALYSED_HEAD)
    assert RESEARCH_MARK in sr.SeriesDescription
    assert _covid_evaluation(sr) == "373068000"
    texts = [i.TextValue for i in _find(sr, "121106")]
    assert "Not analysed: no axial series with enough slices" in texts
    assert not _find(sr, "122157")
    assert [i.TextValue for i in _find(sr, "111001")] == [MODEL.name]
    assert sr.StudyInstanceUID == series[0].StudyInstanceUID


def test_is_own_object(series: list[Dataset]) -> None:
    assert is_own_object(_read(_build(series)), NODE)
    assert is_own_object(_read(_not_analysed(series[:2])), NODE)
    assert not is_own_object(series[0], NODE)
    other = NodeIdentity(ae_title="OTHER", device_uid=node_device_uid("OTHER"))
    assert is_own_object(_read(_build(series)), other)  # any scpnode's SR


def _validator_sr(kind: str, folder: Path, series: list[Dataset]) -> Path:
    """Write the SR of one kind (result, not analysed, UTF-8 patient name) to a file."""
    if kind == "not_analysed":
        sr = _not_analysed(series[:3])
    elif kind == "utf8":
        utf8 = _write_series(folder / "utf8", 2, charset="ISO_IR 192", name="Müller^Jörg")
        sr = _build(utf8, result=_result(utf8, k=2))
    else:
        sr = _build(series)
    path = folder / f"{kind}.dcm"
    path.write_bytes(sr_to_bytes(sr))
    return path


@pytest.mark.parametrize("kind", ["result", "not_analysed", "utf8"])
def test_dciodvfy_reports_no_errors(tmp_path: Path, series: list[Dataset], kind: str) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    path = _validator_sr(kind, tmp_path, series)
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    output = run.stdout + run.stderr
    errors = [line for line in output.splitlines() if "Error" in line]
    assert not errors, output


@pytest.mark.parametrize("kind", ["result", "not_analysed", "utf8"])
def test_dsrdump_parses(tmp_path: Path, series: list[Dataset], kind: str) -> None:
    if shutil.which("dsrdump") is None:
        pytest.skip("dsrdump (dcmtk) is not installed")
    path = _validator_sr(kind, tmp_path, series)
    run = subprocess.run(["dsrdump", "+Pt", str(path)], capture_output=True, text=True)
    output = run.stdout + run.stderr
    bad = [ln for ln in output.splitlines() if "Error" in ln or "Warning: Invalid" in ln]
    assert run.returncode == 0 and not bad, output
    assert "TID 1501" in output
