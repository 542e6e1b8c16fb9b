"""Where a dataset's images are, what they show, whose they are, and which split they belong to.

Three layouts, recognised from the folder:

- **COVID-CT** (UCSD-AI4H): ``Images-processed/CT_COVID``, ``Images-processed/CT_NonCOVID`` and
  the official patient-level split ``Data-split/COVID/{train,val,test}CT_COVID.txt``,
  ``Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt``. ``--split random`` instead draws the
  seed paper's 80/10/10 split by image, which puts panels of one patient in train and test; the
  evaluation then warns, which is the point of offering it.
- **folder per class**: two class folders of images, optionally inside ``train``/``val``/``test``
  (else split 70/15/15 by patient, seeded); images in a sub-folder of a class folder belong to
  the patient that sub-folder names.
- **synthetic DICOM studies** as ``scpnode synth`` writes them: ``ground_truth.csv``
  (``study_instance_uid,label[,split]``) and one folder per study.

Patients matter because panels of one patient are near-duplicates: a split that separates
images but not patients measures memory. Without patient IDs (``COVID-CT-MetaInfo.csv`` with
``File name`` and ``Patient ID`` columns, at the root), COVID-CT patients are approximated by
the source paper of the figure (the part of the name before ``-p<page>``) or the figure (the
part before ``%``): coarser than patients, so a leak cannot hide in it.

Nothing here reads pixels: the caller loads PNGs or DICOM through the serving code.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
COVID_LABELS = {"covid19": 1, "non_covid19": 0}
PAPER_SPLIT = (0.8, 0.1, 0.1)


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message names the path and what was expected."""


@dataclass(frozen=True)
class Item:
    """One image (``png-8bit``) or one study's series folder (``dicom-hu``)."""

    path: Path
    label: int  # 1: COVID-19
    group: str  # patient or study: aggregated together, kept in one split
    split: str


@dataclass(frozen=True)
class Dataset:
    kind: str  # covid-ct | folders | synthetic-dicom
    root: Path
    domain: str  # png-8bit | dicom-hu
    items: tuple[Item, ...]
    notes: tuple[str, ...] = ()

    def subset(self, split: str) -> list[Item]:
        """Items of one split, or every item for ``all``."""
        if split == "all":
            return list(self.items)
        return [i for i in self.items if i.split == split]

    def shared_groups(self, a: str = "train", b: str = "test") -> set[str]:
        """Patients (or studies) that appear in both splits: a leak."""
        return {i.group for i in self.subset(a)} & {i.group for i in self.subset(b)}

    def summary(self) -> str:
        parts = []
        for split in SPLITS:
            items = self.subset(split)
            pos = sum(i.label for i in items)
            groups = len({i.group for i in items})
            parts.append(f"{split} {len(items)} ({pos} COVID, {groups} patients/studies)")
        return f"{self.kind} at {self.root} [{self.domain}]: " + "; ".join(parts)


