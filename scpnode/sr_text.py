"""A structured report as indented text: what the demo prints and the admin can read."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset


def sr_lines(ds: Dataset) -> list[str]:
    head = [
        f"SOP Class        {ds.SOPClassUID.name} ({ds.SOPClassUID})",
        f"SOP Instance UID {ds.SOPInstanceUID}",
        f"Series           {ds.get('SeriesDescription', '')}",
        f"Verification     {ds.get('VerificationFlag', '')}  "
        f"Completion {ds.get('CompletionFlag', '')}",
    ]
    return head + list(_walk(ds.get("ContentSequence", []), 1))


def _walk(items: list[Dataset], depth: int) -> Iterator[str]:
    for item in items:
        yield "  " * depth + _describe(item)
        yield from _walk(item.get("ContentSequence", []), depth + 1)


def _describe(item: Dataset) -> str:
    name = _meaning(item.get("ConceptNameCodeSequence"))
    kind = item.get("ValueType", "")
    value = ""
    if kind == "CODE":
        value = _meaning(item.get("ConceptCodeSequence"))
    elif kind == "NUM":
        measured = item.get("MeasuredValueSequence")
        if measured:
            unit = _meaning(measured[0].get("MeasurementUnitsCodeSequence"))
            value = f"{measured[0].NumericValue} [{unit}]"
    elif kind in ("TEXT", "UIDREF", "DATETIME"):
        value = str(
            item.get({"TEXT": "TextValue", "UIDREF": "UID", "DATETIME": "DateTime"}[kind], "")
        )
    elif kind == "IMAGE":
        ref = item.ReferencedSOPSequence[0]
        value = f"image {ref.ReferencedSOPInstanceUID}"
    return f"{kind:<9} {name}" + (f" = {value}" if value else "")


def _meaning(seq: object) -> str:
    if not seq:
        return ""
    code = seq[0]  # type: ignore[index]
    value, scheme = code.get("CodeValue", ""), code.get("CodingSchemeDesignator", "")
    return f"{code.get('CodeMeaning', '')} ({value}, {scheme})"


def referenced_images(ds: Dataset) -> list[str]:
    """SOP Instance UIDs of the IMAGE items (the key slices an SR references), in order."""
    found: list[str] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "IMAGE" and item.get("ReferencedSOPSequence"):
                found.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            walk(item.get("ContentSequence", []))

    walk(ds.get("ContentSequence", []))
    return found
