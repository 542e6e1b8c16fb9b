"""The per-slice probability plot of a study, as inline SVG rendered on the server.

No script and no chart library: the page works offline and under a strict Content Security
Policy. The x axis is the slice position along z (mm, as the scanner gave it), the y axis the
slice probability; the decision threshold is a dashed line and the key slices (the ones the SR
references) are marked, each with a tooltip (an SVG <title>).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 16, 40


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / (n - 1)
    return [low + i * step for i in range(n)]


def probability_svg(
    slices: Sequence[dict[str, Any]], threshold: float | None, key_uids: Iterable[str] = ()
) -> str:
    """SVG markup for `slices` (dicts with z, probability, index, sop_instance_uid)."""
    points = sorted(slices, key=lambda s: s["z"])
    if not points:
        return '<p class="muted">No slice scores.</p>'
    z_low, z_high = points[0]["z"], points[-1]["z"]
    span = (z_high - z_low) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(z: float) -> float:
        return LEFT + (z - z_low) / span * plot_w

    def y(p: float) -> float:
        return TOP + (1.0 - max(0.0, min(1.0, p))) * plot_h

    keys = set(key_uids)
    parts = [
        f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="plot-title" xmlns="http://www.w3.org/2000/svg">',
        '<title id="plot-title">Slice probability along z</title>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="plot-area"/>',
    ]
    parts += _axes(z_low, z_high, x, y)
    line = " ".join(f"{x(s['z']):.1f},{y(s['probability']):.1f}" for s in points)
    parts.append(f'<polyline class="plot-line" fill="none" points="{line}"/>')
    if threshold is not None:
        parts.append(
            f'<line class="plot-threshold" x1="{LEFT}" x2="{LEFT + plot_w}" '
            f'y1="{y(threshold):.1f}" y2="{y(threshold):.1f}"/>'
            f'<text class="plot-label" x="{LEFT + plot_w - 4}" y="{y(threshold) - 4:.1f}" '
            f'text-anchor="end">threshold {threshold:.2f}</text>'
        )
    parts += [_marker(s, x, y, s["sop_instance_uid"] in keys) for s in points]
    parts.append("</svg>")
    return "".join(parts)


def _axes(z_low: float, z_high: float, x: Any, y: Any) -> list[str]:
    parts = []
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line class="plot-grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(p):.1f}" '
            f'y2="{y(p):.1f}"/><text class="plot-tick" x="{LEFT - 6}" y="{y(p) + 4:.1f}" '
            f'text-anchor="end">{p:.2f}</text>'
        )
    for z in _ticks(z_low, z_high):
        parts.append(
            f'<text class="plot-tick" x="{x(z):.1f}" y="{HEIGHT - BOTTOM + 16}" '
            f'text-anchor="middle">{z:.0f}</text>'
        )
    parts.append(
        f'<text class="plot-label" x="{LEFT + (WIDTH - LEFT - RIGHT) / 2:.0f}" '
        f'y="{HEIGHT - 6}" text-anchor="middle">slice position z (mm)</text>'
    )
    return parts


def _marker(s: dict[str, Any], x: Any, y: Any, key: bool) -> str:
    tip = escape(
        f"slice {s['index']}, z = {s['z']:.1f} mm, p = {s['probability']:.3f}"
        + (" (key slice)" if key else "")
        + f"\n{s['sop_instance_uid']}"
    )
    css, r = ("plot-key", 5) if key else ("plot-point", 2)
    return (
        f'<circle class="{css}" cx="{x(s["z"]):.1f}" cy="{y(s["probability"]):.1f}" r="{r}">'
        f"<title>{tip}</title></circle>"
    )
