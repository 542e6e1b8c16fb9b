"""Synthetic chest-CT studies as DICOM, with known truth: the only data this project uses.

A study is fully determined by its seed: the patient (anatomy and finding, in
:mod:`scpnode.phantom`), the scanner (vendor, kernel, rescale and pixel encoding, padding,
noise, window presets, slice thickness, send order) and every UID. Scanners disagree on all of
those, so the node must read HU through the modality LUT, ignore the file's windows and sort by
ImagePositionPatient; the profiles here make sure it has to.

Conventions: slice index 0 is the most superior slice (highest ImagePositionPatient z);
InstanceNumber runs head to feet, or feet to head for caudocranial profiles. Files are written
as ``<out>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, like the spool.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    XRayRadiationDoseSRStorage,
)

from scpnode.domain import Label
from scpnode.phantom import FINDINGS, HU_MAX, HU_MIN, Grid, Phantom, SliceMaps, acquire, plan_body
from scpnode.phantom import rng_for as _rng
from scpnode.uids import derive_uid

NON_COVID_FINDINGS = ("normal", "nodule", "emphysema", "lobar_consolidation")
SEND_ORDERS = ("ascending", "descending", "shuffled")  # by InstanceNumber
SOFTWARE = "scpnode-synth 1"


class _Vendor(NamedTuple):
    name: str
    models: tuple[str, ...]
    sharp: tuple[str, ...]
    soft: tuple[str, ...]
    encoding: str  # how its images are stored, like the real vendors these imitate


_VENDORS = (
    _Vendor("Synthetic Medical Systems", ("SynthoTom Go.64", "SynthoTom Edge"),
            ("B70f", "Bl57d", "I70f"), ("B30f", "Br40d", "B31f"), "uint12"),
    _Vendor("Phantom Imaging Corp.", ("PhantomCT HD750", "PhantomCT Revo"),
            ("LUNG", "BONEPLUS"), ("STANDARD", "SOFT"), "int16_pad"),
    _Vendor("Acme Tomography Ltd.", ("Acme Helix 128",), ("L", "YC"), ("B", "C"), "int16_1000"),
    _Vendor("Virtual Radiology Devices", ("VRD Aquila One",),
            ("FC51", "FC86"), ("FC13", "FC08"), "int16_0"),
)  # fmt: skip
_SHARP = {k for v in _VENDORS for k in v.sharp}
_WINDOWS = (
    ((40.0, 400.0),),
    ((50.0, 350.0),),
    ((-600.0, 1500.0),),
    ((40.0, 400.0), (-600.0, 1500.0)),
)


@dataclass(frozen=True)
class ScannerProfile:
    """What one scanner and protocol make of the same patient (all recorded in the headers)."""

    manufacturer: str
    model_name: str
    kernel: str
    lung_kernel: bool  # sharp, edge-enhancing and noisier
    slice_thickness: float  # mm
    pixel_spacing: float  # mm; the reconstruction FOV is 512 * pixel_spacing
    recon_center: tuple[float, float]  # (x, y) of the FOV centre in patient mm
    rescale_slope: float
    rescale_intercept: float
    signed: bool  # PixelRepresentation 1 (int16) or 0 (uint16)
    bits_stored: int
    padding_hu: float | None  # outside the reconstruction circle; None: plain -1024, untagged
    noise_hu: float  # noise std at 512², soft tissue
    windows: tuple[tuple[float, float], ...]  # the file's own (centre, width) presets
    kvp: float
    send_order: str
    caudocranial: bool  # InstanceNumber 1 at the lung bases

    def __post_init__(self) -> None:
        lo, hi = self.stored_limits
        need = [HU_MIN, HU_MAX] + ([self.padding_hu] if self.padding_hu is not None else [])
        stored = [(v - self.rescale_intercept) / self.rescale_slope for v in need]
        if min(stored) < lo or max(stored) > hi:
            raise ValueError(f"HU {need} do not fit the stored range {lo}..{hi} with this rescale")
        if self.send_order not in SEND_ORDERS:
            raise ValueError(f"send_order must be one of {SEND_ORDERS}")

    @property
    def stored_limits(self) -> tuple[int, int]:
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1

    @property
    def padding(self) -> float:
        return -1024.0 if self.padding_hu is None else self.padding_hu

    def to_stored(self, hu: np.ndarray) -> np.ndarray:
        """HU → stored pixel values (rounded, clipped, int16 or uint16)."""
        v = np.rint((hu.astype(np.float64) - self.rescale_intercept) / self.rescale_slope)
        return np.clip(v, *self.stored_limits).astype(np.int16 if self.signed else np.uint16)


@dataclass(frozen=True)
class StudySpec:
    """One synthetic study: truth, scanner, identifiers and z coverage (see module doc)."""

    seed: int
    label: Label
    finding: str
    n_slices: int
    profile: ScannerProfile
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    patient_name: str
    patient_sex: str
    patient_birth_date: str
    accession_number: str
    study_id: str
    study_date: str
    study_time: str
    severity: float  # 0 mild .. 1 severe for COVID studies, 0 otherwise
    z_first: float  # z of slice 0, the most superior
    z_last: float
    series_number: int = 2
    body_part: str = "CHEST"

    @property
    def z_positions(self) -> np.ndarray:
        return np.linspace(self.z_first, self.z_last, self.n_slices)

    @property
    def slice_spacing(self) -> float:
        if self.n_slices < 2:
            return self.profile.slice_thickness
        return (self.z_first - self.z_last) / (self.n_slices - 1)

    @property
    def instance_numbers(self) -> list[int]:
        """InstanceNumber of each slice index."""
        n = self.n_slices
        return [n - i for i in range(n)] if self.profile.caudocranial else [i + 1 for i in range(n)]


def study_seed(seed: int, index: int) -> int:
    """The seed of study ``index`` of a batch seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def make_study_spec(
    seed: int, *, covid: bool | None = None, n_slices: int = 60, finding: str | None = None
) -> StudySpec:
    """covid=None: decided by the seed (50/50). finding overrides the non-COVID finding choice."""
    if seed < 0 or n_slices < 1:
        raise ValueError("seed must be >= 0 and n_slices >= 1")
    if finding is not None and finding not in FINDINGS:
        raise ValueError(f"finding must be one of {FINDINGS}, not {finding!r}")
    if finding is not None and covid is not None and (finding == "covid") != covid:
        raise ValueError(f"finding {finding!r} contradicts covid={covid}")
    if covid is None:
        covid = finding == "covid" if finding else bool(_rng(seed, "label").random() < 0.5)
    if not covid and finding is None:
        p = (0.4, 0.2, 0.2, 0.2)
        finding = str(_rng(seed, "other").choice(NON_COVID_FINDINGS, p=p))
    finding = "covid" if covid else finding
    severity = float(_rng(seed, "severity").uniform(0.05, 1.0)) if covid else 0.0
    plan = plan_body(seed, str(finding), severity)
    rng = _rng(seed, "coverage")
    z_first, z_last = plan.apex_z + rng.uniform(15, 35), plan.base_z - rng.uniform(15, 35)
    if n_slices == 1:
        z_first = z_last = plan.z(0.55)
    return _spec(seed, plan.half_width, n_slices, z_first, z_last, str(finding), severity)


