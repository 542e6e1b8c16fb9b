"""Shared fixtures: real SQLite files, real SCPs on 127.0.0.1, dcmtk binaries on PATH."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from scpnode.config import NodeSettings
from scpnode.db import Database
from scpnode.ingest import Recorder
from scpnode.receive.server import ReceiveServer
from scpnode.spool import Spool

# dcmtk and Orthanc leave Nagle on unless told otherwise (each C-STORE would cost ~40 ms)
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def native_binary(name: str) -> str | None:
    """The compiled peer on PATH (dcmtk, dicom3tools, Orthanc), never a Python script of the
    same name: pynetdicom installs its own `storescu`/`storescp` into the virtualenv."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            with candidate.open("rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    return str(candidate)
    return None


def need(binary: str) -> str:
    path = native_binary(binary)
    if path is None:
        pytest.skip(f"{binary} not installed (apt-get install dcmtk dicom3tools orthanc)")
    return path


def ct_small() -> Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))


def partial_data(spool: Spool) -> list[Path]:
    """Data sets being received or left behind: the files in the process's `.incoming`, and
    those of its `.ready` folder that data was written into (the untaken ones are empty)."""
    found = [p for p in spool.incoming.iterdir() if p.is_file()]
    for path in spool.ready.glob("*") if spool.ready.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):  # taken and renamed meanwhile
            if path.stat().st_size:
                found.append(path)
    return found


@dataclass
class RunningScp:
    server: ReceiveServer
    recorder: Recorder
    db: Database
    spool: Spool
    port: int
    ae_title: str

    def finish(self) -> None:
        """Stop receiving and flush every record to the database (then assert on it)."""
        self.server.stop(drain_timeout_s=5)
        self.recorder.stop()


@pytest.fixture
def make_scp(tmp_path: Path) -> Iterator[Any]:
    started: list[RunningScp] = []
    saved_tempdir = tempfile.tempdir

    def start(**node: Any) -> RunningScp:
        min_free_mb = node.pop("min_free_mb", 1)
        settings = NodeSettings(host="127.0.0.1", **node)
        db = Database(f"sqlite:///{tmp_path}/scp.db")
        db.upgrade()
        spool = Spool(tmp_path / "spool", min_free_mb=min_free_mb)
        recorder = Recorder(db)
        recorder.start()
        server = ReceiveServer(settings, spool, recorder.submit)
        port = server.start(port=0)
        scp = RunningScp(server, recorder, db, spool, port, settings.ae_title)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.finish()
    tempfile.tempdir = saved_tempdir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session. Skipped where PostgreSQL is not
    installed, except in CI (`CI=true`), where the PostgreSQL tests must run: it fails."""
    from tests.pgserver import PgServer, PgUnavailable

    server = PgServer()
    try:
        server.start()
    except PgUnavailable as exc:
        server.stop()
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: PostgreSQL could not be started: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return str(pg_server.create_database())
