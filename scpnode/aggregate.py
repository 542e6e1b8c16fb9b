"""Slice probabilities → one study decision. Pure, so every rule is tested with plain numbers.

The default, the mean of the top 10 % slice probabilities, follows the top-k pooling of the
stronger study-level anchors (notes §3): a few strongly affected slices should decide, while a
single noisy slice should not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scpnode.domain import Finding, Label, SliceScore, StudyResult


def aggregate(
    scores: Sequence[SliceScore],
    *,
    threshold: float,
    method: str = "mean_top_fraction",
    top_fraction: float = 0.10,
    key_slices: int = 5,
    indeterminate: tuple[float, float] | None = None,
) -> StudyResult:
    """Decide the study; the key slices are the most probable ones, best first."""
    if not scores:
        raise ValueError("cannot aggregate a study with no scored slices")
    probs = sorted((s.probability for s in scores), reverse=True)
    if method == "mean_top_fraction":
        k = max(1, math.ceil(len(probs) * top_fraction))
        probability = sum(probs[:k]) / k
        name = f"mean of top {top_fraction:.0%} slice probabilities (k={k} of {len(probs)})"
    elif method == "max":
        probability, name = probs[0], "maximum slice probability"
    elif method == "mean":
        probability, name = sum(probs) / len(probs), "mean slice probability"
    else:
        raise ValueError(f"unknown aggregation method {method!r}")
    finding = _finding(probability, threshold, indeterminate)
    label = {Finding.PRESENT: Label.COVID19, Finding.ABSENT: Label.NON_COVID19}.get(finding)
    ranked = sorted(scores, key=lambda s: (-s.probability, s.index))
    return StudyResult(
        label=label,
        finding=finding,
        probability=float(probability),
        threshold=threshold,
        aggregation=name,
        n_slices=len(scores),
        key_slices=tuple(ranked[:key_slices]),
    )


def _finding(probability: float, threshold: float, band: tuple[float, float] | None) -> Finding:
    if band is not None and band[0] <= probability <= band[1]:
        return Finding.UNDETERMINED
    return Finding.PRESENT if probability >= threshold else Finding.ABSENT
