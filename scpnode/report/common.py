"""What every object the node creates shares: provenance, patient/study header, marks, time.

The SR, the Key Object Selection and the heat-map images must say the same things the same
way: who made them (the IHE AIR "Processing Algorithm" Contributing Equipment item, which is
also how ``scpnode.headers.is_own_object`` recognises them when a PACS echoes them back),
that they are unverified AI output for research (series description marks), whose patient
they are about (Type 2 attributes present even when the scanner left them out), and when they
were made (one ``now``, pinned everywhere highdicom would stamp the wall clock, so the same
inputs give the same bytes).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from highdicom.sr import DeviceObserverIdentifyingAttributes, ObserverContext
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, DT, TM

from scpnode.clock import utcnow
from scpnode.domain import ModelIdentity, NodeIdentity
from scpnode.uids import algorithm_device_uid

MAX_KEY_SLICES = 10  # each slice group costs a few ms in highdicom; ten tell the story
SERIES_DESCRIPTION_MAX = 64  # VR LO
RESEARCH_MARK = "RESEARCH - NOT FOR DIAGNOSIS"
SYNTHETIC_MARK = "SYNTHETIC"
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")  # IHE AIR §6.5.3.1
# Type 2 in the Patient/General Study modules; highdicom reads them by attribute access.
_PATIENT_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
_STUDY_TYPE2 = ("AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
TYPE2 = (*_PATIENT_TYPE2, *_STUDY_TYPE2)
_PATIENT_SEX = ("M", "F", "O", "")


def utc(now: datetime | None) -> datetime:
    """The one creation time of an object, in UTC; default: the node clock.

    A naive `now` is taken as local time (``astimezone`` semantics).
    """
    return (now or utcnow()).astimezone(UTC)


def series_description(
    head: str, model: ModelIdentity, *, research_mark: str = RESEARCH_MARK
) -> str:
    """AI output, unverified, SYNTHETIC for demo weights, research-only while the card says so.

    Every head leaves room for both marks within the 64 characters of LO; a head that already
    says "not for diagnosis" passes a shorter `research_mark`.
    """
    parts = [head]
    if model.synthetic:
        parts.append(SYNTHETIC_MARK)
    if model.is_research:
        parts.append(research_mark)
    text = " ".join(parts)
    if len(text) > SERIES_DESCRIPTION_MAX:
        raise ValueError(f"SeriesDescription longer than 64 characters: {text!r}")
    return text


_ASCII_PUNCTUATION = str.maketrans(
    {
        "\u2014": "-",
        "\u2013": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2026": "...",
    }
)


def plain(text: str) -> str:
    """Our own texts in ASCII: they must survive whatever character set the study declares
    (patient attributes keep theirs; we never re-encode them)."""
    return text.translate(_ASCII_PUNCTUATION).encode("ascii", "replace").decode("ascii")


def device_observer(node: NodeIdentity) -> ObserverContext:
    """TID 1002/1004 observer context of type Device with the node's stable device UID."""
    device = DeviceObserverIdentifyingAttributes(
        uid=node.device_uid,
        name=node.ae_title,
        manufacturer_name=node.manufacturer,
        model_name=node.model_name,
    )
    return ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)


def patient_source(first: Dataset) -> Dataset:
    """A copy of a source instance with every Type 2 attribute highdicom reads present (maybe
    empty), so a scanner that omitted one cannot make the object invalid or the build fail.

    A PatientSex outside M/F/O is blanked: highdicom rejects it and it would be invalid anyway.
    """
    source = copy.deepcopy(first)
    for keyword in TYPE2:
        if keyword not in source:
            setattr(source, keyword, "")
    if source.PatientSex is not None and source.PatientSex not in _PATIENT_SEX:
        source.PatientSex = ""
    return source


def finish(
    ds: Dataset, model: ModelIdentity, node: NodeIdentity, when: datetime, contribution: str
) -> None:
    """Pin every time highdicom takes from the wall clock; describe the node and algorithm.

    `contribution` says what the algorithm did for this object (ContributionDescription, ST).
    """
    ds.InstanceCreationDate = DA(when.date())
    ds.InstanceCreationTime = TM(when.time())
    for item in ds.ContributingEquipmentSequence:
        if item.get("ManufacturerModelName") == "highdicom":  # its own item, stamped "now"
            item.ContributionDateTime = DT(when)
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.DeviceUID = node.device_uid
    ds.ContributingEquipmentSequence.append(algorithm_equipment(model, when, contribution))


def algorithm_equipment(model: ModelIdentity, when: datetime, contribution: str) -> Dataset:
    """IHE AIR Contributing Equipment item; highdicom accepts only DCM purposes, so raw."""
    purpose = Dataset()
    purpose.CodeValue = PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = model.manufacturer
    item.ManufacturerModelName = model.name
    item.SoftwareVersions = model.version
    item.DeviceUID = algorithm_device_uid(model.name, model.weights_sha256)
    item.ContributionDateTime = DT(when)
    item.ContributionDescription = contribution_text(contribution, model)
    return item


def contribution_text(what: str, model: ModelIdentity) -> str:
    """Short free text (ST) for the equipment item: what the algorithm did, and on what terms."""
    text = f"{what}; {plain(model.intended_use)}"
    return f"{text}; {SYNTHETIC_MARK} demo weights" if model.synthetic else text
