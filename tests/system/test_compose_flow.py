"""The docker-compose demonstration without Docker: `scpnode serve` on deploy/config/compose.toml
(only what Docker provides is overridden from the environment: addresses, ports, the volume's
paths), Orthanc as the PACS, and the `scpnode simulate` command line the compose file's header
tells users to run. Each simulated study must end with its SR in Orthanc.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.system.peers import Orthanc, ServeProcess, free_port, wait_until
from tests.system.test_crash import srs_in_orthanc

pytestmark = pytest.mark.system
DEPLOY = Path(__file__).parents[2] / "deploy"


def simulate_argv(port: int) -> list[str]:
    """The `scpnode simulate …` line of the compose file's header, aimed at our port."""
    text = (DEPLOY / "docker-compose.yml").read_text().replace("\\\n#", " ")
    line = re.search(r"^#.*?(scpnode simulate [^\n]*)", text, re.MULTILINE)
    assert line is not None, "the compose header no longer shows `scpnode simulate`"
    argv = shlex.split(line.group(1))[1:]
    to = argv.index("--to")
    assert argv[to + 1] == "127.0.0.1:11112"  # the compose service's own port
    argv[to + 1] = f"127.0.0.1:{port}"
    return [*argv, "--slices", "24"]  # smaller studies than a user's, same command


def test_compose_demo_flow_lands_a_report_in_orthanc(
    tmp_path: Path, demo_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("Orthanc")
    orthanc = Orthanc(tmp_path / "orthanc", aet="ORTHANC")
    orthanc.start({})
    port = free_port()
    state = tmp_path / "var-lib-scpnode"  # the compose volume
    for key, value in {
        "SCPNODE_NODE__HOST": "127.0.0.1",
        "SCPNODE_NODE__PORT": str(port),
        "SCPNODE_STORAGE__SPOOL_DIR": str(state / "spool"),
        "SCPNODE_STORAGE__OUTBOX_DIR": str(state / "outbox"),
        "SCPNODE_DATABASE__URL": f"sqlite:///{state}/scpnode.db",
        "SCPNODE_DESTINATIONS": f'[{{name = "orthanc", ae_title = "ORTHANC", '
        f'host = "127.0.0.1", port = {orthanc.dicom_port}}}]',
        "SCPNODE_WEB__ENABLED": "false",
    }.items():
        monkeypatch.setenv(key, value)  # inherited by serve and the CLI calls
    monkeypatch.delenv("SCPNODE_CONFIG", raising=False)
    serve = ServeProcess(DEPLOY / "config" / "compose.toml", port)
    serve.log = tmp_path / "serve.log"
    try:
        serve.start()
        done = subprocess.run([sys.executable, "-m", "scpnode", *simulate_argv(port)],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

        def delivered() -> list[dict[str, Any]] | None:
            rows = serve.studies()
            ok = len(rows) == 2 and all(r["status"] == "delivered" for r in rows)
            return rows if ok else None

        rows = wait_until(delivered, 240, "both simulated studies to be delivered")
        for row in rows:
            uid = row["study_instance_uid"]
            assert srs_in_orthanc(orthanc, uid) == [row["sr_sop_instance_uid"]], uid
        assert serve.stop() == 0
    finally:
        serve.stop()
        orthanc.stop()
