"""`scpnode demo` exactly as a newcomer runs it: a subprocess, exit 0, correct decisions."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.system


def test_demo_reports_correct_decisions_and_every_sr_arrives(demo_weights: object) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "scpnode", "demo", "--slices", "32"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = re.findall(
        r"^(2\.25\.\d+)\s+(covid19|non_covid19)\s+(covid19|non_covid19)\s+"
        r"([0-9.]+)\s+delivered\s+yes$",
        run.stdout,
        re.MULTILINE,
    )
    assert len(rows) == 2, run.stdout
    assert sorted(truth for _, truth, _, _ in rows) == ["covid19", "non_covid19"]
    for _, truth, decision, _ in rows:
        assert decision == truth
    assert "Comprehensive 3D SR Storage" in run.stdout
    assert "COVID-19 (840539006, SCT)" in run.stdout
    assert "RESULT: every SR reached the PACS" in run.stdout
