"""Synthetic chest-CT phantoms: determinism, anatomy in HU, findings, DICOM headers, CSV."""

from __future__ import annotations

import csv
import dataclasses
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    XRayRadiationDoseSRStorage,
)

from scpnode.domain import Label
from scpnode.phantom import Phantom, plan_body
from scpnode.synth import (
    ScannerProfile,
    StudySpec,
    ct_dataset,
    dose_report_dataset,
    extra_series,
    head_ct_spec,
    localizer_dataset,
    make_study_spec,
    phantom_for,
    render_masks,
    render_slice,
    render_volume,
    screenshot_dataset,
    slice_grid,
    study_datasets,
    synth,
    training_slices,
    write_dataset,
    write_study,
)
from scpnode.uids import is_valid_uid


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def _slice_at(spec: StudySpec, t: float) -> int:
    plan = phantom_for(spec).plan
    return int(np.argmin([abs(plan.t(z) - t) for z in spec.z_positions]))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.dcm"))}


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_arrays(tmp_path: Path) -> None:
    spec = make_study_spec(42, n_slices=3)
    assert make_study_spec(42, n_slices=3) == spec
    write_study(spec, tmp_path / "a")
    write_study(make_study_spec(42, n_slices=3), tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 3
    assert a == b
    v1, f1 = render_volume(spec, matrix=64)
    v2, f2 = render_volume(spec, matrix=64)
    assert np.array_equal(v1, v2)
    assert np.array_equal(f1, f2)


def test_different_seeds_differ() -> None:
    s1, s2 = make_study_spec(1, n_slices=3), make_study_spec(2, n_slices=3)
    assert s1.study_instance_uid != s2.study_instance_uid
    assert s1.series_instance_uid != s2.series_instance_uid
    assert s1.patient_id != s2.patient_id
    v1, _ = render_volume(s1, matrix=64)
    v2, _ = render_volume(s2, matrix=64)
    assert not np.array_equal(v1, v2)


def test_covid_decided_by_seed_and_overrides() -> None:
    labels = {make_study_spec(s, n_slices=1).label for s in range(30)}
    assert labels == {Label.COVID19, Label.NON_COVID19}
    assert make_study_spec(5, covid=True, n_slices=1).finding == "covid"
    spec = make_study_spec(5, covid=False, finding="nodule", n_slices=1)
    assert (spec.label, spec.finding) == (Label.NON_COVID19, "nodule")
    assert make_study_spec(5, finding="covid", n_slices=1).label == Label.COVID19
    with pytest.raises(ValueError, match="contradicts"):
        make_study_spec(5, covid=True, finding="emphysema")
    with pytest.raises(ValueError, match="finding"):
        make_study_spec(5, finding="pneumothorax")


# --- anatomy and findings ------------------------------------------------------------------


def test_mid_chest_lung_is_about_minus_850() -> None:
    spec = make_study_spec(31, covid=False, finding="normal", n_slices=40)
    maps = render_slice(spec, phantom_for(spec), slice_grid(spec, 256), _slice_at(spec, 0.55))
    assert maps.lung_area > 0.1 * 256 * 256
    assert -885 < float(maps.hu[maps.lung].mean()) < -815
    assert not maps.covid.any()
    assert maps.lesion_fraction == 0.0


def test_slices_above_and_below_the_lungs_have_no_lung() -> None:
    spec = make_study_spec(8, n_slices=30)
    areas = [m.lung_area for m in render_masks(spec, matrix=64)]
    assert areas[0] == 0 and areas[-1] == 0
    assert sum(a > 0 for a in areas) >= 20
    lung = [i for i, a in enumerate(areas) if a > 0]
    assert areas[lung[0] : lung[-1] + 1].count(0) == 0  # one contiguous lung range


def test_ggo_hounsfield_range() -> None:
    plan = plan_body(3, "covid", 0.6)
    phantom = Phantom(plan)
    grid = slice_grid(make_study_spec(3, covid=True, n_slices=1), 256)
    les = max(plan.lesions, key=lambda le: le.radii[0] * (le.core == 0))
    maps = phantom.render(les.center[2], grid)  # noiseless
    ggo = maps.hu[maps.covid]
    assert ggo.size > 50
    assert -700 <= float(np.median(ggo)) <= -300
    assert float(np.mean((ggo >= -720) & (ggo <= -250))) > 0.6


@pytest.mark.parametrize("seed", [11, 21])
def test_covid_lesions_bilateral_peripheral_posterior(seed: int) -> None:
    spec = make_study_spec(seed, covid=True, n_slices=24)
    plan, grid = phantom_for(spec).plan, slice_grid(spec, 128)
    xs, ys = grid.xs[None, :], grid.ys[:, None]
    les_x, les_y, les_r, lung_r, lung_y = [], [], [], [], []
    for z, m in zip(spec.z_positions, render_masks(spec, matrix=128), strict=True):
        if not m.lung_area:
            continue
        ax, ba, bp = plan.cavity(plan.t(z))
        r = np.sqrt((xs / ax) ** 2 + (ys / np.where(ys < 0, ba, bp)) ** 2)
        yy = np.broadcast_to(ys, m.lung.shape)
        les_x.append(np.broadcast_to(xs, m.lung.shape)[m.covid])
        les_r.append(r[m.covid])
        les_y.append(yy[m.covid])
        lung_r.append(r[m.lung])
        lung_y.append(yy[m.lung])
    lx = np.concatenate(les_x)
    assert (lx < 0).sum() > 20 and (lx > 0).sum() > 20  # both lungs
    assert np.median(np.concatenate(les_r)) > np.median(np.concatenate(lung_r)) + 0.1
    assert np.mean(np.concatenate(les_y)) > np.mean(np.concatenate(lung_y))  # posterior


def test_covid_fraction_per_slice_and_non_covid_zero() -> None:
    covid = make_study_spec(11, covid=True, n_slices=20)
    _, frac = render_volume(covid, matrix=64)
    assert frac.max() > 0.02 and (frac == 0).any()
    for finding in ("normal", "nodule", "emphysema", "lobar_consolidation"):
        spec = make_study_spec(12, finding=finding, n_slices=20)
        maps = list(render_masks(spec, matrix=64))
        assert all(m.lesion_fraction == 0.0 for m in maps)
        assert any(m.other.any() for m in maps) == (finding != "normal")


def test_lobar_consolidation_is_unilateral_and_dense() -> None:
    spec = make_study_spec(12, finding="lobar_consolidation", n_slices=20)
    grid = slice_grid(spec, 64)
    sides = set()
    for m in render_masks(spec, matrix=64):
        if m.other.any():
            sides |= set(np.sign(np.broadcast_to(grid.xs, m.other.shape)[m.other]).tolist())
            assert float(np.median(m.hu[m.other])) > -250
    assert len(sides) == 1


def test_low_resolution_renders_same_anatomy() -> None:
    spec = make_study_spec(4, covid=False, finding="normal", n_slices=12)
    big = list(render_masks(spec, matrix=256))
    small = list(render_masks(spec, matrix=64))
    for b, s in zip(big, small, strict=True):
        assert abs(b.lung_area / 256**2 - s.lung_area / 64**2) < 0.02


# --- DICOM -----------------------------------------------------------------------------------

_ENCODINGS = [
    {"rescale_slope": 1.0, "rescale_intercept": -1024.0, "signed": False, "bits_stored": 12,
     "padding_hu": None},
    {"rescale_slope": 1.0, "rescale_intercept": -1024.0, "signed": True, "bits_stored": 16,
     "padding_hu": -2000.0},
    {"rescale_slope": 0.5, "rescale_intercept": -8192.0, "signed": False, "bits_stored": 16,
     "padding_hu": -3024.0},
    {"rescale_slope": 2.0, "rescale_intercept": -1024.0, "signed": True, "bits_stored": 16,
     "padding_hu": -3024.0},
    {"rescale_slope": 1.0, "rescale_intercept": 0.0, "signed": True, "bits_stored": 16,
     "padding_hu": -3024.0},
    {"rescale_slope": 0.5, "rescale_intercept": -1024.0, "signed": False, "bits_stored": 16,
     "padding_hu": None},
]  # fmt: skip


@pytest.mark.parametrize("enc", _ENCODINGS)
def test_modality_lut_gives_back_the_rendered_hu(enc: dict) -> None:
    base = make_study_spec(6, n_slices=2)
    spec = dataclasses.replace(base, profile=dataclasses.replace(base.profile, **enc))
    vol, _ = render_volume(spec)
    p = spec.profile
    for ds in study_datasets(spec):
        r = _roundtrip(ds)
        assert r.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (r.Rows, r.Columns, r.BitsAllocated) == (512, 512, 16)
        assert (r.PixelRepresentation, r.BitsStored, r.HighBit) == (
            int(p.signed),
            p.bits_stored,
            p.bits_stored - 1,
        )
        assert r.pixel_array.dtype == (np.int16 if p.signed else np.uint16)
        i = int(np.argmin(np.abs(spec.z_positions - float(r.ImagePositionPatient[2]))))
        hu = apply_modality_lut(r.pixel_array, r)
        assert np.abs(hu - vol[i]).max() <= p.rescale_slope / 2 + 1e-3
        if p.padding_hu is not None:
            assert r.pixel_array[0, 0] == r.PixelPaddingValue
            assert hu[0, 0] == p.padding_hu
        else:
            assert "PixelPaddingValue" not in r


def test_profile_rejects_values_that_do_not_fit() -> None:
    p = make_study_spec(6, n_slices=1).profile
    with pytest.raises(ValueError, match="stored range"):
        dataclasses.replace(
            p, signed=False, bits_stored=12, rescale_intercept=-1024.0, padding_hu=-2000.0
        )


def test_ct_headers() -> None:
    spec = make_study_spec(9, n_slices=5)
    dss = [_roundtrip(ds) for ds in study_datasets(spec)]
    ds = dss[0]
    assert ds.SOPClassUID == CTImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert (ds.Modality, ds.BodyPartExamined, ds.StudyDescription) == ("CT", "CHEST", "CT CHEST")
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.RescaleType == "HU"
    assert ds.ImagesInAcquisition == 5
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert ds.ConvolutionKernel == spec.profile.kernel
    assert float(ds.SliceThickness) == spec.profile.slice_thickness
    assert float(ds.PixelSpacing[0]) == pytest.approx(spec.profile.pixel_spacing)
    assert "SYNTH" in str(ds.PatientName)
    for attr in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "SeriesNumber", "ProtocolName",
                 "SeriesDescription", "Manufacturer", "ManufacturerModelName", "KVP",
                 "AcquisitionNumber", "WindowCenter", "WindowWidth", "FrameOfReferenceUID",
                 "SpacingBetweenSlices", "SliceLocation"):  # fmt: skip
        assert attr in ds, attr
    assert {d.StudyInstanceUID for d in dss} == {spec.study_instance_uid}
    assert {d.SeriesInstanceUID for d in dss} == {spec.series_instance_uid}
    assert len({d.SOPInstanceUID for d in dss}) == 5
    assert all(is_valid_uid(d.SOPInstanceUID) for d in dss)
    assert sorted(d.InstanceNumber for d in dss) == [1, 2, 3, 4, 5]
    z = sorted(float(d.ImagePositionPatient[2]) for d in dss)
    assert np.allclose(np.diff(z), spec.slice_spacing, atol=1e-3)
    assert all(float(d.SliceLocation) == float(d.ImagePositionPatient[2]) for d in dss)


