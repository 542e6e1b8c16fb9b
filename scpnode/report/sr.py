"""The node's output: a Comprehensive 3D SR (TID 1500) per study, built with highdicom.

DESIGN §6 is the contract; IHE AI Results (AIR) is the model: a device observer, one study-level
measurement group (tracking identifier, algorithm identification, finding COVID-19, its
qualitative evaluation and probability) and one small group per key slice, each referencing
its image as Source of Measurement. The algorithm is described in the Contributing Equipment
Sequence with the IHE "Processing Algorithm" purpose and a Device UID that changes with the
weights.

Everything is derived from the inputs (UIDs, dates, times), so rebuilding the same study with
the same ``now`` gives byte-identical files. This is the only module that imports highdicom.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from io import BytesIO

import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from scpnode.domain import Finding, ModelIdentity, NodeIdentity, SliceScore, StudyResult
from scpnode.report.common import (
    MAX_KEY_SLICES,
    PROCESSING_ALGORITHM,
    RESEARCH_MARK,
    SERIES_DESCRIPTION_MAX,
    SYNTHETIC_MARK,
    device_observer,
    finish,
    patient_source,
    plain,
    series_description,
    utc,
)
from scpnode.uids import derive_uid

RESULT_HEAD = "AI COVID-19 CT UNVERIFIED"
NOT_ANALYSED_HEAD = "AI COVID-19 NOT ANALYSED"

# SNOMED's FSN is 65 characters, over the LO limit of CodeMeaning: use the HL7/EU display.
COVID19 = Code("840539006", "SCT", "COVID-19")
DEVICE_OBSERVER_UID = Code("121012", "DCM", "Device Observer UID")
_EVALUATION = {
    Finding.PRESENT: codes.SCT.Present,
    Finding.ABSENT: codes.SCT.Absent,
    Finding.UNDETERMINED: codes.SCT.Undetermined,
}
CONTRIBUTION = "COVID-19 classification of chest CT slices"
# Re-exported: callers and tests import them from here.
__all__ = [
    "COMPREHENSIVE_3D_SR",
    "COMPREHENSIVE_SR",
    "MAX_KEY_SLICES",
    "NOT_ANALYSED_HEAD",
    "RESEARCH_MARK",
    "RESULT_HEAD",
    "SERIES_DESCRIPTION_MAX",
    "SYNTHETIC_MARK",
    "build_not_analysed_sr",
    "build_result_sr",
    "comprehensive_sr_fallback",
    "is_own_object",
    "plain",
    "series_description",
    "sr_to_bytes",
]


def build_result_sr(
    *,
    evidence: Sequence[Dataset],
    result: StudyResult,
    model: ModelIdentity,
    node: NodeIdentity,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int = 9901,
    predecessors: Sequence[Dataset] = (),
    now: datetime | None = None,
) -> Dataset:
    """The SR of an analysed study: decision, probability, threshold and key slices.

    `evidence` must hold every key slice (matched by SOPInstanceUID); its first item supplies
    the patient and study attributes. At most `MAX_KEY_SLICES` key slices are reported.
    `now` should be timezone-aware (a naive one is local time); default: the node clock.
    """
    by_uid = {ds.SOPInstanceUID: ds for ds in evidence}
    keys = result.key_slices[:MAX_KEY_SLICES]
    study = _group(
        identifier="COVID-19 study assessment",
        tracking_uid=derive_uid("tracking", sop_instance_uid),
        algorithm=_algorithm(model, _parameters(result, model)),
        measurements=[
            _num(codes.DCM.Probability, result.probability),
            _num(codes.DCM.ThresholdValue, result.threshold),
        ],
        evaluation=_EVALUATION[result.finding],
        texts=_notes(model),
        sources=[_source(by_uid, s) for s in keys],
    )
    slices = [_slice_group(rank, s, by_uid, model, sop_instance_uid) for rank, s in enumerate(keys)]
    return _document(
        evidence=evidence,
        groups=[study, *slices],
        model=model,
        node=node,
        description=series_description(RESULT_HEAD, model),
        uids=(series_instance_uid, sop_instance_uid),
        numbers=(series_number, instance_number),
        predecessors=predecessors,
        now=now,
    )


def build_not_analysed_sr(
    *,
    evidence: Sequence[Dataset],
    reason: str,
    model: ModelIdentity,
    node: NodeIdentity,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int = 9901,
    now: datetime | None = None,
) -> Dataset:
    """The SR of an in-scope study the input gate rejected: COVID-19 Undetermined, and why.

    The reason is a TEXT qualitative evaluation (TID 1501 row 12) so that a reader sees it next
    to the Undetermined finding; `evidence` (a few instances of the study) is listed as
    evidence but not as source images, since nothing was measured on them.
    """
    group = _group(
        identifier="COVID-19 study assessment",
        tracking_uid=derive_uid("tracking", sop_instance_uid),
        algorithm=_algorithm(model, ()),
        measurements=[],
        evaluation=codes.SCT.Undetermined,
        texts=[f"Not analysed: {reason}", *_notes(model)],
        sources=[],
    )
    return _document(
        evidence=evidence,
        groups=[group],
        model=model,
        node=node,
        description=series_description(NOT_ANALYSED_HEAD, model),
        uids=(series_instance_uid, sop_instance_uid),
        numbers=(series_number, instance_number),
        predecessors=(),
        now=now,
    )


COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def comprehensive_sr_fallback(ds: Dataset) -> Dataset | None:
    """The same report as Comprehensive SR (88.33), for a PACS that does not take 88.34.

    Our content has no SCOORD3D, so it is valid under 88.33 unchanged; the object gets its own
    derived SOP Instance UID (another SOP class is another object). None for other objects.
    """
    if ds.SOPClassUID != COMPREHENSIVE_3D_SR:
        return None
    copy_ = copy.deepcopy(ds)
    copy_.SOPClassUID = COMPREHENSIVE_SR
    copy_.SOPInstanceUID = derive_uid("comprehensive-sr", str(ds.SOPInstanceUID))
    copy_.file_meta.MediaStorageSOPClassUID = copy_.SOPClassUID
    copy_.file_meta.MediaStorageSOPInstanceUID = copy_.SOPInstanceUID
    return copy_


def sr_to_bytes(ds: Dataset) -> bytes:
    """Part-10 file bytes (preamble, file meta): what the outbox stores and every retry sends."""
    with BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()


def is_own_object(ds: Dataset, node: NodeIdentity) -> bool:
    """True for objects this node (or any scpnode) created, so a PACS echo never re-triggers.

    Recognised by the node's Device UID (General Equipment or Contributing Equipment), by an
    IHE "Processing Algorithm" equipment item of our manufacturer, by our manufacturer and
    model name together, or by our device observer UID in the SR content.
    """
    if ds.get("DeviceUID") == node.device_uid:
        return True
    if ds.get("Manufacturer") == node.manufacturer and (
        ds.get("ManufacturerModelName") == node.model_name
    ):
        return True
    equipment = ds.get("ContributingEquipmentSequence") or []
    if any(_is_our_equipment(item, node) for item in equipment):
        return True
    return _device_observer_uid(ds) == node.device_uid


def _document(
    *,
    evidence: Sequence[Dataset],
    groups: list[MeasurementsAndQualitativeEvaluations],
    model: ModelIdentity,
    node: NodeIdentity,
    description: str,
    uids: tuple[str, str],
    numbers: tuple[int, int],
    predecessors: Sequence[Dataset],
    now: datetime | None,
) -> Dataset:
    """Wrap the groups in TID 1500 and the SR IOD; fix every value highdicom would randomise."""
    if not evidence:
        raise ValueError("evidence: at least one source instance is needed")
    when = utc(now)
    report = MeasurementReport(
        observation_context=_observer(node),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    sr = Comprehensive3DSR(
        evidence=[patient_source(evidence[0]), *evidence[1:]],
        content=report[0],
        series_instance_uid=uids[0],
        series_number=numbers[0],
        sop_instance_uid=uids[1],
        instance_number=numbers[1],
        manufacturer=node.manufacturer,
        is_complete=True,
        is_final=True,
        is_verified=False,
        previous_versions=list(predecessors) or None,
        series_description=description,
        manufacturer_model_name=node.model_name,
        software_versions=node.software_version,
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
    )
    finish(sr, model, node, when, CONTRIBUTION)
    return sr


def _observer(node: NodeIdentity) -> ObservationContext:
    """TID 1004 device observer with the node's stable device UID."""
    return ObservationContext(observer_device_context=device_observer(node))


