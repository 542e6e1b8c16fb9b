"""Binary classification metrics with 95 % confidence intervals, in plain numpy.

The paper reports bare accuracies on 73 images; a table a reader can trust gives intervals.
Proportions (accuracy, sensitivity, specificity) get Wilson score intervals, which stay inside
[0, 1] and behave at 0/n and n/n; ROC AUC gets DeLong's variance (no resampling, so the same
data give the same interval); F1, which is neither, gets a seeded percentile bootstrap.
Slices and studies are scored by the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054
Interval = tuple[float, float]


def wilson(successes: int, n: int, z: float = Z95) -> Interval | None:
    """Wilson score interval of a proportion; None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None with one class only."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per positive, the share of negatives it beats (ties
    half), and per negative the share of positives that beat it."""
    greater = (pos[:, None] > neg[None, :]).astype(np.float64)
    ties = (pos[:, None] == neg[None, :]).astype(np.float64)
    psi = greater + 0.5 * ties
    return psi.mean(axis=1), psi.mean(axis=0)


def delong_interval(scores: np.ndarray, labels: np.ndarray, z: float = Z95) -> Interval | None:
    """95 % interval of the AUC from DeLong's variance, clipped to [0, 1].

    Degenerate (zero width) when the classes are perfectly separated: the variance estimate
    is then 0, a known weakness at small n; the Wilson intervals of the accuracy say more.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) < 2 or len(neg) < 2:
        return None
    v10, v01 = _placements(pos, neg)
    auc = float(v10.mean())
    se = math.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


def f1_score(pred: np.ndarray, labels: np.ndarray) -> float | None:
    """F1 of the positive class; None when there is no positive prediction and no positive."""
    pred, labels = np.asarray(pred).astype(bool), np.asarray(labels).astype(bool)
    tp = int((pred & labels).sum())
    denom = int(pred.sum()) + int(labels.sum())
    return None if denom == 0 else 2.0 * tp / denom


def bootstrap_f1(
    pred: np.ndarray, labels: np.ndarray, *, rounds: int = 2000, seed: int = 0
) -> Interval | None:
    """Percentile bootstrap interval of F1 (seeded: the same data give the same interval)."""
    pred, labels = np.asarray(pred).astype(bool), np.asarray(labels).astype(bool)
    n = len(labels)
    if n < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(rounds, n))
    p, y = pred[idx], labels[idx]
    tp = (p & y).sum(axis=1)
    denom = p.sum(axis=1) + y.sum(axis=1)
    values = np.divide(2.0 * tp, denom, out=np.zeros(rounds), where=denom > 0)
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width probability bins (weighted mean |accuracy - confidence|)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(labels[sel].mean() - probs[sel].mean())
    return float(ece)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = max(1, int(labels.sum())), max(1, int((~labels).sum()))
    fpr, tpr = [0.0], [0.0]
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        fpr.append(float((pred & ~labels).sum() / n_neg))
        tpr.append(float((pred & labels).sum() / n_pos))
    return np.asarray(fpr), np.asarray(tpr)


def choose_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """Threshold with the best balanced accuracy; the median of equally good candidates.

    Candidates are midpoints between consecutive distinct scores, so with separable classes
    the threshold lands in the middle of the gap, not on a study's score.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return 0.5
    values = np.unique(np.concatenate([[0.0, 1.0], probs]))
    candidates = (values[:-1] + values[1:]) / 2.0
    pred = probs[None, :] >= candidates[:, None]
    balanced = (pred[:, labels].mean(axis=1) + (~pred[:, ~labels]).mean(axis=1)) / 2.0
    best = candidates[balanced >= balanced.max() - 1e-12]
    return float(best[len(best) // 2])


@dataclass(frozen=True)
class Scored:
    """Counts and metrics of one set of scores at one threshold, each with its 95 % interval."""

    n: int
    n_positive: int
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float | None
    accuracy_ci: Interval | None
    sensitivity: float | None
    sensitivity_ci: Interval | None
    specificity: float | None
    specificity_ci: Interval | None
    f1: float | None
    f1_ci: Interval | None
    auc: float | None
    auc_ci: Interval | None
    ece: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def score(probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
          threshold: float, *, seed: int = 0) -> Scored:  # fmt: skip
    """Everything the evaluation table needs for one model at one level."""
    probs, y = np.asarray(probs, np.float64), np.asarray(labels).astype(bool)
    pred = probs >= threshold
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    n, n_pos, n_neg = len(y), int(y.sum()), int((~y).sum())
    return Scored(
        n=n, n_positive=n_pos, threshold=float(threshold), tp=tp, fp=fp, tn=tn, fn=fn,
        accuracy=_ratio(tp + tn, n), accuracy_ci=wilson(tp + tn, n),
        sensitivity=_ratio(tp, n_pos), sensitivity_ci=wilson(tp, n_pos),
        specificity=_ratio(tn, n_neg), specificity_ci=wilson(tn, n_neg),
        f1=f1_score(pred, y), f1_ci=bootstrap_f1(pred, y, seed=seed),
        auc=roc_auc(probs, y), auc_ci=delong_interval(probs, y),
        ece=expected_calibration_error(probs, y) if n else None,
    )  # fmt: skip
