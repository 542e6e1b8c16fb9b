"""`scpnode models evaluate`: slice- and study-level numbers with 95 % intervals, figures, table.

Each weights file is loaded the way the node serves it (hash checked against its card, the
card's preprocessing), refused on data of another domain unless ``allow_domain_shift``. The
slice level is what the paper reported; the study (patient) level is what the node decides,
reported for every aggregation strategy, calibrated when the card holds a calibrator for it,
with the expected calibration error. A test split that shares patients with the training
split makes both levels optimistic: the report says so, loudly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_zoo.card import load_card
from model_zoo.datasets import Dataset, open_dataset
from model_zoo.metrics import Scored, roc_curve, score
from model_zoo.registry import names
from model_zoo.trainer import predict_logits
from scpnode import zoo_figures
from scpnode.infer.engine import load_model
from scpnode.zoo_data import Arrays, load
from scpnode.zoo_study import strategies, study_scores

Log = Callable[[str], None]


class DomainShiftError(ValueError):
    """A model trained on one kind of pixels asked to judge another."""


@dataclass
class ModelResult:
    label: str  # name@version
    name: str
    slice: Scored | None
    study: dict[str, Scored]  # strategy key → metrics
    calibrated: dict[str, bool]
    own_strategy: str
    roc: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class Report:
    dataset: str
    subset: str
    warnings: list[str] = field(default_factory=list)
    results: list[ModelResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def check_domain(card_domain: str, data_domain: str, allow: bool, what: str) -> None:
    if card_domain != data_domain and not allow:
        raise DomainShiftError(
            f"{what} was trained on {card_domain} data and this dataset is {data_domain}: "
            "refusing (a model trained on 8-bit figure crops is not a model for HU data, nor "
            "the reverse); pass --allow-domain-shift to evaluate it anyway"
        )


def evaluate_one(
    weights: Path, data: Dataset, subset: str, device: torch.device, *,
    allow_domain_shift: bool, cache: dict[Any, Arrays],
) -> ModelResult:  # fmt: skip
    card = load_card(weights)
    check_domain(card.training_domain, data.domain, allow_domain_shift, f"{weights}")
    model = load_model(card.architecture, weights, device)
    pre = card.preprocessing
    key = (tuple(card.input_size), pre.window_center, pre.window_width, pre.body_crop)
    if key not in cache:
        cache[key] = load(data, data.subset(subset), card.input_size, pre)
    arrays = cache[key]
    probs = _sigmoid(predict_logits(model.module, arrays.images, pre.mean, pre.std))
    order = sorted(arrays.group_label)
    labels = np.asarray([arrays.group_label[g] for g in order])
    study: dict[str, Scored] = {}
    calibrated: dict[str, bool] = {}
    own = None
    roc = None
    for s in strategies(arrays.lung is not None):
        raw = study_scores(probs, arrays.groups, arrays.lung, s, order)
        cal = card.calibration.calibrator(s.key)
        values = raw if cal is None else cal.apply(raw)
        is_own = (s.method, s.lung_gate) == (card.aggregation.method, card.aggregation.lung_gate)
        threshold = card.threshold if is_own else (0.5 if cal is not None else _median(raw))
        study[s.key] = score(values, labels, threshold)
        calibrated[s.key] = cal is not None
        if is_own:
            own, roc = s.key, roc_curve(values, labels)
    sliced = score(probs, arrays.labels, 0.5) if arrays.slice_labels else None
    return ModelResult(
        label=f"{card.name}@{card.version}", name=card.name, slice=sliced, study=study,
        calibrated=calibrated, own_strategy=own or next(iter(study)), roc=roc,
    )  # fmt: skip


def _median(raw: np.ndarray) -> float:
    """An uncalibrated score has no natural threshold; the median at least splits it."""
    return float(np.median(raw))


def weights_in(folder: Path) -> list[Path]:
    """Every weights file with a card in ``folder``, registry order, then by name."""
    found = [p for p in sorted(folder.glob("*.pt")) if Path(f"{p}.card.json").is_file()]
    rank = {n: i for i, n in enumerate(names())}

    def arch(p: Path) -> int:
        try:
            return rank.get(load_card(p).architecture, len(rank))
        except ValueError:
            return len(rank)

    return sorted(found, key=lambda p: (arch(p), p.name))


def usable_weights(
    folder: Path, data_root: Path, split: str, allow_domain_shift: bool, log: Log = print
) -> list[Path]:
    """``--all``: the weights in ``folder`` that may judge this dataset (others: a note)."""
    domain = open_dataset(data_root, split=split).domain
    out = []
    for path in weights_in(folder):
        card = load_card(path)
        if card.training_domain != domain and not allow_domain_shift:
            log(f"skipped {path}: trained on {card.training_domain}, the data is {domain}")
            continue
        out.append(path)
    return out


def evaluate(
    weights: Sequence[Path], data_root: Path, out: Path, *, subset: str = "test",
    split: str = "official", seed: int = 0, device: torch.device, allow_domain_shift: bool = False,
    positive: str | None = None, log: Log = print,
) -> Report:  # fmt: skip
    """Evaluate ``weights`` on ``data_root``; write table, JSON and figures into ``out``."""
    data = open_dataset(data_root, split=split, seed=seed, positive=positive)
    report = Report(dataset=data.summary(), subset=subset)
    log(report.dataset)
    shared = data.shared_groups("train", subset) if subset in ("val", "test") else set()
    if shared:
        report.warnings.append(
            f"WARNING: the {subset} split shares {len(shared)} patient(s)/studies with the "
            "training split: these numbers measure memory as much as diagnosis"
        )
    report.warnings += [f"note: {n}" for n in data.notes]
    for w in report.warnings:
        log(w)
    cache: dict[Any, Arrays] = {}
    for path in weights:
        result = evaluate_one(path, data, subset, device,
                              allow_domain_shift=allow_domain_shift, cache=cache)  # fmt: skip
        report.results.append(result)
        log(_line(result))
    evaluated = {r.name for r in report.results}
    report.missing = [n for n in names() if n not in evaluated]
    out.mkdir(parents=True, exist_ok=True)
    from scpnode.zoo_report import write_report

    report.files = write_report(report, out)
    return report


def _line(r: ModelResult) -> str:
    s = r.study[r.own_strategy]
    text = f"{r.label}: study accuracy {s.accuracy:.3f} {_ci(s.accuracy_ci)} (n={s.n})"
    if r.slice is not None:
        text += f"; slice accuracy {r.slice.accuracy:.3f} {_ci(r.slice.accuracy_ci)}"
    return text


def _ci(ci: tuple[float, float] | None) -> str:
    return "[n/a]" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def figures(report: Report, out: Path) -> list[Path]:
    files = []
    bars: list[tuple[str, float, tuple[float, float]]] = []
    curves = []
    for r in report.results:
        slug = r.label.replace("@", "-").replace("/", "_")
        own = r.study[r.own_strategy]
        files.append(zoo_figures.confusion_matrix(
            out / f"confusion-{slug}-study.png", own.tp, own.fp, own.tn, own.fn,
            f"{r.label}, study level"))  # fmt: skip
        if r.slice is not None:
            s = r.slice
            files.append(zoo_figures.confusion_matrix(
                out / f"confusion-{slug}-slice.png", s.tp, s.fp, s.tn, s.fn,
                f"{r.label}, slice level"))  # fmt: skip
        if own.accuracy is not None and own.accuracy_ci is not None:
            bars.append((r.label, own.accuracy, own.accuracy_ci))
        if r.roc is not None:
            curves.append((f"{r.label} (AUC {own.auc or 0:.3f})", *r.roc))
    files.append(zoo_figures.accuracy_bars(
        out / "accuracy.png", [b[0] for b in bars], [b[1] for b in bars], [b[2] for b in bars],
        f"study-level accuracy ({report.subset})"))  # fmt: skip
    files.append(zoo_figures.roc_curves(out / "roc.png", curves, f"study level ({report.subset})"))
    return files


def write_json(report: Report, path: Path) -> Path:
    payload = {
        "dataset": report.dataset,
        "subset": report.subset,
        "warnings": report.warnings,
        "missing_weights": report.missing,
        "models": [
            {
                "model": r.label,
                "own_strategy": r.own_strategy,
                "slice": None if r.slice is None else r.slice.as_dict(),
                "study": {k: v.as_dict() for k, v in r.study.items()},
                "calibrated": r.calibrated,
            }
            for r in report.results
        ],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["model"])
        writer.writeheader()
        writer.writerows(rows)
    return path


__all__ = ["DomainShiftError", "Report", "evaluate", "usable_weights", "weights_in"]