def _group(
    *,
    identifier: str,
    tracking_uid: str,
    algorithm: AlgorithmIdentification,
    measurements: list[Measurement],
    evaluation: Code | None,
    texts: Iterable[str],
    sources: list[SourceImageForMeasurementGroup],
) -> MeasurementsAndQualitativeEvaluations:
    """One TID 1501 group about COVID-19; TEXT evaluations go before the source images."""
    evaluations = [QualitativeEvaluation(COVID19, evaluation)] if evaluation else None
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=identifier),
        finding_type=COVID19,
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )
    items = group[0].ContentSequence
    items.extend(_text(t) for t in texts)
    items.extend(sources)
    return group


def _slice_group(
    rank: int,
    score: SliceScore,
    by_uid: Mapping[str, Dataset],
    model: ModelIdentity,
    sop_instance_uid: str,
) -> MeasurementsAndQualitativeEvaluations:
    """A key slice: its own probability, with the slice as Source of Measurement."""
    return _group(
        identifier=f"COVID-19 key slice {rank + 1}",
        tracking_uid=derive_uid("tracking", sop_instance_uid, score.sop_instance_uid),
        algorithm=_algorithm(model, ()),
        measurements=[_num(codes.DCM.Probability, score.probability)],
        evaluation=None,
        texts=(),
        sources=[_source(by_uid, score)],
    )


