"""Key Object Selection and heat-map Secondary Capture: content, provenance, determinism,
Type 2 attributes and the real validators (dciodvfy, dsrdump).

Sources are a synthetic study (`scpnode.synth`), written to bytes and read back as the
pipeline reads them: header-only for the KOS evidence, with pixels for the heat maps.
"""

from __future__ import annotations

import copy
import subprocess
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from scpnode import synth
from scpnode.domain import Finding, Label, ModelIdentity, NodeIdentity, SliceScore, StudyResult
from scpnode.headers import is_own_object
from scpnode.report import (
    KEY_OBJECT_SELECTION,
    SECONDARY_CAPTURE,
    build_heatmap,
    build_key_object_selection,
    sr_to_bytes,
)
from scpnode.report.common import RESEARCH_MARK, SYNTHETIC_MARK, TYPE2
from scpnode.report.keyimages import (
    HEATMAP_HEAD,
    KEY_OBJECTS_HEAD,
    lung_window_gray,
    patient_orientation,
)
from scpnode.uids import (
    heatmap_instance_uid,
    heatmap_series_uid,
    key_objects_instance_uid,
    key_objects_series_uid,
    node_device_uid,
)
from tests.conftest import need

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MODEL = ModelIdentity(name="ctnet10", version="1.2.0", weights_sha256="ab" * 32, synthetic=True)
NODE = NodeIdentity(ae_title="SCPNODE", device_uid=node_device_uid("SCPNODE"))
SR_UID = "2.25.1234"


def _read(ds: Dataset, *, pixels: bool = True) -> Dataset:
    return pydicom.dcmread(BytesIO(sr_to_bytes(ds)), stop_before_pixels=not pixels)


@pytest.fixture(scope="module")
def study() -> list[Dataset]:
    """Four full CT slices of a synthetic COVID study, read back from bytes, in slice order."""
    spec = synth.make_study_spec(11, n_slices=4, covid=True)
    slices = [_read(ds) for ds in synth.study_datasets(spec)]
    return sorted(slices, key=lambda ds: int(ds.InstanceNumber))


@pytest.fixture(scope="module")
def headers(study: list[Dataset]) -> list[Dataset]:
    return [_read(ds, pixels=False) for ds in study]


def _result(evidence: list[Dataset], order: tuple[int, ...] = (2, 0, 3)) -> StudyResult:
    """Key slices best first (not in slice order, so the order is checked)."""
    keys = tuple(
        SliceScore(evidence[i].SOPInstanceUID, evidence[i].SOPClassUID, i, 0.0, 0.9 - 0.1 * r)
        for r, i in enumerate(order)
    )
    return StudyResult(Label.COVID19, Finding.PRESENT, 0.93, 0.54, "mean_top_fraction", 4, keys)


def _kos(evidence: list[Dataset], **overrides: object) -> Dataset:
    study_uid = str(evidence[0].StudyInstanceUID)
    kwargs: dict[str, object] = {
        "evidence": evidence,
        "result": None,
        "model": MODEL,
        "node": NODE,
        "series_instance_uid": key_objects_series_uid(study_uid, NODE.device_uid),
        "sop_instance_uid": key_objects_instance_uid(SR_UID),
        "instance_number": 1,
        "now": NOW,
    }
    kwargs.update(overrides)
    kwargs["result"] = kwargs["result"] or _result(evidence)
    return build_key_object_selection(**kwargs)  # type: ignore[arg-type]