def _spec(
    seed: int,
    half_width: float,
    n: int,
    z_first: float,
    z_last: float,
    finding: str,
    severity: float,
    body: str = "CHEST",
) -> StudySpec:
    rng = _rng(seed, "patient")
    day = date(2020, 3, 1) + timedelta(days=int(rng.integers(0, 730)))
    age = int(rng.integers(25, 89))
    birth = date(day.year - age, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    study_uid = derive_uid("synth-study", str(seed), body)
    return StudySpec(
        seed=seed,
        label=Label.COVID19 if finding == "covid" else Label.NON_COVID19,
        finding=finding,
        n_slices=n,
        profile=_profile(seed, half_width, body),
        patient_id=f"SYN-{seed}",
        study_instance_uid=study_uid,
        series_instance_uid=derive_uid("synth-series", study_uid, "2"),
        frame_of_reference_uid=derive_uid("synth-for", study_uid),
        patient_name=f"SYNTHETIC^PHANTOM {seed}",
        patient_sex=str(rng.choice(("F", "M"))),
        patient_birth_date=birth.strftime("%Y%m%d"),
        accession_number=f"SYN{seed % 10**12:012d}",
        study_id=str(seed % 10**8),
        study_date=day.strftime("%Y%m%d"),
        study_time=f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}"
        f"{int(rng.integers(0, 60)):02d}",
        severity=severity,
        z_first=float(z_first),
        z_last=float(z_last),
        body_part=body,
    )


