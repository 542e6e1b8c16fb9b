"""The evaluation's figures, after the paper's: confusion matrices (Fig. 4), accuracy bars
(Fig. 5, here with 95 % intervals), ROC curves. matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_matrix(path: Path, tp: int, fp: int, tn: int, fn: int, title: str) -> Path:
    """A 2x2 matrix, true class in rows, predicted in columns, counts in the cells."""
    plt = _plt()
    cells = np.array([[tn, fp], [fn, tp]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=100)
    ax.imshow(cells, cmap="Blues")
    names = ["non-COVID", "COVID"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), v in np.ndenumerate(cells):
        colour = "white" if v > cells.max() / 2 else "black"
        ax.text(c, r, str(v), ha="center", va="center", color=colour)
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def accuracy_bars(
    path: Path, labels: Sequence[str], accuracy: Sequence[float],
    intervals: Sequence[tuple[float, float]], title: str,
) -> Path:  # fmt: skip
    """One bar per model with its Wilson 95 % interval."""
    plt = _plt()
    acc = np.asarray(accuracy)
    err = np.array([[a - lo for a, (lo, _) in zip(acc, intervals, strict=True)],
                    [hi - a for a, (_, hi) in zip(acc, intervals, strict=True)]])  # fmt: skip
    err = np.clip(err, 0.0, None).reshape(2, len(acc))  # float noise at 0/n and n/n
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels)), 3.4), dpi=100)
    ax.bar(range(len(labels)), acc, yerr=err, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95 % CI)")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def roc_curves(
    path: Path, curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str
) -> Path:
    """ROC curves (label, false-positive rate, true-positive rate) on one plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=100)
    for label, fpr, tpr in curves:
        ax.plot(fpr, tpr, label=label, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    if curves:
        ax.legend(fontsize=7, loc="lower right")
    return _save(plt, fig, path)