def _heat(shape: tuple[int, int]) -> np.ndarray:
    """A smooth blob of heat right of centre, zero elsewhere."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] / np.array(shape).reshape(2, 1, 1)
    return np.clip(1.0 - ((yy - 0.45) ** 2 + (xx - 0.6) ** 2) / 0.01, 0.0, 1.0).astype(np.float32)


def _heatmap(source: Dataset, **overrides: object) -> Dataset:
    kwargs: dict[str, object] = {
        "source": source,
        "heat": _heat((int(source.Rows), int(source.Columns))),
        "probability": 0.914,
        "model": MODEL,
        "node": NODE,
        "series_instance_uid": heatmap_series_uid(str(source.StudyInstanceUID), NODE.device_uid),
        "sop_instance_uid": heatmap_instance_uid(SR_UID, str(source.SOPInstanceUID)),
        "instance_number": 1,
        "now": NOW,
    }
    kwargs.update(overrides)
    return build_heatmap(**kwargs)  # type: ignore[arg-type]


def _items(ds: Dataset, value_type: str) -> list[Dataset]:
    return [i for i in ds.ContentSequence if i.ValueType == value_type]


def _item(ds: Dataset, code: str) -> Dataset:
    """The one root content item whose concept name has this DCM code value."""
    (item,) = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == code]
    return item


def test_key_object_selection_round_trip(headers: list[Dataset]) -> None:
    kos = _read(_kos(headers))
    assert kos.SOPClassUID == KEY_OBJECT_SELECTION and kos.Modality == "KO"
    assert kos.StudyInstanceUID == headers[0].StudyInstanceUID
    assert kos.PatientID == headers[0].PatientID
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in _items(kos, "IMAGE")]
    assert refs == [headers[i].SOPInstanceUID for i in (2, 0, 3)]  # best first
    evidence = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert {r.ReferencedSOPInstanceUID for r in evidence.ReferencedSOPSequence} == set(refs)
    assert _item(kos, "113012").TextValue == (
        "AI key slices for COVID-19 by ctnet10@1.2.0 (p=0.93, threshold 0.54), UNVERIFIED, "
        f"{SYNTHETIC_MARK}, {RESEARCH_MARK}"
    )
    observer_uid = _item(kos, "121012").UID  # Device Observer UID
    assert observer_uid == NODE.device_uid


def test_key_object_selection_marks_and_equipment(headers: list[Dataset]) -> None:
    kos = _read(_kos(headers))
    assert kos.SeriesDescription.startswith(KEY_OBJECTS_HEAD)
    assert SYNTHETIC_MARK in kos.SeriesDescription and RESEARCH_MARK in kos.SeriesDescription
    assert len(kos.SeriesDescription) <= 64
    (algorithm,) = [
        e for e in kos.ContributingEquipmentSequence if e.ManufacturerModelName == "ctnet10"
    ]
    assert algorithm.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    assert algorithm.SoftwareVersions == "1.2.0"
    assert is_own_object(kos) and not is_own_object(headers[0])
    clinical = ModelIdentity("ctnet10", "2.0", "cd" * 32, synthetic=False, intended_use="CE")
    described = _read(_kos(headers, model=clinical))
    assert described.SeriesDescription == KEY_OBJECTS_HEAD
    assert _item(described, "113012").TextValue.endswith("threshold 0.54), UNVERIFIED")


def test_key_object_selection_needs_its_slices(headers: list[Dataset]) -> None:
    with pytest.raises(ValueError, match=r"key slice .* is missing"):
        _kos(headers[1:], result=_result(headers, order=(0,)))
    empty = StudyResult(Label.NON_COVID19, Finding.ABSENT, 0.1, 0.5, "mean_top_fraction", 4)
    with pytest.raises(ValueError, match="at least one slice"):
        _kos(headers, result=empty)


def test_heatmap_round_trip(study: list[Dataset]) -> None:
    source = study[1]
    sc = _read(_heatmap(source))
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesDescription == f"{HEATMAP_HEAD} {SYNTHETIC_MARK} RESEARCH"
    (ref,) = sc.SourceImageSequence
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == source.SOPClassUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert sc.DerivationDescription.startswith(
        "Grad-CAM of ctnet10@1.2.0, slice probability 0.91; not for diagnosis"
    )
    assert sc.ImageComments == sc.DerivationDescription
    assert sc.BurnedInAnnotation == "NO"
    assert [float(v) for v in sc.PixelSpacing] == [float(v) for v in source.PixelSpacing]
    assert list(sc.PatientOrientation) == ["L", "P"]
    assert sc.BodyPartExamined == source.BodyPartExamined
    assert is_own_object(sc)


def test_heatmap_pixels_are_the_lung_window_under_the_heat(study: list[Dataset]) -> None:
    source = study[1]
    heat = _heat((int(source.Rows), int(source.Columns)))
    rgb = _read(_heatmap(source, heat=heat)).pixel_array.astype(int)
    grey = np.round(lung_window_gray(source) * 255).astype(int)
    cold = heat == 0
    assert np.array_equal(rgb[cold], np.repeat(grey[cold][:, None], 3, axis=1))
    hot = heat > 0.9  # jet red, 60 % opaque: red clearly above green and blue
    assert (rgb[hot, 0] > rgb[hot, 2] + 60).all() and (rgb[hot, 0] > rgb[hot, 1] + 40).all()
    with pytest.raises(ValueError, match="shape"):
        _heatmap(source, heat=heat[:-1])


def test_bytes_are_deterministic(study: list[Dataset], headers: list[Dataset]) -> None:
    assert sr_to_bytes(_kos(headers)) == sr_to_bytes(_kos(headers))
    assert sr_to_bytes(_heatmap(study[0])) == sr_to_bytes(_heatmap(study[0]))
    later = datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC)
    assert sr_to_bytes(_kos(headers, now=later)) != sr_to_bytes(_kos(headers))
    assert sr_to_bytes(_heatmap(study[0], now=later)) != sr_to_bytes(_heatmap(study[0]))


def _without_type2(ds: Dataset) -> Dataset:
    stripped = copy.deepcopy(ds)
    for keyword in TYPE2:
        delattr(stripped, keyword)
    return stripped


def test_missing_type2_attributes_are_written_empty(
    study: list[Dataset], headers: list[Dataset]
) -> None:
    evidence = [copy.deepcopy(ds) for ds in headers]
    evidence[2] = _without_type2(evidence[2])  # the best key slice supplies the header
    source = _without_type2(study[0])
    source.PatientSex = "X"
    for obj in (_read(_kos(evidence)), _read(_heatmap(source), pixels=False)):
        for keyword in TYPE2:
            assert keyword in obj, keyword
            assert obj[keyword].value in ("", None), keyword
    assert "PatientID" not in source  # the caller's dataset is left alone


def _validator_files(folder: Path, study: list[Dataset], headers: list[Dataset]) -> list[Path]:
    """KOS and heat map, each also from a source that lacked its Type 2 attributes (and, for
    the heat map, its body part and orientation)."""
    evidence = [*headers[:2], _without_type2(headers[2]), headers[3]]
    bare = _without_type2(study[0])
    del bare.BodyPartExamined, bare.ImageOrientationPatient
    objects = {
        "kos": _kos(headers),
        "kos_type2": _kos(evidence),
        "heatmap": _heatmap(study[0]),
        "heatmap_bare": _heatmap(bare),
    }
    paths = []
    for name, ds in objects.items():
        paths.append(folder / f"{name}.dcm")
        paths[-1].write_bytes(sr_to_bytes(ds))
    return paths


def test_dciodvfy_reports_no_errors(
    tmp_path: Path, study: list[Dataset], headers: list[Dataset]
) -> None:
    dciodvfy = need("dciodvfy")
    for path in _validator_files(tmp_path, study, headers):
        run = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, text=True)
        output = run.stdout + run.stderr
        assert not [ln for ln in output.splitlines() if "Error" in ln], f"{path.name}: {output}"


def test_dsrdump_parses_the_key_object_selection(
    tmp_path: Path, study: list[Dataset], headers: list[Dataset]
) -> None:
    dsrdump = need("dsrdump")
    for path in _validator_files(tmp_path, study, headers)[:2]:
        run = subprocess.run([dsrdump, str(path)], capture_output=True, text=True)
        output = run.stdout + run.stderr
        bad = [ln for ln in output.splitlines() if "Error" in ln or "Warning: Invalid" in ln]
        assert run.returncode == 0 and not bad, output
        assert "Key Object Selection Document" in output and "Of Interest" in output


@pytest.mark.parametrize(
    ("cosines", "expected"),
    [
        ([1, 0, 0, 0, 1, 0], ("L", "P")),  # axial, the usual CT
        ([1, 0, 0, 0, 0, -1], ("L", "F")),  # coronal
        ([0, 1, 0, 0, 0, -1], ("P", "F")),  # sagittal
        ([-0.98, 0.17, 0, 0.17, 0.98, 0.05], ("R", "P")),  # slightly oblique
    ],
)
def test_patient_orientation_from_the_cosines(
    cosines: list[float], expected: tuple[str, str]
) -> None:
    ds = Dataset()
    ds.ImageOrientationPatient = cosines
    assert patient_orientation(ds) == expected


def test_heatmap_without_orientation(study: list[Dataset]) -> None:
    source = copy.deepcopy(study[0])
    del source.ImageOrientationPatient
    sc = _read(_heatmap(source), pixels=False)
    assert "PatientOrientation" in sc and sc.PatientOrientation in ("", None)
