"""The node end to end: `scpnode serve` as a subprocess, dcmtk `storescu` as the scanner, a
real Orthanc as the PACS; every SR checked in Orthanc, with `dciodvfy` and with `dsrdump`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from scpnode.synth import (
    head_ct_spec,
    localizer_dataset,
    make_study_spec,
    write_dataset,
    write_study,
)
from tests.conftest import need
from tests.system.peers import PEER_ENV, Orthanc, ServeProcess, free_port, wait_until

pytestmark = pytest.mark.system
FINAL = {"delivered", "failed", "expired", "ignored", "not_analysed"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> Iterator[Any]:
    for binary in ("storescu", "dciodvfy", "dsrdump", "Orthanc"):
        need(binary)
    root = tmp_path_factory.mktemp("serve")
    node_port = free_port()
    orthanc = Orthanc(root / "orthanc")
    orthanc.start({"scpnode": ["SCPNODE", "127.0.0.1", node_port]})
    config = root / "node.toml"
    config.write_text(f"""
[node]
host = "127.0.0.1"
port = {node_port}
allowed_calling_aets = ["CT01", "ORTHANC", "PROBE"]
[storage]
spool_dir = "spool"
min_free_mb = 64
[database]
url = "sqlite:///node.db"
[study]
association_grace_s = 1.0
[model]
allow_synthetic = true
[worker]
poll_interval_s = 0.2
[delivery]
retry_initial_s = 1
[[destinations]]
name = "orthanc"
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
[web]
enabled = false
""")
    serve = ServeProcess(config, node_port)
    serve.start()
    yield serve, orthanc, root
    code = serve.stop()
    orthanc.stop()
    assert code == 0, "serve must exit 0 on SIGTERM"


def storescu(node: ServeProcess, folder: Path, aet: str = "CT01") -> None:
    run = subprocess.run(
        [
            need("storescu"),
            "-aet",
            aet,
            "-aec",
            node.ae_title,
            "+sd",
            "+r",
            "127.0.0.1",
            str(node.port),
            str(folder),
        ],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def settled(node: ServeProcess, uids: list[str]) -> list[dict[str, Any]] | None:
    rows = {r["study_instance_uid"]: r for r in node.studies()}
    if all(uid in rows and rows[uid]["status"] in FINAL for uid in uids):
        return [rows[uid] for uid in uids]
    return None


def validate_sr(path: Path) -> None:
    dciodvfy = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    errors = [ln for ln in (dciodvfy.stdout + dciodvfy.stderr).splitlines() if "Error" in ln]
    assert errors == [], "\n".join(errors)
    dsrdump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
    assert dsrdump.returncode == 0, dsrdump.stderr
    assert (
        "COVID-19" in dsrdump.stdout and "Probability" in dsrdump.stdout
    ) or "Not analysed" in dsrdump.stdout


def content_items(ds: Any) -> Iterator[Any]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def concept(item: Any, attribute: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = item[attribute][0]
    return code.CodeValue, code.CodingSchemeDesignator


def assert_coded_content(ds: Any, row: dict[str, Any]) -> None:
    """The finding, its evaluation, the probability and the algorithm, as PACS stores them."""
    items = list(content_items(ds))
    evaluation = {"covid19": ("52101004", "SCT"), "non_covid19": ("272519000", "SCT")}
    (finding,) = [i for i in items if i.ValueType == "CODE" and concept(i) == ("840539006", "SCT")]
    assert concept(finding, "ConceptCodeSequence") == evaluation[row["label"]]
    probabilities = [i for i in items if i.ValueType == "NUM" and concept(i) == ("122157", "DCM")]
    study_p = probabilities[0].MeasuredValueSequence[0]
    assert float(study_p.NumericValue) == pytest.approx(row["probability"], abs=1e-6)
    assert concept(study_p, "MeasurementUnitsCodeSequence") == ("1", "UCUM")
    texts = {(concept(i)[0], i.TextValue) for i in items if i.ValueType == "TEXT"}
    name, version = row["model"].split("@")
    assert ("111001", name) in texts and ("111003", version) in texts
    images = [i for i in items if i.ValueType == "IMAGE"]
    assert images and all(
        i.ReferencedSOPSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        for i in images
    )


def sr_from_orthanc(orthanc: Orthanc, sop_uid: str, dest: Path) -> Path:
    (instance_id,) = orthanc.find_instance(sop_uid)
    dest.write_bytes(orthanc.get(f"/instances/{instance_id}/file"))
    return dest


def test_studies_are_classified_reported_and_delivered_to_orthanc(node: Any) -> None:
    serve, orthanc, root = node
    data = root / "studies"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "scpnode",
            "synth",
            "--out",
            str(data),
            "--studies",
            "2",
            "--slices",
            "32",
            "--seed",
            "11",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    with (data / "ground_truth.csv").open() as fh:
        truth = {row["study_instance_uid"]: row["label"] for row in csv.DictReader(fh)}
    assert sorted(truth.values()) == ["covid19", "non_covid19"]
    for study_uid in truth:
        storescu(serve, data / study_uid)
    rows = wait_until(lambda: settled(serve, list(truth)), 240, "both studies to settle")
    for row in rows:
        assert row["status"] == "delivered", row
        assert row["label"] == truth[row["study_instance_uid"]], row
        assert row["calling_aet"] == "CT01" and row["calling_aets"] == ["CT01"]
        assert row["received_instances"] == 32 and row["model"].startswith("ctnet10@")
        (delivery,) = row["deliveries"]
        assert (delivery["destination"], delivery["status"], delivery["attempts"]) == (
            "orthanc",
            "delivered",
            1,
        )
        sr = sr_from_orthanc(orthanc, row["sr_sop_instance_uid"], root / "sr.dcm")
        validate_sr(sr)
        ds = pydicom.dcmread(sr)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
        assert ds.StudyInstanceUID == row["study_instance_uid"]
        assert ds.VerificationFlag == "UNVERIFIED" and "NOT FOR DIAGNOSIS" in ds.SeriesDescription
        assert_coded_content(ds, row)


def test_out_of_scope_study_is_ignored_and_not_analysed_gets_an_sr(node: Any) -> None:
    serve, orthanc, root = node
    head = head_ct_spec(seed=5, n_slices=12)
    write_study(head, root / "head")
    chest = make_study_spec(seed=6, covid=False, n_slices=12)
    write_dataset(localizer_dataset(chest), root / "scout")  # a chest study with a scout only
    storescu(serve, root / "head")
    storescu(serve, root / "scout")
    uids = [head.study_instance_uid, chest.study_instance_uid]
    ignored, not_analysed = wait_until(lambda: settled(serve, uids), 120, "scope decisions")
    assert ignored["status"] == "ignored" and ignored["sr_sop_instance_uid"] is None
    assert "not a chest CT" in ignored["reason"]
    assert not_analysed["status"] == "not_analysed" and "localizer" in not_analysed["reason"]
    delivered = wait_until(
        lambda: [
            r
            for r in serve.studies()
            if r["study_instance_uid"] == uids[1]
            and r["deliveries"]
            and r["deliveries"][0]["status"] == "delivered"
        ],
        60,
        "the not-analysed SR to be delivered",
    )
    validate_sr(sr_from_orthanc(orthanc, delivered[0]["sr_sop_instance_uid"], root / "na.dcm"))


def test_our_own_sr_routed_back_triggers_nothing(node: Any) -> None:
    serve, orthanc, _ = node
    row = next(r for r in serve.studies() if r["status"] == "delivered")
    (instance_id,) = orthanc.find_instance(row["sr_sop_instance_uid"])
    orthanc.post("/modalities/scpnode/store", instance_id)  # Orthanc C-STOREs it to us
    study = row["study_instance_uid"]
    wait_until(
        lambda: any(
            e["kind"] == "own_object_received"
            for e in json.loads(serve.cli("audit", "events", "--study", study, "--json"))
        ),
        30,
        "the routed-back SR to be recorded",
    )
    after = next(r for r in serve.studies() if r["study_instance_uid"] == study)
    assert (
        after["status"] == "delivered"
        and after["sr_sop_instance_uid"] == row["sr_sop_instance_uid"]
    )
    shown = json.loads(serve.cli("audit", "show", study, "--json"))
    assert len(shown["results"]) == 1 and len(shown["reports"]) == 1
    assert any(s["own_object"] for s in shown["series"])
    assert "intact" in serve.cli("audit", "verify")


def test_admin_cli_answers_what_happened(node: Any) -> None:
    from datetime import datetime

    serve, _, _ = node
    assert "orthanc (ORTHANC@127.0.0.1" in serve.cli("echo") and "0x0000" in serve.cli("echo")
    table = serve.cli("audit", "studies")
    assert table.splitlines()[0].split()[:4] == ["STUDY", "FROM", "N", "STATUS"]
    assert "orthanc:delivered(1)" in table and "ignored" in table
    row = next(r for r in serve.studies() if r["label"] == "covid19")
    text = serve.cli("audit", "show", row["study_instance_uid"])
    for words in (
        "series_selected",
        "axial slices",
        "study_result",
        "association_released",
        "-> orthanc: delivered after 1 attempt(s)",
    ):
        assert words in text
    events = json.loads(serve.cli("audit", "events", "--json"))
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert all(datetime.fromisoformat(e["ts"]).utcoffset() is not None for e in events)
    assert "node_started" in {e["kind"] for e in events}


def test_logs_carry_uids_not_patient_names_or_ids(node: Any) -> None:
    serve, _, _ = node
    log = serve.log.read_text()
    assert "study complete, queued" in log  # the log is there, and about the studies
    assert "PHANTOM" not in log and "SYN-" not in log  # synth's patient names and IDs
