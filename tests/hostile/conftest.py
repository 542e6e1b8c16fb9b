"""Fixtures for hostile-input tests: one long-lived SCP shared by many examples.

Built from the same pieces as `tests/conftest.py::make_scp` (real SQLite audit DB, real spool,
real pynetdicom SCP on 127.0.0.1), but module-scoped, so a property test can send hundreds of
examples without starting a node for each.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scpnode.config import NodeSettings
from scpnode.db import Database
from scpnode.ingest import Recorder
from scpnode.receive.server import ReceiveServer
from scpnode.spool import Spool
from tests.conftest import RunningScp

SHARED_NETWORK_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def _shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningScp]:
    base: Path = tmp_path_factory.mktemp("hostile-node")
    saved_tempdir = tempfile.tempdir
    settings = NodeSettings(host="127.0.0.1", network_timeout_s=SHARED_NETWORK_TIMEOUT_S)
    db = Database(f"sqlite:///{base}/scp.db")
    db.upgrade()
    spool = Spool(base / "spool", min_free_mb=1)
    recorder = Recorder(db)
    recorder.start()
    server = ReceiveServer(settings, spool, recorder.submit)
    port = server.start(port=0)
    scp = RunningScp(server, recorder, db, spool, port, settings.ae_title)
    try:
        yield scp
    finally:
        scp.finish()
        tempfile.tempdir = saved_tempdir


@pytest.fixture
def shared_scp(_shared_node: RunningScp) -> Iterator[RunningScp]:
    """The module's SCP, with pynetdicom's temp files pointed at its `.incoming` again.

    `tempfile.tempdir` is process-wide and `make_scp` points it at its own spool while it runs.
    """
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir = str(_shared_node.spool.incoming)
    try:
        yield _shared_node
    finally:
        tempfile.tempdir = saved_tempdir
