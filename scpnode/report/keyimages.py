"""Optional key images: a Key Object Selection of the top slices, and Grad-CAM overlays.

Both are conveniences for a reader at a PACS viewer, next to the SR (which stays the result):

- the **Key Object Selection** (KOS, TID 2010) flags the slices that drove the decision, best
  first, so a viewer can jump to them; its description carries the probability, threshold and
  the same UNVERIFIED / SYNTHETIC / RESEARCH marks as the SR;
- each **heat map** is a derived RGB Secondary Capture of one key slice: the slice in the lung
  window with the Grad-CAM map blended on top, in its own series labelled "AI heat map, not
  for diagnosis". An SC has no machine-readable semantics (IHE AIR does not count it as a
  result), so the words are in the series description, the derivation description and the
  image comments, never burned into the pixels.

Provenance, patient/study header and time pinning are shared with the SR
(:mod:`scpnode.report.common`), so PACS echoes of these objects are recognised as our own and
rebuilding with the same ``now`` gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import cast

import numpy as np
from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from scpnode.domain import ModelIdentity, NodeIdentity, SliceScore, StudyResult
from scpnode.report.common import (
    MAX_KEY_SLICES,
    RESEARCH_MARK,
    SYNTHETIC_MARK,
    device_observer,
    finish,
    patient_source,
    plain,
    series_description,
    utc,
)

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
KEY_OBJECTS_HEAD = "AI KEY SLICES COVID-19"  # + both marks: 61 of the 64 characters of LO
HEATMAP_HEAD = "AI heat map, not for diagnosis"
HEATMAP_RESEARCH_MARK = "RESEARCH"  # the head already says "not for diagnosis"
KEY_OBJECTS_CONTRIBUTION = "Selection of the slices that drove a COVID-19 classification"
HEATMAP_CONTRIBUTION = "Grad-CAM heat map of a COVID-19 classification of a CT slice"
# (113000, DCM, "Of Interest"): CID 7010 has no AI- or finding-specific title; the others are
# workflow purposes (teaching, conference, rejection...) that would misdirect a PACS.
KEY_OBJECTS_TITLE = codes.cid7010.OfInterest
SOURCE_IMAGE_PURPOSE = codes.cid7202.SourceImageForImageProcessingOperation  # 121322, DCM
LUNG_WINDOW = (-600.0, 1500.0)  # centre, width (HU): what the model saw
HEAT_FLOOR = 0.1  # below this the overlay is fully transparent: no blue haze over the lung
MAX_ALPHA = 0.6  # opacity at heat 1: the anatomy stays visible under the hottest spot
_ANATOMY = ("BodyPartExamined", "Laterality", "ImageLaterality")  # copied when the CT has them


def build_key_object_selection(
    *,
    evidence: Sequence[Dataset],
    result: StudyResult,
    model: ModelIdentity,
    node: NodeIdentity,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int = 9902,
    now: datetime | None = None,
) -> Dataset:
    """A KOS referencing the study's key slices (at most `MAX_KEY_SLICES`), best first.

    `evidence` must hold every key slice (matched by SOPInstanceUID; header-only is enough);
    the best one supplies the patient and study attributes.
    """
    keys = result.key_slices[:MAX_KEY_SLICES]
    if not keys:
        raise ValueError("result.key_slices: a Key Object Selection needs at least one slice")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    referenced = [_key_slice(by_uid, score) for score in keys]
    when = utc(now)
    content = KeyObjectSelection(
        document_title=KEY_OBJECTS_TITLE,
        referenced_objects=referenced,
        observer_device_context=device_observer(node),
        description=key_objects_description(result, model),
    )
    kos = KeyObjectSelectionDocument(
        evidence=[patient_source(referenced[0]), *referenced[1:]],
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=node.manufacturer,
        series_description=series_description(KEY_OBJECTS_HEAD, model),
        manufacturer_model_name=node.model_name,
        software_versions=node.software_version,
        content_date=when.date(),
        content_time=when.time(),
    )
    finish(kos, model, node, when, KEY_OBJECTS_CONTRIBUTION)
    return kos


def key_objects_description(result: StudyResult, model: ModelIdentity) -> str:
    """The Key Object Description (TEXT): what was selected, by what, and on what terms."""
    parts = [
        f"AI key slices for COVID-19 by {model.tag} "
        f"(p={result.probability:.2f}, threshold {result.threshold:.2f})",
        "UNVERIFIED",
    ]
    if model.synthetic:
        parts.append(SYNTHETIC_MARK)
    if model.is_research:
        parts.append(RESEARCH_MARK)
    return plain(", ".join(parts))


def build_heatmap(
    *,
    source: Dataset,
    heat: np.ndarray,
    probability: float,
    model: ModelIdentity,
    node: NodeIdentity,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int = 9903,
    now: datetime | None = None,
) -> Dataset:
    """A derived RGB Secondary Capture: `source` in the lung window with `heat` blended on top.

    `source` is the full CT slice (with pixels); `heat` is its Grad-CAM map, float in [0, 1],
    with the slice's Rows x Columns (as ``scpnode.infer.gradcam.grad_cam`` returns it).
    """
    pixels = render_overlay(lung_window_gray(source), heat)
    when = utc(now)
    orientation = patient_orientation(source)
    sc = SCImage.from_ref_dataset(
        ref_dataset=patient_source(source),
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=node.manufacturer,
        # highdicom annotates this argument tuple[int, int]; the constructor takes floats
        pixel_spacing=cast("tuple[int, int] | None", _pixel_spacing(source)),
        patient_orientation=orientation or ("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description(
            HEATMAP_HEAD, model, research_mark=HEATMAP_RESEARCH_MARK
        ),
        manufacturer_model_name=node.model_name,
        software_versions=node.software_version,
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
    )
    if orientation is None:  # Type 2C: empty when the source does not say
        sc["PatientOrientation"].value = None
    _describe_derivation(sc, source, heatmap_derivation(model, probability), when)
    finish(sc, model, node, when, HEATMAP_CONTRIBUTION)
    return sc


def heatmap_derivation(model: ModelIdentity, probability: float) -> str:
    """DerivationDescription / ImageComments text (ASCII, well under ST's 1024 characters)."""
    text = f"Grad-CAM of {model.tag}, slice probability {probability:.2f}; not for diagnosis"
    return plain(f"{text}; {SYNTHETIC_MARK} demo weights" if model.synthetic else text)


def lung_window_gray(source: Dataset) -> np.ndarray:
    """The slice's HU (modality LUT) through the lung window W1500/L-600, float32 in [0, 1].

    Always the lung window, whatever preset the file carries: it is the window the model saw
    and the one in which ground glass is visible.
    """
    if int(source.get("NumberOfFrames") or 1) != 1 or int(source.SamplesPerPixel) != 1:
        raise ValueError("source: a single-frame greyscale CT slice is needed")
    hu = np.asarray(apply_modality_lut(source.pixel_array, source), dtype=np.float32)
    center, width = LUNG_WINDOW
    return np.clip((hu - np.float32(center - width / 2)) / np.float32(width), 0.0, 1.0)


def render_overlay(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB uint8: `gray` with a jet-coloured `heat` blended on top, opacity ∝ heat.

    Heat below `HEAT_FLOOR` is not drawn at all; NaN counts as no heat.
    """
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != gray.shape:
        raise ValueError(f"heat: shape {heat.shape} differs from the slice's {gray.shape}")
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    alpha = np.where(heat >= HEAT_FLOOR, MAX_ALPHA * heat, 0.0)[..., None]
    rgb = gray[..., None] * (1.0 - alpha) + _jet(heat) * alpha
    return np.round(rgb * 255.0).astype(np.uint8)


def _jet(x: np.ndarray) -> np.ndarray:
    """The classic jet colour map (blue → cyan → yellow → red), float32 [..., 3] in [0, 1]."""
    channels = [np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)]
    return np.stack(channels, axis=-1).astype(np.float32)


def patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """PatientOrientation (row, column) from ImageOrientationPatient: the dominant patient axis
    of each direction (the SC IOD has no Image Plane module to carry the cosines themselves)."""
    cosines = source.get("ImageOrientationPatient")
    if cosines is None or len(cosines) != 6:
        return None
    values = [float(v) for v in cosines]
    return _axis_letter(values[:3]), _axis_letter(values[3:])


def _axis_letter(vector: Sequence[float]) -> str:
    """+x is the patient's left, +y posterior, +z head (PS3.3 C.7.6.2.1.1)."""
    axis = int(np.argmax(np.abs(vector)))
    positive, negative = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return positive if vector[axis] >= 0 else negative


def _pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    spacing = source.get("PixelSpacing")
    if spacing is None or len(spacing) != 2:
        return None
    return float(spacing[0]), float(spacing[1])


def _describe_derivation(sc: Dataset, source: Dataset, text: str, when: datetime) -> None:
    """Derived from `source`; pin the capture time highdicom stamps with the wall clock."""
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue = SOURCE_IMAGE_PURPOSE.value
    purpose.CodingSchemeDesignator = SOURCE_IMAGE_PURPOSE.scheme_designator
    purpose.CodeMeaning = SOURCE_IMAGE_PURPOSE.meaning
    reference.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [reference]
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = text
    sc.ImageComments = text
    sc.BurnedInAnnotation = "NO"
    sc.ConversionType = "WSD"  # made on a workstation from the source, not a digitised film
    sc.DateOfSecondaryCapture = DA(when.date())
    sc.TimeOfSecondaryCapture = TM(when.time())
    _copy_anatomy(sc, source)


def _copy_anatomy(sc: Dataset, source: Dataset) -> None:
    """Body part and laterality as the CT has them (viewers' hanging protocols use them).

    Laterality is Type 2C (needed for a paired body part): with neither a body part nor a
    laterality in the source, we do not know, which is what an empty Laterality says.
    """
    known = [k for k in _ANATOMY if source.get(k) not in (None, "")]
    for keyword in known:
        setattr(sc, keyword, source.get(keyword))
    if not known:
        sc.Laterality = None


def _key_slice(by_uid: Mapping[str, Dataset], score: SliceScore) -> Dataset:
    image = by_uid.get(score.sop_instance_uid)
    if image is None:
        raise ValueError(f"evidence: key slice {score.sop_instance_uid} is missing")
    return image
