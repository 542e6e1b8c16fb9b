import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scpnode.spool import READY, BadUid, Spool, StoreKind

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.prepare()
    return s


def test_layout_and_atomic_placement(spool: Spool) -> None:
    out = spool.write(b"abc", STUDY, SERIES, SOP)
    assert out.kind == StoreKind.STORED
    assert out.path == spool.root / STUDY / SERIES / f"{SOP}.dcm"
    assert out.path.read_bytes() == b"abc" and out.size == 3
    assert list(spool.incoming.iterdir()) == []


def test_same_bytes_twice_is_a_noop(spool: Spool) -> None:
    spool.write(b"abc", STUDY, SERIES, SOP)
    again = spool.write(b"abc", STUDY, SERIES, SOP)
    assert again.kind == StoreKind.DUPLICATE and list(spool.replaced.iterdir()) == []


def test_different_bytes_replace_and_keep_the_old_aside(spool: Spool) -> None:
    spool.write(b"old", STUDY, SERIES, SOP)
    out = spool.write(b"new", STUDY, SERIES, SOP)
    assert out.kind == StoreKind.REPLACED and out.path.read_bytes() == b"new"
    assert out.kept_aside is not None and out.kept_aside.read_bytes() == b"old"


@pytest.mark.parametrize("bad", ["../../etc", "1.2.03", "", "1.2.3/..", "1" * 65])
def test_bad_uids_never_touch_the_filesystem(spool: Spool, bad: str) -> None:
    with pytest.raises(BadUid):
        spool.write(b"x", bad, SERIES, SOP)
    with pytest.raises(BadUid):
        spool.write(b"x", STUDY, SERIES, bad)
    assert sorted(p.name for p in spool.root.iterdir()) == [".incoming", ".replaced"]


def test_prepare_drops_unacknowledged_partials(spool: Spool) -> None:
    (spool.incoming / "partial.part").write_bytes(b"half")
    assert spool.prepare() == 1 and list(spool.incoming.iterdir()) == []


def test_prepare_leaves_other_nodes_partials_alone(spool: Spool) -> None:
    """A shared spool: another host's node is receiving; a dead local process left a file."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    other = spool.incoming_root / "other-node:4242"
    gone = spool.incoming_root / f"{socket.gethostname()}:{dead.pid}"
    for folder in (other, gone):
        folder.mkdir()
        (folder / "partial.part").write_bytes(b"half")
    assert spool.prepare() == 1
    assert (other / "partial.part").exists() and not gone.exists()


def test_free_space_guard(tmp_path: Path) -> None:
    free_mb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize // 2**20
    assert Spool(tmp_path, min_free_mb=1).has_room()
    assert not Spool(tmp_path, min_free_mb=free_mb + 1024).has_room()


def test_fsync_mode_still_places(tmp_path: Path) -> None:
    s = Spool(tmp_path / "s", fsync=True)
    s.prepare()
    assert s.write(b"x", STUDY, SERIES, SOP).path.exists()


def test_prepare_drops_the_files_made_ahead_and_counts_only_data(spool: Spool) -> None:
    """`.ready` folders (receive/ready_files.py): ours and a dead local process's are
    removed; only a file that data was written into counts as a dropped partial."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    gone = spool.incoming_root / f"{socket.gethostname()}:{dead.pid}{READY}"
    other = spool.incoming_root / f"other-node:4242{READY}"
    for folder in (spool.ready, gone, other):
        folder.mkdir()
        (folder / "a.part").write_bytes(b"")
        (folder / "b.part").write_bytes(b"half")
    assert spool.prepare() == 2
    assert not spool.ready.exists() and not gone.exists()
    assert sorted(p.name for p in other.iterdir()) == ["a.part", "b.part"]
