"""The evaluation table (the paper's Table 1 with intervals) as Markdown and CSV, plus JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_zoo.metrics import Scored
from model_zoo.registry import get_spec

Interval = tuple[float, float] | None

COLUMNS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def _fmt(value: float | None, ci: Interval) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}-{ci[1]:.3f}]")


def _row(model: str, level: str, strategy: str, s: Scored, calibrated: bool | None) -> dict:
    row: dict[str, Any] = {"model": model, "level": level, "strategy": strategy, "n": s.n}
    for c in COLUMNS:
        value, ci = getattr(s, c), getattr(s, f"{c}_ci")
        row[c] = value
        row[f"{c}_ci_low"] = None if ci is None else ci[0]
        row[f"{c}_ci_high"] = None if ci is None else ci[1]
    row["threshold"] = s.threshold
    row["ece"] = s.ece
    row["calibrated"] = calibrated
    try:
        row["paper_accuracy"] = get_spec(model.split("@", 1)[0]).paper_accuracy
    except KeyError:
        row["paper_accuracy"] = None
    return row


def rows(report: Any) -> list[dict[str, Any]]:
    out = []
    for r in report.results:
        if r.slice is not None:
            out.append(_row(r.label, "slice", "-", r.slice, None))
        for key, s in r.study.items():
            level = "study*" if key == r.own_strategy else "study"
            out.append(_row(r.label, level, key, s, r.calibrated[key]))
    return out


def markdown(report: Any, table: list[dict[str, Any]]) -> str:
    lines = [
        "# Model evaluation",
        "",
        f"Dataset: {report.dataset}",
        f"Evaluated on: `{report.subset}`. 95 % intervals: Wilson (proportions), DeLong (AUC), "
        "bootstrap (F1). `study*`: the strategy and threshold of the model's card; other "
        "strategies use 0.5 when calibrated, else the median score. ECE: expected calibration "
        "error of the (calibrated, where the card has a calibrator) score.",
        "",
    ]
    lines += [f"> {w}" for w in report.warnings]
    lines += [
        "",
        "| model | level | strategy | n | accuracy | sensitivity | specificity | F1 | AUC "
        "| ECE | calibrated | paper accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        cells = [_fmt(row[c], _ci_of(row, c)) for c in COLUMNS]
        ece = "n/a" if row["ece"] is None else f"{row['ece']:.3f}"
        paper = "" if row["paper_accuracy"] is None else f"{row['paper_accuracy']:.3f}"
        cal = {True: "yes", False: "no", None: "-"}[row["calibrated"]]
        lines.append(
            f"| {row['model']} | {row['level']} | {row['strategy']} | {row['n']} | "
            + " | ".join(cells)
            + f" | {ece} | {cal} | {paper} |"
        )
    if report.missing:
        lines += ["", "No weights evaluated for: " + ", ".join(report.missing)]
    lines += [
        "",
        "Paper accuracy: Shah et al. 2020 on a random 73-image split that mixes slices of one "
        "patient across train and test; not comparable with patient-level numbers.",
    ]
    return "\n".join(lines) + "\n"


def _ci_of(row: dict[str, Any], c: str) -> Interval:
    lo, hi = row[f"{c}_ci_low"], row[f"{c}_ci_high"]
    return None if lo is None or hi is None else (lo, hi)


def write_report(report: Any, out: Path) -> list[Path]:
    from scpnode.zoo_eval import figures, write_csv, write_json

    table = rows(report)
    md = out / "results.md"
    md.write_text(markdown(report, table), encoding="utf-8")
    return [md, write_csv(table, out / "results.csv"), write_json(report, out / "results.json"),
            *figures(report, out)]  # fmt: skip
