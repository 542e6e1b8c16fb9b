"""Plain-text tables for the CLI: readable in a terminal and in a ticket, no extra dependency."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

MAX_CELL = 64


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if (
        isinstance(value, list)
        and value
        and isinstance(value[0], dict)
        and "destination" in value[0]
    ):
        return ", ".join(f"{d['destination']}:{d['status']}({d['attempts']})" for d in value)
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    cells = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [
        max([len(title)] + [len(r[i]) for r in cells]) for i, (_, title) in enumerate(columns)
    ]
    print("  ".join(title.ljust(w) for (_, title), w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")


def print_study(study: dict[str, Any]) -> None:
    """`audit show`: the answer to "what happened to study X, and why?"."""
    for key in (
        "study_instance_uid",
        "status",
        "reason",
        "calling_aets",
        "received_instances",
        "label",
        "probability",
        "model",
        "sr_sop_instance_uid",
        "first_received_at",
    ):
        print(f"{key:>20}: {cell(study.get(key))}")
    print("\nseries:")
    print_table(
        study["series"],
        [
            ("series_instance_uid", "SERIES"),
            ("modality", "MOD"),
            ("description", "DESCRIPTION"),
            ("instances", "N"),
            ("own_object", "OURS"),
        ],
    )
    for result in study["results"]:
        print(
            f"\nresult {result['created_at']}: {result['outcome']} {result['label'] or ''} "
            f"p={cell(result['probability'])} threshold={cell(result['threshold'])} "
            f"({result['threshold_source'] or '-'}) model={result['model']}"
        )
        print(f"  {result['selection_reason'] or result['reason'] or ''}")
        if result["aggregation"]:
            print(f"  aggregation: {result['aggregation']}; {result['n_slices']} slices")
    for sr in study["reports"]:
        print(f"\nSR {sr['sop_instance_uid']} ({sr['kind']})")
        for d in sr["deliveries"]:
            print(
                f"  -> {d['destination']}: {d['status']} after {d['attempts']} attempt(s)"
                + (f"; last error: {d['last_error']}" if d["last_error"] else "")
            )
    print("\nevents:")
    print_table(
        study["events"], [("seq", "SEQ"), ("ts", "TIME"), ("kind", "EVENT"), ("detail", "DETAIL")]
    )
