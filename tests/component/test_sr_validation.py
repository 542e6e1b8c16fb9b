"""Every kind of report we send, checked by three independent validators.

dciodvfy (dicom3tools: IOD, modules, Type 1/2), dsrdump (dcmtk: SR parse and relationship
constraints, template IDs) and pixelmed's DicomSRValidator (templates, -checktemplateid).
pixelmed 20220618 (Debian bookworm) reports two kinds of "Content Item not in template"
warnings on our TID 1501 groups; they are allowed here, and only they (docs/conformance.md).
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from scpnode.domain import Finding, Label, ModelIdentity, NodeIdentity, SliceScore, StudyResult
from scpnode.report import build_not_analysed_sr, build_result_sr, sr_to_bytes
from scpnode.synth import make_study_spec, study_datasets
from scpnode.uids import derive_uid, node_device_uid
from tests.conftest import need

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
JAVA_FLAGS = [
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
]  # pixelmed 20220618 on OpenJDK 17
ALLOWED_PIXELMED_WARNINGS = (
    # the qualitative evaluation COVID-19 = Present/Absent/Undetermined (TID 1501 row
    # "Qualitative Evaluations" is not in pixelmed 20220618's template tables)
    re.compile(r'/CODE \(840539006,SCT,"COVID-19"\): Content Item not in template$'),
    # our free-text notes (intended use, SYNTHETIC, not-analysed reason) in the same group
    re.compile(r'/TEXT \(121106,DCM,"Comment"\): Content Item not in template$'),
)
MODEL = ModelIdentity(
    "ctnet10",
    "synthetic-v2",
    "cd" * 32,
    synthetic=True,
    intended_use="research; not a medical device",
)
NODE = NodeIdentity("SCPNODE", node_device_uid("SCPNODE"), software_version="0.1.0")
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def slices() -> list[Dataset]:
    datasets = study_datasets(make_study_spec(41, covid=True, n_slices=6))
    for ds in datasets:
        del ds.PixelData  # header-only evidence, as the pipeline passes it
    return datasets


def result_sr(evidence: list[Dataset], finding: Finding) -> Dataset:
    keys = tuple(
        SliceScore(ds.SOPInstanceUID, ds.SOPClassUID, i, float(i), 0.9 - i / 10)
        for i, ds in enumerate(evidence[:5])
    )
    label = {Finding.PRESENT: Label.COVID19, Finding.ABSENT: Label.NON_COVID19}.get(finding)
    result = StudyResult(
        label,
        finding,
        0.81 if finding == Finding.PRESENT else 0.12,
        0.54,
        "mean of top 10% slice probabilities (k=1 of 6)",
        6,
        keys,
    )
    return build_result_sr(
        evidence=evidence,
        result=result,
        model=MODEL,
        node=NODE,
        series_instance_uid=derive_uid("v-series", finding),
        sop_instance_uid=derive_uid("v-sop", finding),
        instance_number=1,
        now=NOW,
    )


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("srs")
    evidence = slices()
    built = {
        "positive": result_sr(evidence, Finding.PRESENT),
        "negative": result_sr(evidence, Finding.ABSENT),
        "undetermined": result_sr(evidence, Finding.UNDETERMINED),
        "not_analysed": build_not_analysed_sr(
            evidence=evidence[:2],
            reason="no usable series: series 1.2.3: localizer",
            model=MODEL,
            node=NODE,
            series_instance_uid=derive_uid("v-series", "na"),
            sop_instance_uid=derive_uid("v-sop", "na"),
            instance_number=1,
            now=NOW,
        ),
    }
    paths = {}
    for name, ds in built.items():
        paths[name] = folder / f"{name}.dcm"
        paths[name].write_bytes(sr_to_bytes(ds))
    return paths


KINDS = ["positive", "negative", "undetermined", "not_analysed"]


@pytest.mark.parametrize("kind", KINDS)
def test_dciodvfy_finds_no_errors(reports: dict[str, Path], kind: str) -> None:
    run = subprocess.run(
        [need("dciodvfy"), "-new", str(reports[kind])], capture_output=True, text=True, timeout=60
    )
    output = run.stdout + run.stderr
    assert "Comprehensive3DSR" in output
    assert [ln for ln in output.splitlines() if "Error" in ln] == [], output


@pytest.mark.parametrize("kind", KINDS)
def test_dsrdump_parses_and_shows_the_templates(reports: dict[str, Path], kind: str) -> None:
    run = subprocess.run(
        [need("dsrdump"), "+Pt", str(reports[kind])], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "TID 1500" in run.stdout and "TID 1501" in run.stdout
    assert not [ln for ln in run.stderr.splitlines() if ln.startswith(("E:", "F:"))]
    expected = {
        "positive": "Present",
        "negative": "Absent",
        "undetermined": "Undetermined",
        "not_analysed": "Not analysed: no usable",
    }[kind]
    assert expected in run.stdout


def pixelmed(path: Path) -> str:
    java = need("java") if PIXELMED_JAR.exists() else None
    if java is None:
        pytest.skip("pixelmed-apps not installed (apt-get install pixelmed-apps)")
    run = subprocess.run(
        [
            java,
            *JAVA_FLAGS,
            "-cp",
            str(PIXELMED_JAR),
            "com.pixelmed.validate.DicomSRValidator",
            "-checktemplateid",
            "-checkcontentitemorder",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    return run.stdout + run.stderr


def test_pixelmed_accepts_the_templates_with_only_documented_warnings(
    reports: dict[str, Path],
) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:  # one JVM per file; two cores in CI
        outputs = dict(zip(KINDS, pool.map(pixelmed, [reports[k] for k in KINDS]), strict=True))
    for kind, output in outputs.items():
        assert "Found Comprehensive3DSR IOD" in output, output
        assert "Found Root Template TID_1500 (MeasurementReport)" in output, output
        problems = [
            ln
            for ln in output.splitlines()
            if ln.startswith(("Error", "Warning"))
            and not any(p.search(ln) for p in ALLOWED_PIXELMED_WARNINGS)
        ]
        assert problems == [], f"{kind}:\n" + "\n".join(problems)
