"""Tables for the CLI (rich): readable in a terminal and in a ticket."""

from __future__ import annotations

import json
import sys
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
    """A rich table: aligned, bold headings on a terminal, wrapped to its width there; piped
    into a file or a ticket it keeps every cell on one line (nothing folded mid-UID). Cells are
    plain `Text`, so a scanner's "[bold]" in an AE title is printed, not interpreted."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Console(width=None if sys.stdout.isatty() else 100_000, highlight=False)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for _, title in columns:
        table.add_column(title, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell(row.get(key))) for key, _ in columns))
    out.print(table)
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
