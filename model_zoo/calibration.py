"""Study-score calibration: Platt scaling or isotonic regression, fitted on validation studies.

An aggregated study score (the mean of the top slice probabilities, a maximum, a fraction of
positive slices) is not a probability: a maximum over 300 slices is high for every study. It is
called one only after a calibrator, fitted on the validation split and stored in the model card,
has mapped it. Pure numpy: the node applies the stored parameters without torch.

Platt scaling fits ``p = sigmoid(a * logit(s) + b)`` by Newton's method with Platt's smoothed
targets ((N+ + 1) / (N+ + 2) and 1 / (N- + 2)), so perfectly separated validation studies (the
rule on synthetic data) give a finite slope instead of a step. Isotonic regression is the
pool-adjacent-violators fit, applied by linear interpolation between block centres; it needs
more validation studies than Platt to be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("platt", "isotonic")
_EPS = 1e-6


class CalibrationError(ValueError):
    """A calibrator cannot be fitted or read; the message says why."""


def _logit(s: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(s, np.float64), _EPS, 1.0 - _EPS)
    return np.log(s / (1.0 - s))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


@dataclass(frozen=True)
class Calibrator:
    """A fitted monotone map from a study score in [0, 1] to a probability."""

    method: str
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def apply(self, scores: np.ndarray | float) -> np.ndarray:
        """Calibrated probabilities (same shape as ``scores``)."""
        s = np.asarray(scores, np.float64)
        if self.method == "platt":
            return _sigmoid(self.a * _logit(s) + self.b)
        return np.interp(s, np.asarray(self.x), np.asarray(self.y))

    def __call__(self, score: float) -> float:
        return float(self.apply(score))

    def to_dict(self) -> dict[str, Any]:
        if self.method == "platt":
            return {"method": "platt", "a": self.a, "b": self.b}
        return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}


def calibrator_from_dict(raw: Mapping[str, Any], name: str = "calibrator") -> Calibrator:
    """Validate a stored calibrator; errors name ``name`` and the bad field."""
    method = raw.get("method")
    if method == "platt":
        a, b = raw.get("a"), raw.get("b")
        if not all(_finite(v) for v in (a, b)):
            raise CalibrationError(f"{name}: platt needs finite numbers 'a' and 'b'")
        return Calibrator("platt", a=float(a), b=float(b))  # type: ignore[arg-type]
    if method == "isotonic":
        x, y = raw.get("x"), raw.get("y")
        if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y) or not x:
            raise CalibrationError(f"{name}: isotonic needs lists 'x' and 'y' of equal length")
        if not all(_finite(v) for v in [*x, *y]) or np.any(np.diff(x) < 0):
            raise CalibrationError(f"{name}: isotonic 'x' must be finite and non-decreasing")
        return Calibrator("isotonic", x=tuple(map(float, x)), y=tuple(map(float, y)))
    raise CalibrationError(f"{name}: method must be one of {METHODS}, got {method!r}")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def fit(method: str, scores: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Fit ``method`` on validation study scores and labels (both classes needed)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    if len(scores) != len(labels) or labels.all() or not labels.any():
        raise CalibrationError("calibration needs validation studies of both classes")
    if method == "platt":
        return fit_platt(scores, labels)
    if method == "isotonic":
        return fit_isotonic(scores, labels)
    raise CalibrationError(f"calibration method must be one of {METHODS}, got {method!r}")


def fit_platt(scores: np.ndarray, labels: np.ndarray, iterations: int = 100) -> Calibrator:
    """Platt scaling on the logit of the score (Newton-Raphson, smoothed targets)."""
    z, y = _logit(scores), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    design = np.stack([z, np.ones_like(z)], axis=1)
    w = np.zeros(2)
    for _ in range(iterations):
        p = _sigmoid(design @ w)
        grad = design.T @ (p - t)
        hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return Calibrator("platt", a=float(w[0]), b=float(w[1]))


def fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Pool adjacent violators on the scores sorted ascending (non-decreasing fit)."""
    order = np.argsort(scores, kind="mergesort")
    xs, ys = np.asarray(scores, np.float64)[order], np.asarray(labels, np.float64)[order]
    blocks: list[list[float]] = []  # [sum_y, count, sum_x]
    for xv, yv in zip(xs, ys, strict=True):
        blocks.append([yv, 1.0, xv])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            sy, n, sx = blocks.pop()
            blocks[-1][0] += sy
            blocks[-1][1] += n
            blocks[-1][2] += sx
    x = tuple(b[2] / b[1] for b in blocks)
    y = tuple(b[0] / b[1] for b in blocks)
    return Calibrator("isotonic", x=x, y=y)
