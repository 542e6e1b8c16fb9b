import json
from pathlib import Path

from scpnode import audit
from scpnode.atna import json_lines
from scpnode.audit_views import list_events
from scpnode.cli import main
from scpnode.db import Database
from scpnode.domain import AuditKind


def events(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path}/a.db")
    db.upgrade()
    with db.session() as s:
        audit.append(s, AuditKind.NODE_STARTED, ae_title="SCPNODE")
        audit.append(
            s,
            AuditKind.ASSOCIATION_REJECTED,
            calling_aet="INTRUDER",
            peer="10.1.2.3:4567",
            reason="calling AE title not recognised",
        )
        audit.append(s, AuditKind.INSTANCE_STORED, study_uid="1.2.3", series={"1.2.3.4": 5})
        audit.append(s, AuditKind.JOB_CLAIMED, study_uid="1.2.3")  # internal: not exported
        audit.append(s, AuditKind.DELIVERED, study_uid="1.2.3", destination="pacs")
    return db


def test_events_become_dicom_audit_messages(tmp_path: Path) -> None:
    db = events(tmp_path)
    with db.session() as s:
        lines = list(json_lines(list_events(s), "SCPNODE", "2.25.1"))
    messages = [json.loads(line) for line in lines]
    assert [m["scpnode"]["kind"] for m in messages] == [
        "node_started",
        "association_rejected",
        "instance_stored",
        "delivered",
    ]
    start, rejected, stored, delivered = messages
    assert start["EventIdentification"]["EventTypeCode"][0]["csd-code"] == "110120"
    assert rejected["EventIdentification"]["EventID"]["csd-code"] == "110113"
    assert rejected["EventIdentification"]["EventOutcomeIndicator"] == "4"
    assert rejected["ActiveParticipant"][0] == {
        "UserID": "INTRUDER",
        "UserIsRequestor": True,
        "NetworkAccessPointID": "10.1.2.3",
        "NetworkAccessPointTypeCode": "2",
    }
    assert stored["EventIdentification"]["EventActionCode"] == "C"
    assert stored["ParticipantObjectIdentification"][0]["ParticipantObjectID"] == "1.2.3"
    assert delivered["EventIdentification"]["EventActionCode"] == "R"
    assert all(m["AuditSourceIdentification"]["AuditSourceID"] == "2.25.1" for m in messages)


def test_cli_export_filters(tmp_path: Path, capsys) -> None:
    events(tmp_path)
    config = tmp_path / "node.toml"
    config.write_text('[database]\nurl = "sqlite:///a.db"\n')
    assert main(["audit", "export", "--study", "1.2.3", "--config", str(config)]) == 0
    kinds = [json.loads(x)["scpnode"]["kind"] for x in capsys.readouterr().out.splitlines()]
    assert kinds == ["instance_stored", "delivered"]
    assert main(["audit", "export", "--since", "2999-01-01", "--config", str(config)]) == 0
    assert capsys.readouterr().out == ""