def _profile(seed: int, half_width: float, body: str) -> ScannerProfile:
    """Draw a vendor, protocol and pixel encoding; FOV from the body size, as a tech sets it."""
    rng = _rng(seed, "scanner")
    v = _VENDORS[int(rng.integers(len(_VENDORS)))]
    sharp = body == "CHEST" and bool(rng.random() < 0.6)
    slope, intercept, signed, bits = 1.0, -1024.0, True, 16
    pad: float | None = float(rng.choice((-2000.0, -3024.0)))
    if v.encoding == "uint12":
        signed, bits, pad = False, 12, None
    elif v.encoding == "int16_1000":
        intercept, pad = -1000.0, (None, -2000.0)[int(rng.integers(2))]
    elif v.encoding == "int16_0":
        intercept = 0.0
    if rng.random() < 0.2:  # rarer encodings every reader must still handle
        slope, intercept = float(rng.choice((0.5, 2.0))), float(rng.choice((-1024.0, -8192.0)))
        signed, bits = bool(rng.random() < 0.5), 16
        pad = None if (not signed and intercept > -2000) else pad
    fov_min = 2 * half_width + 30 if body == "CHEST" else 250.0
    spacing = float(np.round(np.clip(fov_min / 512 * rng.uniform(1.0, 1.25), 0.55, 0.9), 4))
    return ScannerProfile(
        manufacturer=v.name,
        model_name=str(rng.choice(v.models)),
        kernel=str(rng.choice(v.sharp if sharp else v.soft)),
        lung_kernel=sharp,
        slice_thickness=float(rng.choice((1.0, 1.25, 1.5, 2.0, 3.0, 5.0))),
        pixel_spacing=spacing,
        recon_center=(float(rng.uniform(-8, 8)), float(rng.uniform(0, 25))),
        rescale_slope=slope,
        rescale_intercept=intercept,
        signed=signed,
        bits_stored=bits,
        padding_hu=pad,
        noise_hu=float(rng.uniform(25, 55) if sharp else rng.uniform(8, 18)),
        windows=_WINDOWS[int(rng.integers(len(_WINDOWS)))] if body == "CHEST" else ((40, 80),),
        kvp=float(rng.choice((100.0, 120.0, 120.0, 140.0))),
        send_order=str(rng.choice(SEND_ORDERS)),
        caudocranial=bool(rng.random() < 0.3),
    )


def head_ct_spec(seed: int, n_slices: int = 30) -> StudySpec:
    """A head CT (BodyPartExamined HEAD, "CT HEAD"): out of scope for the node."""
    plan = plan_body(seed, "normal", 0.0)
    zc = (plan.apex_z + plan.base_z) / 2
    return _spec(seed, plan.half_width, n_slices, zc + 80, zc - 80, "normal", 0.0, "HEAD")


def extra_series(
    spec: StudySpec,
    *,
    kernel: str,
    thickness: float,
    n_slices: int | None = None,
    series_number: int = 3,
    lung_kernel: bool | None = None,
) -> StudySpec:
    """Another reconstruction of the same acquisition: same patient, study, anatomy and frame
    of reference, its own SeriesInstanceUID, kernel and slice thickness."""
    sharp = (kernel in _SHARP or "LUNG" in kernel.upper()) if lung_kernel is None else lung_kernel
    p = spec.profile
    noise = p.noise_hu * (3.0 if sharp and not p.lung_kernel else 1.0)
    noise /= 3.0 if p.lung_kernel and not sharp else 1.0
    noise *= float(np.sqrt(p.slice_thickness / thickness))
    profile = dataclasses.replace(
        p, kernel=kernel, lung_kernel=sharp, slice_thickness=thickness, noise_hu=noise
    )
    uid = derive_uid("synth-series", spec.study_instance_uid, str(series_number))
    return dataclasses.replace(
        spec,
        profile=profile,
        n_slices=spec.n_slices if n_slices is None else n_slices,
        series_instance_uid=uid,
        series_number=series_number,
    )


def phantom_for(spec: StudySpec) -> Phantom:
    """The spec's patient (anatomy depends on the seed, finding and severity only)."""
    plan = plan_body(spec.seed, spec.finding, spec.severity)
    return Phantom(plan, head=spec.body_part == "HEAD")


def slice_grid(spec: StudySpec, matrix: int = 512) -> Grid:
    """Pixel geometry: the same FOV at any matrix (so 256² is the 512² anatomy, coarser)."""
    fov = spec.profile.pixel_spacing * 512
    sp = fov / matrix
    cx, cy = spec.profile.recon_center
    return Grid(matrix, sp, cx - fov / 2 + sp / 2, cy - fov / 2 + sp / 2)