def _algorithm(model: ModelIdentity, parameters: Sequence[str]) -> AlgorithmIdentification:
    """TID 4019; no Algorithm Manufacturer row (older validators lack it; it is in the CES)."""
    return AlgorithmIdentification(
        name=model.name, version=model.version, parameters=list(parameters) or None
    )


def _parameters(result: StudyResult, model: ModelIdentity) -> list[str]:
    """How the decision was reached, as TID 4019 Algorithm Parameters (free text)."""
    return [
        f"aggregation: {result.aggregation}",
        f"threshold: {result.threshold:g}",
        f"slices analysed: {result.n_slices}",
        f"weights sha256: {model.weights_sha256}",
    ]


def _notes(model: ModelIdentity) -> list[str]:
    """Intended use always, and a SYNTHETIC warning for demo weights, as visible TEXT items."""
    notes = [f"Intended use: {plain(model.intended_use)}"]
    if model.synthetic:
        notes.append(f"{SYNTHETIC_MARK} demo weights: not a clinical result")
    return notes


def _num(name: Code, value: float) -> Measurement:
    """A unitless NUM (UCUM ``1``) for probabilities and thresholds."""
    return Measurement(name=name, value=float(value), unit=codes.UCUM.NoUnits)


def _text(value: str) -> TextContentItem:
    return TextContentItem(
        name=codes.DCM.Comment, value=value, relationship_type=RelationshipTypeValues.CONTAINS
    )


def _source(by_uid: Mapping[str, Dataset], score: SliceScore) -> SourceImageForMeasurementGroup:
    """Reference a key slice by SOP Class/Instance UID; it must be in the evidence."""
    image = by_uid.get(score.sop_instance_uid)
    if image is None:
        raise ValueError(f"evidence: key slice {score.sop_instance_uid} is missing")
    return SourceImageForMeasurementGroup.from_source_image(image)


def _is_our_equipment(item: Dataset, node: NodeIdentity) -> bool:
    if item.get("DeviceUID") == node.device_uid:
        return True
    purposes = item.get("PurposeOfReferenceCodeSequence") or []
    algorithm = any(
        p.get("CodeValue") == PROCESSING_ALGORITHM.value
        and p.get("CodingSchemeDesignator") == PROCESSING_ALGORITHM.scheme_designator
        for p in purposes
    )
    return algorithm and item.get("Manufacturer") == node.manufacturer


def _device_observer_uid(ds: Dataset) -> str | None:
    """The TID 1004 Device Observer UID among the root content items, if any."""
    for item in ds.get("ContentSequence") or []:
        names = item.get("ConceptNameCodeSequence") or []
        if names and names[0].get("CodeValue") == DEVICE_OBSERVER_UID.value:
            return str(item.get("UID", "")) or None
    return None
