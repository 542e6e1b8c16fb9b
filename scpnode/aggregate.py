"""Slice probabilities → one study decision. Pure, so every rule is tested with plain numbers.

The default, the mean of the top 10 % slice probabilities, follows the top-k pooling of the
stronger study-level anchors (notes §3): a few strongly affected slices should decide, while a
single noisy slice should not. The other strategies: the maximum (COVNet-style pooling), and
the fraction of positive slices among the lung-bearing ones (Rahimzadeh et al.'s count rule).

Two optional steps around the rule:

- a **lung-presence gate**: ``votes`` marks the slices that show lung (the HU-based gate of
  ``model_zoo.preprocess.lung_fraction``); slices above and below the lungs then do not vote.
  A series with no lung-bearing slice at all falls back to every slice, and says so.
- **calibration**: an aggregated score is not a probability (a maximum over 300 slices is high
  for every study); ``calibrate``, fitted on validation studies and stored in the model card,
  maps it to one. The result's ``aggregation`` text records the rule, the gate and the
  calibration, and is what the audit and result rows store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from scpnode.domain import Finding, Label, SliceScore, StudyResult

METHODS = ("mean_top_fraction", "max", "mean", "fraction_positive")


def strategy_key(
    method: str,
    *,
    top_fraction: float = 0.10,
    slice_threshold: float = 0.5,
    lung_gate: bool = False,
    lung_min_fraction: float = 0.03,
) -> str:
    """A canonical name of everything that shapes the raw study score: the key under which
    a model card stores the calibrator fitted for that score."""
    if method not in METHODS:
        raise ValueError(f"unknown aggregation method {method!r}")
    param = {"mean_top_fraction": f"top_fraction={top_fraction:g}",
             "fraction_positive": f"slice_threshold={slice_threshold:g}"}.get(method)  # fmt: skip
    gate = f"lung_gate={lung_min_fraction:g}" if lung_gate else "lung_gate=off"
    return f"{method}({', '.join(p for p in (param, gate) if p)})"


def study_score(
    probs: Sequence[float],
    method: str,
    *,
    top_fraction: float = 0.10,
    slice_threshold: float = 0.5,
) -> tuple[float, str]:
    """The raw (uncalibrated) study score of some slice probabilities, and how it was made."""
    if not probs:
        raise ValueError("cannot aggregate a study with no scored slices")
    ranked = sorted(probs, reverse=True)
    n = len(ranked)
    if method == "mean_top_fraction":
        k = max(1, math.ceil(n * top_fraction))
        name = f"mean of top {top_fraction:.0%} slice probabilities (k={k} of {n}"
        return sum(ranked[:k]) / k, name
    if method == "max":
        return ranked[0], f"maximum slice probability (of {n}"
    if method == "mean":
        return sum(ranked) / n, f"mean slice probability (of {n}"
    if method == "fraction_positive":
        hits = sum(p >= slice_threshold for p in ranked)
        return hits / n, f"fraction of slices with p >= {slice_threshold:g} ({hits} of {n}"
    raise ValueError(f"unknown aggregation method {method!r}")


def aggregate(
    scores: Sequence[SliceScore],
    *,
    threshold: float,
    method: str = "mean_top_fraction",
    top_fraction: float = 0.10,
    key_slices: int = 5,
    indeterminate: tuple[float, float] | None = None,
    slice_threshold: float = 0.5,
    votes: Sequence[bool] | None = None,
    calibrate: Callable[[float], float] | None = None,
    calibration: str | None = None,
) -> StudyResult:
    """Decide the study; the key slices are the most probable voting ones, best first.

    ``votes`` (one per score) is the lung gate; ``calibrate`` maps the raw score to a
    probability and ``calibration`` names it (e.g. "platt") in the recorded method.
    """
    if not scores:
        raise ValueError("cannot aggregate a study with no scored slices")
    voting, gate_note = _voting(scores, votes)
    raw, name = study_score(
        [s.probability for s in voting], method,
        top_fraction=top_fraction, slice_threshold=slice_threshold,
    )  # fmt: skip
    name += f"{gate_note})"
    probability = raw
    if calibrate is not None:
        probability = float(calibrate(raw))
        name += f"; calibrated ({calibration or 'card'}) from raw score {raw:.4f}"
    elif votes is not None or method != "mean_top_fraction":
        name += "; uncalibrated score"
    finding = _finding(probability, threshold, indeterminate)
    label = {Finding.PRESENT: Label.COVID19, Finding.ABSENT: Label.NON_COVID19}.get(finding)
    ranked = sorted(voting, key=lambda s: (-s.probability, s.index))
    return StudyResult(
        label=label,
        finding=finding,
        probability=float(probability),
        threshold=threshold,
        aggregation=name,
        n_slices=len(scores),
        key_slices=tuple(ranked[:key_slices]),
    )


def _voting(
    scores: Sequence[SliceScore], votes: Sequence[bool] | None
) -> tuple[Sequence[SliceScore], str]:
    """The slices that vote, and the note the method text gets about the gate."""
    if votes is None:
        return scores, ""
    if len(votes) != len(scores):
        raise ValueError(f"{len(votes)} lung-gate votes for {len(scores)} slices")
    voting = [s for s, v in zip(scores, votes, strict=True) if v]
    if not voting:
        return scores, " slices; no lung-bearing slice found, all voted"
    return voting, f" lung-bearing slices; {len(scores) - len(voting)} without lung did not vote"


def _finding(probability: float, threshold: float, band: tuple[float, float] | None) -> Finding:
    if band is not None and band[0] <= probability <= band[1]:
        return Finding.UNDETERMINED
    return Finding.PRESENT if probability >= threshold else Finding.ABSENT