def render_slice(spec: StudySpec, phantom: Phantom, grid: Grid, index: int) -> SliceMaps:
    """Slice ``index`` as the scanner reconstructs it (noise, kernel, padding) with its masks."""
    maps = phantom.render(float(spec.z_positions[index]), grid)
    rng = _rng(spec.seed, "noise", spec.series_number, index, grid.matrix)
    p = spec.profile
    maps.hu = acquire(
        maps.hu, rng, noise_hu=p.noise_hu, sharp=p.lung_kernel, grid=grid, padding_hu=p.padding
    )
    return maps


def render_volume(spec: StudySpec, matrix: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """HU volume float32 (n_slices, matrix, matrix), slice 0 most superior, and per slice the
    fraction of the lung area covered by COVID-pattern lesions (0 for non-COVID studies)."""
    phantom, grid = phantom_for(spec), slice_grid(spec, matrix)
    vol = np.empty((spec.n_slices, matrix, matrix), np.float32)
    frac = np.zeros(spec.n_slices, np.float32)
    for i in range(spec.n_slices):
        maps = render_slice(spec, phantom, grid, i)
        vol[i], frac[i] = maps.hu, maps.lesion_fraction
    return vol, frac


def render_masks(spec: StudySpec, matrix: int = 512) -> Iterator[SliceMaps]:
    """Every slice with its lung, COVID-lesion and other-finding masks, superior first."""
    phantom, grid = phantom_for(spec), slice_grid(spec, matrix)
    for i in range(spec.n_slices):
        yield render_slice(spec, phantom, grid, i)


def _fmt(v: float) -> str:
    """DS text without float noise (DS holds at most 16 characters)."""
    return f"{v:.6f}".rstrip("0").rstrip(".") or "0"


def _base(spec: StudySpec, sop_class: str, sop_uid: str, modality: str) -> Dataset:
    """SOP common, patient, general study and equipment modules shared by every object."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate, ds.InstanceCreationTime = spec.study_date, spec.study_time
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.Modality = modality
    ds.Manufacturer = spec.profile.manufacturer
    ds.InstitutionName = "Synthetic Data Hospital"
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StationName = "SYNTHCT01"
    ds.StudyDescription = f"CT {spec.body_part}"
    ds.ManufacturerModelName = spec.profile.model_name
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.patient_birth_date
    ds.PatientSex = spec.patient_sex
    ds.PatientAge = f"{int(spec.study_date[:4]) - int(spec.patient_birth_date[:4]):03d}Y"
    ds.BodyPartExamined = spec.body_part
    ds.DeviceSerialNumber = f"SN{spec.seed % 10**6:06d}"
    ds.SoftwareVersions = SOFTWARE
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.StudyID = spec.study_id
    return ds


def _series_description(spec: StudySpec) -> str:
    p = spec.profile
    kind = ("Lung" if p.lung_kernel else "Soft Tissue") if spec.body_part == "CHEST" else "Brain"
    return f"{spec.body_part.title()} {kind} {p.slice_thickness:g}mm {p.kernel}"


def ct_dataset(spec: StudySpec, index: int, hu: np.ndarray) -> Dataset:
    """The CT Image Storage dataset of slice ``index`` holding ``hu`` (512², float HU)."""
    p, inst = spec.profile, spec.instance_numbers[index]
    sop = derive_uid("synth-sop", spec.series_instance_uid, str(index))
    ds = _base(spec, CTImageStorage, sop, "CT")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionDate = spec.study_date
    ds.AcquisitionTime = ds.ContentTime = _later(spec.study_time, 0.1 * (inst - 1))
    ds.SeriesDescription = _series_description(spec)
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = _fmt(p.slice_thickness)
    ds.KVP = _fmt(p.kvp)
    ds.SpacingBetweenSlices = _fmt(spec.slice_spacing)
    ds.DataCollectionDiameter = "500"
    ds.ProtocolName = "Chest Routine" if spec.body_part == "CHEST" else "Routine Head"
    ds.ReconstructionDiameter = _fmt(p.pixel_spacing * 512)
    ds.GantryDetectorTilt = "0"
    ds.XRayTubeCurrent = 120 + (spec.seed % 180)
    ds.ConvolutionKernel = p.kernel
    ds.PatientPosition = "HFS"
    ds.SeriesInstanceUID = spec.series_instance_uid
    ds.SeriesNumber = spec.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = inst
    grid, z = slice_grid(spec), float(spec.z_positions[index])
    ds.ImagePositionPatient = [_fmt(grid.x0), _fmt(grid.y0), _fmt(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_fmt(p.pixel_spacing), _fmt(p.pixel_spacing)]
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _fmt(z)
    ds.ImagesInAcquisition = spec.n_slices
    _pixels(ds, p.to_stored(hu), p.signed, p.bits_stored)
    if p.padding_hu is not None:
        ds.PixelPaddingValue = int(p.to_stored(np.array([p.padding_hu]))[0])
    ds.WindowCenter = [_fmt(c) for c, _ in p.windows]
    ds.WindowWidth = [_fmt(w) for _, w in p.windows]
    ds.RescaleIntercept, ds.RescaleSlope = _fmt(p.rescale_intercept), _fmt(p.rescale_slope)
    ds.RescaleType = "HU"
    return ds


def _pixels(ds: Dataset, arr: np.ndarray, signed: bool, bits: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()


def _later(hhmmss: str, seconds: float) -> str:
    s = int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:6]) + seconds
    return f"{int(s // 3600) % 24:02d}{int(s % 3600 // 60):02d}{s % 60:09.6f}"


def send_order(spec: StudySpec) -> list[int]:
    """Slice indices in the order the scanner sends them (profile's send_order)."""
    by_instance = sorted(range(spec.n_slices), key=lambda i: spec.instance_numbers[i])
    if spec.profile.send_order == "descending":
        return by_instance[::-1]
    if spec.profile.send_order == "shuffled":
        rng = _rng(spec.seed, "order", spec.series_number)
        return [int(i) for i in rng.permutation(by_instance)]
    return by_instance


def iter_study_datasets(spec: StudySpec) -> Iterator[Dataset]:
    """Like :func:`study_datasets`, rendering each slice only when it is needed."""
    phantom, grid = phantom_for(spec), slice_grid(spec)
    for i in send_order(spec):
        yield ct_dataset(spec, i, render_slice(spec, phantom, grid, i).hu)


def study_datasets(spec: StudySpec) -> list[Dataset]:
    """Full DICOM CT datasets of the study, in the order the scanner sends them."""
    return list(iter_study_datasets(spec))


def write_dataset(ds: Dataset, out_dir: Path) -> Path:
    """Write one object to ``out_dir/<study>/<series>/<sop>.dcm`` (valid Part 10 file)."""
    path = Path(out_dir) / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_study(spec: StudySpec, out_dir: Path) -> list[Path]:
    """Writes the series as ``<out_dir>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``, in send order."""
    return [write_dataset(ds, out_dir) for ds in iter_study_datasets(spec)]


def covid_assignment(n: int, covid_fraction: float, seed: int) -> list[bool]:
    """Which of n studies are COVID: exactly round(n * fraction), positions from the seed."""
    if not 0.0 <= covid_fraction <= 1.0 or n < 0:
        raise ValueError("covid_fraction must be in [0, 1] and studies >= 0")
    k = round(n * covid_fraction)
    chosen = set(_rng(seed, "assignment").permutation(n)[:k].tolist())
    return [i in chosen for i in range(n)]


def study_specs(*, studies: int, slices: int, covid_fraction: float, seed: int) -> list[StudySpec]:
    """The batch `synth` writes and `simulate` sends: the same studies for the same seed."""
    flags = covid_assignment(studies, covid_fraction, seed)
    return [
        make_study_spec(study_seed(seed, i), covid=c, n_slices=slices) for i, c in enumerate(flags)
    ]


def synth(
    out_dir: Path, *, studies: int, slices: int, covid_fraction: float, seed: int
) -> list[StudySpec]:
    """Write the studies as DICOM files and ``out_dir/ground_truth.csv``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = study_specs(studies=studies, slices=slices, covid_fraction=covid_fraction, seed=seed)
    for spec in specs:
        write_study(spec, out_dir)
    with (out_dir / "ground_truth.csv").open("w", newline="", encoding="ascii") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["study_instance_uid", "label"])
        w.writerows([s.study_instance_uid, s.label.value] for s in specs)
    return specs


def training_slices(
    seed: int, n_studies: int, n_slices: int, matrix: int = 256
) -> Iterator[tuple[np.ndarray, float, int, Label]]:
    """(hu_slice, lesion_fraction, study_index, study_label) for every slice of n_studies
    generated studies, half of them COVID; slices of one study are consecutive."""
    for i, covid in enumerate(covid_assignment(n_studies, 0.5, seed)):
        spec = make_study_spec(study_seed(seed, i), covid=covid, n_slices=n_slices)
        vol, frac = render_volume(spec, matrix)
        for hu, f in zip(vol, frac, strict=True):
            yield hu, float(f), i, spec.label


def _other_series(spec: StudySpec, number: int, sop_class: str, modality: str) -> Dataset:
    study_uid = spec.study_instance_uid
    series_uid = derive_uid("synth-series", study_uid, str(number))
    ds = _base(spec, sop_class, derive_uid("synth-sop", series_uid, "0"), modality)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, number, 1
    return ds


def localizer_dataset(spec: StudySpec) -> Dataset:
    """The scout (ImageType ORIGINAL\\PRIMARY\\LOCALIZER): a coronal projection, series 1."""
    ds = _other_series(spec, 1, CTImageStorage, "CT")
    fov = spec.profile.pixel_spacing * 512
    z_top, z_bottom = spec.z_first + 40, spec.z_last - 40
    proj = phantom_for(spec).scout(z_top, z_bottom, 128, fov)
    img = np.kron(np.clip(proj * 4.0, 0, 4095), np.ones((4, 4), np.float32)).astype(np.uint16)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesDescription = "Topogram 0.6 T20s"
    ds.ProtocolName = "Chest Routine"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.ImagePositionPatient = [_fmt(-fov / 2 + fov / 1024), "0", _fmt(z_top)]
    ds.PixelSpacing = [_fmt((z_top - z_bottom) / 511), _fmt(fov / 512)]
    ds.SliceThickness, ds.KVP, ds.AcquisitionNumber = "0.6", "120", 1
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = spec.frame_of_reference_uid, ""
    ds.PatientPosition = "HFS"
    _pixels(ds, img, signed=False, bits=12)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = "1000", "2000"
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _num(name: Dataset, value: float, unit: Dataset) -> Dataset:
    item, measured = Dataset(), Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "NUM"
    item.ConceptNameCodeSequence = [name]
    measured.NumericValue, measured.MeasurementUnitsCodeSequence = _fmt(value), [unit]
    item.MeasuredValueSequence = [measured]
    return item


def dose_report_dataset(spec: StudySpec) -> Dataset:
    """An X-Ray Radiation Dose SR (TID 10011 skeleton): what scanners forward with a study."""
    ds = _other_series(spec, 997, XRayRadiationDoseSRStorage, "SR")
    del ds.BodyPartExamined  # not in the SR IODs
    ds.SeriesDescription = "Dose Report"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("113701", "DCM", "X-Ray Radiation Dose Report")]
    tpl = Dataset()
    tpl.MappingResource, tpl.TemplateIdentifier = "DCMR", "10011"
    ds.ContentTemplateSequence = [tpl]
    proc = Dataset()
    proc.RelationshipType, proc.ValueType = "HAS CONCEPT MOD", "CODE"
    proc.ConceptNameCodeSequence = [_code("121058", "DCM", "Procedure reported")]
    proc.ConceptCodeSequence = [_code("77477000", "SCT", "Computed Tomography X-Ray")]
    acc = Dataset()
    acc.RelationshipType, acc.ValueType = "CONTAINS", "CONTAINER"
    acc.ContinuityOfContent = "SEPARATE"
    acc.ConceptNameCodeSequence = [_code("113811", "DCM", "CT Accumulated Dose Data")]
    events = _code("113812", "DCM", "Total Number of Irradiation Events")
    dlp = _code("113813", "DCM", "CT Dose Length Product Total")
    acc.ContentSequence = [
        _num(events, 2, _code("{events}", "UCUM", "events")),
        _num(dlp, 150 + spec.seed % 400, _code("mGy.cm", "UCUM", "mGy.cm")),
    ]
    ds.ContentSequence = [proc, acc]
    return ds


def screenshot_dataset(spec: StudySpec, modality: str = "CT") -> Dataset:
    """A Secondary Capture (8-bit lung-window snapshot with a text band), as scanners forward
    with their studies; Modality CT by default, since that is what makes it a trap."""
    ds = _other_series(spec, 998, SecondaryCaptureImageStorage, modality)
    maps = render_slice(spec, phantom_for(spec), slice_grid(spec, 256), spec.n_slices // 2)
    img = (255 * np.clip((maps.hu + 1350) / 1500, 0, 1)).astype(np.uint8)
    img[:18] = 0
    img[5:13, 8:120:6] = 255  # "text"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    ds.SeriesDescription = "Screen Save"
    ds.PatientOrientation = ""
    _pixels(ds, img, signed=False, bits=8)
    ds.BurnedInAnnotation = "YES"
    return ds
