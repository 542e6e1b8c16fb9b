"""The durable spool: ``<spool>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

Acknowledged means stored (DESIGN §7): bytes land in ``.incoming`` on the same filesystem and
are renamed into place before the peer hears 0x0000, so a crash never leaves a half file
under a real name. UIDs are checked against the DICOM grammar before they touch a path.

Several SCP nodes may share one spool (scale-out): each process receives into its own
``.incoming/<host>:<pid>`` folder (and ``<host>:<pid>.ready``, files created ahead), so a node
starting up drops only the partial files of its own dead predecessors, never those another
node is writing right now.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from scpnode.clock import utcnow
from scpnode.owners import is_dead_local_owner, process_owner
from scpnode.uids import is_valid_uid

INCOMING = ".incoming"
READY = ".ready"  # suffix of a process's folder of files created ahead (receive/ready_files.py)
REPLACED = ".replaced"


class BadUid(ValueError):
    """A UID that must not become a path component."""


class StoreKind(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: a no-op
    REPLACED = "replaced"  # same SOP Instance UID, new bytes: the old file is kept aside


@dataclass(frozen=True)
class StoreOutcome:
    kind: StoreKind
    path: Path
    sha256: str
    size: int
    kept_aside: Path | None = None


class Spool:
    """Filesystem layout, atomic placement, duplicate handling and the free-space guard."""

    def __init__(self, root: Path, *, min_free_mb: int = 0, fsync: bool = False) -> None:
        self.root = root
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self.fsync = fsync
        self.incoming_root = root / INCOMING
        self.incoming = self.incoming_root / process_owner()
        self.ready = self.incoming_root / (process_owner() + READY)
        self.replaced = root / REPLACED

    def prepare(self) -> int:
        """Create the layout and drop leftovers of interrupted receptions (never acknowledged):
        ours, and those of processes of this host that died; other nodes' are left alone."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.replaced.mkdir(parents=True, exist_ok=True)
        dropped = 0
        for entry in self.incoming_root.iterdir():
            if entry.is_file():  # a single-node layout's loose partial file
                entry.unlink(missing_ok=True)
                dropped += 1
            elif entry in (self.incoming, self.ready) or is_dead_local_owner(
                entry.name.removesuffix(READY)
            ):
                dropped += _drop_files(entry)
                if entry != self.incoming:
                    shutil.rmtree(entry, ignore_errors=True)
        return dropped

    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def has_room(self) -> bool:
        return self.free_bytes() >= self.min_free_bytes

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for name, uid in (("study", study_uid), ("series", series_uid), ("SOP instance", sop_uid)):
            if not is_valid_uid(uid):
                raise BadUid(f"{name} UID {uid!r} violates the DICOM UID grammar")
        return self.root / study_uid / series_uid / f"{sop_uid}.dcm"

    def place(
        self,
        temp: Path,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        *,
        digest: Callable[[], tuple[str, int]] | None = None,
    ) -> StoreOutcome:
        """Move a fully received file from `.incoming` into place (atomic rename).

        `digest` gives the file's (SHA-256, size) when the caller had it computed meanwhile
        (the SCP hashes while it parses the header); by default it is computed here.
        """
        target = self.path_for(study_uid, series_uid, sop_uid)
        sha256, size = digest() if digest is not None else file_sha256(temp)
        if self.fsync:
            _fsync_file(temp)
        kept_aside = None
        kind = StoreKind.STORED
        if target.exists():
            if file_sha256(target)[0] == sha256:
                temp.unlink(missing_ok=True)
                return StoreOutcome(StoreKind.DUPLICATE, target, sha256, size)
            kept_aside = self._keep_aside(target, sop_uid)
            kind = StoreKind.REPLACED
        target.parent.mkdir(parents=True, exist_ok=True)
        temp.replace(target)
        if self.fsync:
            _fsync_dir(target.parent)
        return StoreOutcome(kind, target, sha256, size, kept_aside)

    def write(self, data: bytes, study_uid: str, series_uid: str, sop_uid: str) -> StoreOutcome:
        """Store bytes held in memory (same guarantees as `place`)."""
        self.path_for(study_uid, series_uid, sop_uid)  # validate before writing anything
        temp = self.new_incoming_path()
        temp.write_bytes(data)
        return self.place(temp, study_uid, series_uid, sop_uid)

    def new_incoming_path(self) -> Path:
        return self.incoming / f"{os.getpid()}-{os.urandom(8).hex()}.part"

    def _keep_aside(self, target: Path, sop_uid: str) -> Path:
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.replaced / f"{sop_uid}.{stamp}.dcm"
        shutil.copy2(target, aside)
        return aside

    def iter_instances(self) -> Iterator[Path]:
        """Every placed instance file (not incoming, not kept-aside)."""
        for study in self.root.iterdir():
            if study.name.startswith(".") or not study.is_dir():
                continue
            yield from study.glob("*/*.dcm")


def _drop_files(folder: Path) -> int:
    """Delete the files in `folder`; returns how many held data (the `.ready` folders hold
    empty files made ahead, and a taken one the partial data set written into it)."""
    dropped = 0
    for path in [p for p in folder.iterdir() if p.is_file()]:
        dropped += path.stat().st_size > 0
        path.unlink(missing_ok=True)
    return dropped


def file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
