"""kill -9 of `scpnode serve` during reception, inference and delivery; then restart.

Every instance answered 0x0000 must be processed, the study reported once, and the PACS must
hold exactly one SR for it (derived UIDs make a repeated send the same object).
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from scpnode.pacs_standin import PacsStandIn
from scpnode.synth import make_study_spec, write_study
from tests.conftest import need
from tests.system.peers import PEER_ENV, Orthanc, ServeProcess, free_port, wait_until

pytestmark = pytest.mark.system
FINAL = {"delivered", "failed", "expired", "ignored", "not_analysed"}


def node_config(root: Path, node_port: int, pacs: tuple[str, int], worker: str = "") -> Path:
    """`worker`: more lines for the [worker] section."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "node.toml"
    config.write_text(f"""
[node]
host = "127.0.0.1"
port = {node_port}
[storage]
spool_dir = "spool"
min_free_mb = 64
[database]
url = "sqlite:///node.db"
[study]
association_grace_s = 1.0
idle_timeout_s = 20
[model]
allow_synthetic = true
[worker]
poll_interval_s = 0.2
{worker}
[delivery]
retry_initial_s = 1
retry_max_s = 2
[[destinations]]
name = "pacs"
ae_title = "{pacs[0]}"
host = "127.0.0.1"
port = {pacs[1]}
[web]
enabled = false
""")
    return config


def study(serve: ServeProcess, uid: str) -> dict[str, Any] | None:
    return next((r for r in serve.studies() if r["study_instance_uid"] == uid), None)


def settled(serve: ServeProcess, uid: str) -> dict[str, Any] | None:
    row = study(serve, uid)
    return row if row and row["status"] in FINAL else None


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> Any:
    need("Orthanc")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start({})
    yield server
    server.stop()


def srs_in_orthanc(orthanc: Orthanc, study_uid: str) -> list[str]:
    found = orthanc.post(
        "/tools/find",
        {
            "Level": "Instance",
            "Expand": True,
            "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"},
        },
    )
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in found]


def test_kill_during_reception_loses_no_acknowledged_instance(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    port = free_port()
    serve = ServeProcess(node_config(tmp_path, port, (orthanc.aet, orthanc.dicom_port)), port)
    # long enough that the kill lands mid-study however fast the node acknowledges: 80 slices
    # were all stored within one 0.25 s poll once pydicom left the receive path
    slices = 200
    spec = make_study_spec(61, covid=True, n_slices=slices)
    write_study(spec, tmp_path / "study")
    serve.start()
    sender = subprocess.Popen([need("storescu"), "-v", "-aet", "CT01", "-aec", "SCPNODE", "+sd",
                               "+r", "127.0.0.1", str(port), str(tmp_path / "study")],
                              env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    spool = tmp_path / "spool" / spec.study_instance_uid
    wait_until(lambda: len(list(spool.rglob("*.dcm"))) >= 25, 60, "the first 25 slices",
               interval_s=0.01)  # fmt: skip
    serve.kill9()
    output = sender.communicate(timeout=60)[0]
    acknowledged = len(re.findall(r"Received Store Response \(Success\)", output))
    # the 25th file may be in the spool before its response left: killed mid-study is enough
    assert 20 <= acknowledged < slices, output[-2000:]
    serve.start()  # reconciliation, then completion by the grace/idle timers
    row = wait_until(lambda: settled(serve, spec.study_instance_uid), 120, "the study to settle")
    assert row["status"] == "delivered"
    assert row["received_instances"] >= acknowledged
    assert len(list(spool.rglob("*.dcm"))) == row["received_instances"]
    assert srs_in_orthanc(orthanc, spec.study_instance_uid) == [row["sr_sop_instance_uid"]]
    print(
        f"\nkill during reception: sent {slices} (storescu gave up after the kill), acknowledged "
        f"{acknowledged}, stored {row['received_instances']}, reported 1 SR"
    )
    assert serve.stop() == 0


def state_in_database(database: Path, uid: str) -> str | None:
    """The study's state read straight from the node's SQLite file: a few milliseconds, where
    the CLI takes a second, longer than a job on a fast machine."""
    if not database.exists():
        return None
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
        row = db.execute(
            "SELECT state FROM studies WHERE study_instance_uid = ?", (uid,)
        ).fetchone()
    return None if row is None else str(row[0])


def test_kill_during_inference_reports_once(tmp_path: Path, orthanc: Orthanc) -> None:
    port = free_port()
    # nothing scored while the study arrives: the job has all 160 slices to score, the window
    # in which it is killed (0.5-1 s on 2 cores)
    config = node_config(tmp_path, port, (orthanc.aet, orthanc.dicom_port), "prescore = false")
    serve = ServeProcess(config, port)
    spec = make_study_spec(62, covid=True, n_slices=160)
    write_study(spec, tmp_path / "study")
    serve.start()
    subprocess.run([need("storescu"), "-aet", "CT01", "-aec", "SCPNODE", "+sd", "+r",
                    "127.0.0.1", str(port), str(tmp_path / "study")], env=PEER_ENV, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    wait_until(lambda: state_in_database(tmp_path / "node.db", spec.study_instance_uid) ==
               "processing", 60, "inference to start", interval_s=0.01)  # fmt: skip
    serve.kill9(workers_too=True)  # the worker dies mid-job, holding the lease
    serve.start()  # the dead worker's lease is released at start-up
    row = wait_until(lambda: settled(serve, spec.study_instance_uid), 120, "the study to settle")
    assert row["status"] == "delivered" and row["received_instances"] == 160
    assert srs_in_orthanc(orthanc, spec.study_instance_uid) == [row["sr_sop_instance_uid"]]
    events = serve.cli("audit", "events", "--study", spec.study_instance_uid)
    assert "job_reclaimed" in events
    print("\nkill during inference: sent 160, acknowledged 160, stored 160, reported 1 SR")
    assert serve.stop() == 0


def test_kill_during_delivery_leaves_one_sr_at_the_pacs(tmp_path: Path, demo_weights: Path) -> None:
    pacs = PacsStandIn(tmp_path / "pacs", "SLOWPACS")
    pacs.delay_s = 8.0  # stores, then answers late: we die before we hear it
    pacs_port = pacs.start()
    port = free_port()
    serve = ServeProcess(node_config(tmp_path / "node", port, ("SLOWPACS", pacs_port)), port)
    spec = make_study_spec(63, n_slices=24)
    write_study(spec, tmp_path / "study")
    try:
        serve.start()
        subprocess.run([need("storescu"), "-aet", "CT01", "-aec", "SCPNODE", "+sd", "+r",
                        "127.0.0.1", str(port), str(tmp_path / "study")], env=PEER_ENV,
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        wait_until(lambda: pacs.received, 120, "the SR to reach the PACS")
        serve.kill9()  # the PACS has it; our database does not know yet
        pacs.delay_s = 0.0
        time.sleep(0.5)
        serve.start()
        row = wait_until(lambda: settled(serve, spec.study_instance_uid), 120, "delivery")
        assert row["status"] == "delivered" and row["deliveries"][0]["attempts"] >= 1
        sent_uids = {p.stem for p in pacs.received}
        assert sent_uids == {row["sr_sop_instance_uid"]}  # resent, but the same object
        assert len(list((tmp_path / "pacs").rglob("*.dcm"))) == 1
        print(
            f"\nkill during delivery: sent 24, acknowledged 24, stored 24, SR sent "
            f"{len(pacs.received)} times, 1 object at the PACS"
        )
        assert serve.stop() == 0
    finally:
        pacs.stop()
