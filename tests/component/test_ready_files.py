"""Data set files created ahead (receive/ready_files.py), over real associations."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom.dimse_messages
from pydicom.uid import generate_uid

from scpnode.receive import ready_files
from scpnode.receive.ready_files import ReadyFile, ReadyFiles
from scpnode.send import Peer, store_datasets
from tests.conftest import PEER_ENV, ct_small, need, partial_data


def fresh_cts(n: int) -> list[pydicom.Dataset]:
    out = []
    for _ in range(n):
        ds = ct_small()
        ds.SOPInstanceUID = generate_uid()
        out.append(ds)
    return out


def placed_inodes(scp: Any) -> set[int]:
    return {p.stat().st_ino for p in scp.spool.iter_instances()}


def ready_inodes(scp: Any) -> set[int]:
    return {p.stat().st_ino for p in scp.spool.ready.iterdir()}


def test_data_sets_land_in_files_created_before_their_c_store(make_scp, tmp_path: Path) -> None:
    """The files the instances were placed as are the ones made ahead (a rename keeps the
    inode; a file created during the C-STORE would be a new inode, since the ready ones
    still exist). dcmtk's storescu is the scanner."""
    storescu = need("storescu")
    scp = make_scp()
    pool = scp.server.handlers.ready_files
    assert pool is not None and pool.wait_full(10)
    ahead = ready_inodes(scp)
    assert len(ahead) == ready_files.DEPTH
    paths = []
    for i, ds in enumerate(fresh_cts(3)):
        paths.append(tmp_path / f"ct{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    run = subprocess.run(
        [storescu, "-aec", scp.ae_title, "127.0.0.1", str(scp.port), *map(str, paths)],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    placed = placed_inodes(scp)
    assert len(placed) == 3 and placed <= ahead
    assert pool.wait_full(10)  # taken files are replaced
    assert not ready_inodes(scp) & placed
    assert partial_data(scp.spool) == []
    sent = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    assert {pydicom.dcmread(p).SOPInstanceUID for p in scp.spool.iter_instances()} == sent


def test_stop_deletes_the_files_nobody_took(make_scp) -> None:
    scp = make_scp()
    pool = scp.server.handlers.ready_files
    assert pool is not None and pool.wait_full(10)
    assert store_datasets(fresh_cts(1), Peer(scp.ae_title, "127.0.0.1", scp.port), "CT01") == [0]
    scp.finish()
    assert list(scp.spool.ready.iterdir()) == []
    assert len(list(scp.spool.iter_instances())) == 1


def test_files_deleted_under_the_pool_are_not_handed_out(make_scp) -> None:
    """An admin empties the `.incoming` tree while the node runs: the open files made ahead
    have no name left to rename into the spool; they are dropped and the instance is still
    stored (in a fresh file), acknowledged and on disk."""
    scp = make_scp()
    pool = scp.server.handlers.ready_files
    assert pool is not None and pool.wait_full(10)
    shutil.rmtree(scp.spool.ready)
    datasets = fresh_cts(2)
    assert store_datasets(datasets, Peer(scp.ae_title, "127.0.0.1", scp.port), "CT01") == [0, 0]
    stored = {pydicom.dcmread(p).SOPInstanceUID for p in scp.spool.iter_instances()}
    assert stored == {ds.SOPInstanceUID for ds in datasets}


def test_pool_refills_after_a_failed_create(tmp_path: Path) -> None:
    """No folder to create in (e.g. removed, or out of inodes): nothing is handed out, the
    filler keeps trying, and fills once it can create again."""
    folder = tmp_path / "ready"
    pool = ReadyFiles(folder, depth=2)
    pool.start()
    try:
        assert pool.wait_full(10)
        shutil.rmtree(folder)
        assert pool.take() is None and pool.take() is None  # both names gone: dropped
        assert not pool.wait_full(0.3)
        folder.mkdir()
        assert pool.wait_full(ready_files.RETRY_S + 10)
        taken = pool.take()
        assert isinstance(taken, ReadyFile) and Path(taken.name).parent == folder
        taken.close()
    finally:
        pool.stop()
    assert [p.name for p in folder.iterdir()] == [Path(taken.name).name]


def test_other_threads_and_other_calls_get_a_real_temporary_file(tmp_path: Path) -> None:
    """Only a DUL thread given a pool, asking exactly what pynetdicom asks, takes a ready
    file; anything else, and an empty pool, gets tempfile's own NamedTemporaryFile."""
    ready_files.install()
    make = pynetdicom.dimse_messages.NamedTemporaryFile
    pool = ReadyFiles(tmp_path / "ready", depth=1)
    pool.start()
    assert pool.wait_full(10)
    got: dict[str, Any] = {}

    class Provided(threading.Thread):
        def run(self) -> None:
            got["pynetdicom's call"] = make(delete=False, mode="wb", suffix=".dcm")
            got["empty pool"] = make(delete=False, mode="wb", suffix=".dcm")
            got["another call"] = make(delete=False, mode="wb", suffix=".tmp", dir=tmp_path)

    thread = Provided()
    setattr(thread, ready_files._FILES, pool)
    thread.start()
    thread.join(10)
    got["another thread"] = make(delete=False, mode="wb", suffix=".dcm", dir=tmp_path)
    pool.stop()
    assert isinstance(got.pop("pynetdicom's call"), ReadyFile)
    for what, made in got.items():
        assert isinstance(made, tempfile._TemporaryFileWrapper), what
        made.close()
        Path(made.name).unlink()