@pytest.mark.parametrize(
    ("order", "caudocranial"), [("ascending", False), ("descending", False), ("ascending", True)]
)
def test_send_order_and_numbering(order: str, caudocranial: bool) -> None:
    base = make_study_spec(9, n_slices=6)
    profile = dataclasses.replace(base.profile, send_order=order, caudocranial=caudocranial)
    dss = study_datasets(dataclasses.replace(base, profile=profile))
    numbers = [int(d.InstanceNumber) for d in dss]
    z = [float(d.ImagePositionPatient[2]) for d in dss]
    assert numbers == sorted(numbers, reverse=order == "descending")
    # InstanceNumber 1 is the most superior slice unless the profile numbers caudocranially.
    assert (z[0] > z[-1]) == ((order == "ascending") != caudocranial)


def test_shuffled_order_is_a_permutation() -> None:
    base = make_study_spec(9, n_slices=12)
    spec = dataclasses.replace(
        base, profile=dataclasses.replace(base.profile, send_order="shuffled")
    )
    numbers = [int(d.InstanceNumber) for d in study_datasets(spec)]
    assert sorted(numbers) == list(range(1, 13)) and numbers != sorted(numbers)


def test_extra_objects_share_study_and_patient(tmp_path: Path) -> None:
    spec = make_study_spec(10, n_slices=4)
    loc, dose, shot = localizer_dataset(spec), dose_report_dataset(spec), screenshot_dataset(spec)
    thick = extra_series(spec, kernel="B30f", thickness=5.0, n_slices=2)
    ct_thick = _roundtrip(study_datasets(thick)[0])
    objs = [_roundtrip(d) for d in (loc, dose, shot)] + [ct_thick]
    assert {o.StudyInstanceUID for o in objs} == {spec.study_instance_uid}
    assert {o.PatientID for o in objs} == {spec.patient_id}
    series = {o.SeriesInstanceUID for o in objs} | {spec.series_instance_uid}
    assert len(series) == 5
    assert list(objs[0].ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert objs[0].SOPClassUID == CTImageStorage and objs[0].Rows == 512
    assert objs[1].SOPClassUID == XRayRadiationDoseSRStorage and objs[1].Modality == "SR"
    assert objs[2].SOPClassUID == SecondaryCaptureImageStorage and objs[2].BitsAllocated == 8
    assert ct_thick.ConvolutionKernel == "B30f" and float(ct_thick.SliceThickness) == 5.0
    assert ct_thick.FrameOfReferenceUID == spec.frame_of_reference_uid
    assert thick.profile.lung_kernel is False
    head = head_ct_spec(10, n_slices=3)
    ds = _roundtrip(study_datasets(head)[0])
    assert (ds.BodyPartExamined, ds.StudyDescription) == ("HEAD", "CT HEAD")
    vol, frac = render_volume(head, matrix=64)
    assert frac.max() == 0 and vol.max() > 500  # skull
    path = write_dataset(loc, tmp_path)
    assert path.parent.name == loc.SeriesInstanceUID


def test_synth_writes_studies_and_ground_truth(tmp_path: Path) -> None:
    specs = synth(tmp_path, studies=5, slices=2, covid_fraction=0.5, seed=7)
    assert sum(s.label == Label.COVID19 for s in specs) == round(5 * 0.5)
    text = (tmp_path / "ground_truth.csv").read_text()
    assert text.splitlines()[0] == "study_instance_uid,label"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["study_instance_uid"], r["label"]) for r in rows] == [
        (s.study_instance_uid, s.label.value) for s in specs
    ]
    assert {r["label"] for r in rows} <= {"covid19", "non_covid19"}
    assert len(list(tmp_path.rglob("*.dcm"))) == 10
    again = synth(tmp_path / "again", studies=5, slices=2, covid_fraction=0.5, seed=7)
    assert again == specs
    assert synth(tmp_path / "none", studies=4, slices=1, covid_fraction=0.0, seed=7)[0].label == (
        Label.NON_COVID19
    )


def test_training_slices() -> None:
    items = list(training_slices(3, n_studies=2, n_slices=4, matrix=32))
    assert len(items) == 8
    hu, frac, idx, _ = items[0]
    assert hu.shape == (32, 32) and hu.dtype == np.float32
    assert isinstance(frac, float) and idx == 0
    assert {it[3] for it in items} == {Label.COVID19, Label.NON_COVID19}
    assert all(it[1] == 0 for it in items if it[3] == Label.NON_COVID19)


# --- external validator ----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not on PATH")
def test_dciodvfy_reports_no_errors(tmp_path: Path) -> None:
    spec = make_study_spec(13, n_slices=3)
    hu = render_slice(spec, phantom_for(spec), slice_grid(spec), 1).hu
    objs = [ct_dataset(spec, 1, hu), localizer_dataset(spec), dose_report_dataset(spec),
            screenshot_dataset(spec)]  # fmt: skip
    for ds in objs:
        path = write_dataset(ds, tmp_path)
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, (ds.SOPClassUID, errors)


def test_profile_type_is_frozen() -> None:
    p = make_study_spec(1, n_slices=1).profile
    assert isinstance(p, ScannerProfile)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.kernel = "X"  # type: ignore[misc]