def open_dataset(
    root: Path | str, *, split: str = "official", seed: int = 0, positive: str | None = None
) -> Dataset:
    """Recognise the layout of ``root`` and index it (see the module docstring).

    ``split``: ``official`` (the layout's own split; a seeded split by patient where there is
    none) or ``random`` (the paper's 80/10/10 by image, leaky on purpose).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if split not in ("official", "random"):
        raise DatasetError(f"split must be 'official' or 'random', got {split!r}")
    if (root / "Images-processed").exists() or (root / "Data-split").exists():
        data = covid_ct(root)
    elif (root / "ground_truth.csv").exists():
        data = synthetic_dicom(root, seed=seed)
    else:
        data = folder_per_class(root, seed=seed, positive=positive)
    if split == "random":
        data = random_split(data, seed=seed)
    return data


# --- COVID-CT -------------------------------------------------------------------------------

_COVID_CT_CLASSES = (("CT_COVID", "COVID", 1), ("CT_NonCOVID", "NonCOVID", 0))


def covid_ct(root: Path) -> Dataset:
    """The COVID-CT layout with its official patient-level split files."""
    images = root / "Images-processed"
    patients = _meta_patients(root)
    items: list[Item] = []
    notes: list[str] = []
    for folder, split_dir, label in _COVID_CT_CLASSES:
        class_dir = images / folder
        if not class_dir.is_dir():
            zipped = images / f"{folder}.zip"
            hint = f" ({zipped} is there: unzip it first)" if zipped.exists() else ""
            raise DatasetError(
                f"COVID-CT layout: expected the image folder {class_dir}{hint}; the layout is "
                "Images-processed/CT_COVID, Images-processed/CT_NonCOVID and Data-split/"
            )
        for split in SPLITS:
            listing = root / "Data-split" / split_dir / f"{split}{folder}.txt"
            names, duplicates = _read_listing(listing)
            if duplicates:
                notes.append(f"{listing.name}: {duplicates} duplicate line(s) ignored")
            _check_listed(listing, class_dir, names)
            items += [
                Item(class_dir / n, label, patients.get(n) or _figure_group(n, label), split)
                for n in names
            ]
    listed = {i.path.name for i in items}
    unlisted = sum(
        1
        for folder, _, _ in _COVID_CT_CLASSES
        for p in _images_in(images / folder)
        if p.name not in listed
    )
    if unlisted:
        notes.append(f"{unlisted} image(s) not in any Data-split file were left out")
    if not patients:
        notes.append(
            "no COVID-CT-MetaInfo.csv: patients approximated by source paper/figure "
            "(file-name prefix), coarser than patients"
        )
    return Dataset("covid-ct", root, "png-8bit", tuple(items), tuple(notes))


def _read_listing(path: Path) -> tuple[list[str], int]:
    if not path.is_file():
        raise DatasetError(
            f"COVID-CT layout: expected the split file {path} (one image file name per line)"
        )
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    unique = list(dict.fromkeys(lines))
    return unique, len(lines) - len(unique)


def _check_listed(listing: Path, class_dir: Path, names: Sequence[str]) -> None:
    missing = [n for n in names if not (class_dir / n).is_file()]
    if missing:
        raise DatasetError(
            f"{listing} lists {len(missing)} image(s) not found in {class_dir}: "
            + ", ".join(missing[:5])
            + (" ..." if len(missing) > 5 else "")
        )


def _meta_patients(root: Path) -> dict[str, str]:
    """File name → patient from ``COVID-CT-MetaInfo.csv`` (a CSV export of the xlsx), if any."""
    path = root / "COVID-CT-MetaInfo.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "File name" not in rows[0] or "Patient ID" not in rows[0]:
        raise DatasetError(f"{path}: expected the columns 'File name' and 'Patient ID'")
    return {r["File name"].strip(): f"patient:{r['Patient ID'].strip()}" for r in rows}


def _figure_group(name: str, label: int) -> str:
    """COVID: the source paper (``<doi>-p<page>-...``); others: the figure (before ``%``)."""
    stem = Path(name).stem
    match = re.match(r"^(.*?)-p\d+", stem) if label == 1 else None
    base = match.group(1) if match else stem.split("%", 1)[0]
    return f"{'covid' if label else 'noncovid'}:{base}"


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


# --- folder per class -----------------------------------------------------------------------


def folder_per_class(root: Path, *, seed: int, positive: str | None = None) -> Dataset:
    """Two class folders (optionally under train/val/test); see the module docstring."""
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    bases = split_dirs or [root]
    classes = sorted({d.name for b in bases for d in b.iterdir() if _visible_dir(d)})
    if len(classes) != 2:
        raise DatasetError(
            f"{root}: expected a COVID-CT layout, a ground_truth.csv of synthetic studies, or a "
            "folder per class (exactly two class folders of images, optionally inside "
            f"train/val/test); found class folders {classes}"
        )
    pos = _positive_class(root, classes, positive)
    items = []
    for base in bases:
        split = base.name if split_dirs else ""
        for cls in classes:
            for path in _images_in(base / cls):
                rel = path.relative_to(base / cls)
                group = rel.parts[0] if len(rel.parts) > 1 else path.stem.split("%", 1)[0]
                items.append(Item(path, int(cls == pos), f"{cls}:{group}", split))
    if not items:
        raise DatasetError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    notes = [f"positive class: {pos}"]
    data = Dataset("folders", root, "png-8bit", tuple(items), ())
    if not split_dirs:
        data = group_split(data, (0.7, 0.15, 0.15), seed)
        notes.append(f"no train/val/test folders: split 70/15/15 by patient, seed {seed}")
    return replace(data, notes=tuple(notes))


def _visible_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "_"))


def _positive_class(root: Path, classes: Sequence[str], positive: str | None) -> str:
    if positive is not None:
        if positive not in classes:
            raise DatasetError(f"{root}: positive class {positive!r} is not one of {classes}")
        return positive

    def is_positive(name: str) -> bool:
        n = re.sub(r"[^a-z0-9]", "", name.lower())
        return n in ("positive", "1") or ("covid" in n and "noncovid" not in n)

    found = [c for c in classes if is_positive(c)]
    if len(found) != 1:
        raise DatasetError(
            f"{root}: cannot tell which of {list(classes)} is the COVID-19 class; "
            "name it with --positive"
        )
    return found[0]


# --- synthetic DICOM studies ----------------------------------------------------------------


def synthetic_dicom(root: Path, *, seed: int) -> Dataset:
    """Studies written by ``scpnode synth``: ``ground_truth.csv`` + ``<study>/<series>/*.dcm``."""
    path = root / "ground_truth.csv"
    with path.open(encoding="ascii", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0][:2] != ["study_instance_uid", "label"]:
        raise DatasetError(f"{path}: expected the header 'study_instance_uid,label[,split]'")
    has_split = len(rows[0]) > 2 and rows[0][2] == "split"
    items = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or row[1] not in COVID_LABELS:
            raise DatasetError(f"{path} line {n}: expected '<uid>,covid19|non_covid19'")
        split = row[2] if has_split and len(row) > 2 else ""
        if split and split not in SPLITS:
            raise DatasetError(f"{path} line {n}: split must be one of {SPLITS}")
        items.append(Item(_series_folder(root, row[0]), COVID_LABELS[row[1]], row[0], split))
    if not items:
        raise DatasetError(f"{path}: no studies listed")
    data = Dataset("synthetic-dicom", root, "dicom-hu", tuple(items), ())
    if has_split:
        return data
    return replace(
        group_split(data, (0.5, 0.25, 0.25), seed),
        notes=(f"no split column: studies split 50/25/25, stratified, seed {seed}",),
    )


def _series_folder(root: Path, study_uid: str) -> Path:
    """The study's series folder with the most DICOM files (synth writes one)."""
    study = root / study_uid
    series = [d for d in study.iterdir() if d.is_dir()] if study.is_dir() else []
    counts = {d: sum(1 for _ in d.glob("*.dcm")) for d in series}
    if not counts or max(counts.values()) == 0:
        raise DatasetError(
            f"{study}: expected a folder <series>/*.dcm for study {study_uid} of ground_truth.csv"
        )
    return max(counts, key=lambda d: (counts[d], d.name))


# --- splits ---------------------------------------------------------------------------------


def group_split(data: Dataset, fractions: Sequence[float], seed: int) -> Dataset:
    """Split by group (patient/study), stratified by the group's label, seeded."""
    labels: dict[str, int] = {}
    for item in data.items:
        labels[item.group] = max(labels.get(item.group, 0), item.label)
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for cls in (0, 1):
        groups = rng.permutation(sorted(g for g, lab in labels.items() if lab == cls))
        n = len(groups)
        n_train = max(1, round(fractions[0] * n)) if n else 0
        n_val = max(1 if n >= 3 else 0, round(fractions[1] * n))
        for i, g in enumerate(groups):
            split_of[str(g)] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    items = tuple(replace(i, split=split_of[i.group]) for i in data.items)
    return replace(data, items=items)


def random_split(data: Dataset, *, seed: int, fractions: Sequence[float] = PAPER_SPLIT) -> Dataset:
    """The seed paper's protocol: 80/10/10 by image, ignoring patients (leaks on purpose)."""
    order = np.random.default_rng(seed).permutation(len(data.items))
    n_train = round(fractions[0] * len(order))
    n_val = round(fractions[1] * len(order))
    split = np.empty(len(order), dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_val]] = "val"
    split[order[n_train + n_val :]] = "test"
    items = tuple(replace(item, split=str(s)) for item, s in zip(data.items, split, strict=True))
    note = f"random {fractions} split by image, seed {seed} (the paper's protocol; leaks patients)"
    return replace(data, items=items, notes=(*data.notes, note))
