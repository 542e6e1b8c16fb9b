"""Files for incoming data sets, created before a C-STORE needs one.

pynetdicom creates each data set's temp file (`NamedTemporaryFile`) in the association's
DUL thread when the command set arrives, and the scanner sends nothing more until our
response: the create is on every instance's critical path. Creating a file is a journal
transaction; on the development VM, with the previous data sets being written back, it took
0.3-0.5 ms (strace, median), a tenth of the node's time per instance.

A filler thread keeps a few files created and open in the process's own
``.incoming/<host>:<pid>.ready`` folder. The `NamedTemporaryFile` that pynetdicom's DIMSE
module sees hands one of them to the DUL threads of our own associations (`provide`), for
the one call we know (`delete=False, mode="wb", suffix=".dcm"`); any other thread or call, or
an empty pool, gets a real `NamedTemporaryFile` as before. A taken file is used exactly like
pynetdicom's own: written, renamed by `on_store`, deleted by name if the association ends
first. Untaken files are empty placeholders: `stop` deletes them, and a node starting up
drops those of its dead predecessors (`Spool.prepare`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any

import pynetdicom.dimse_messages

log = logging.getLogger(__name__)

DEPTH = 8  # files kept ready per process: a burst of associations each takes one at a time
RETRY_S = 1.0  # after a failed create (disk full of inodes, folder gone), try again later
_PYNETDICOM_CALL = {"delete": False, "mode": "wb", "suffix": ".dcm"}
_FILES = "_scpnode_ready_files"  # attribute on a DUL thread object: its ReadyFiles
_installed = False
_install_lock = threading.Lock()


class ReadyFile:
    """What pynetdicom uses of a `NamedTemporaryFile`: `name`, `write`, `file`, `close`."""

    def __init__(self, name: str, file: IO[bytes]) -> None:
        self.name = name
        self.file = file

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()


class ReadyFiles:
    """A filler thread keeping `depth` files created and open in `folder`."""

    def __init__(self, folder: Path, depth: int = DEPTH) -> None:
        self.folder = folder
        self.depth = depth
        self._ready: deque[ReadyFile] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._fill, name="scpnode-ready-files", daemon=True)
        self._thread.start()

    def take(self) -> ReadyFile | None:
        """A created, open, empty file, or None at once when none is ready.

        A file whose name was deleted meanwhile (someone cleaned the folder) is dropped:
        written to, it could never be renamed into the spool.
        """
        while True:
            with self._changed:
                if not self._ready:
                    return None
                ready = self._ready.popleft()
                self._changed.notify_all()
            if os.fstat(ready.file.fileno()).st_nlink:
                return ready
            ready.close()

    def wait_full(self, timeout_s: float) -> bool:
        """True once `depth` files are ready (start-up, tests)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._ready) >= self.depth, timeout_s)

    def stop(self) -> None:
        """Stop filling and delete the files nobody took."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(10.0)
        with self._changed:
            left, self._ready = list(self._ready), deque()
        for ready in left:
            with contextlib.suppress(OSError):
                ready.close()
            with contextlib.suppress(OSError):
                Path(ready.name).unlink()

    def _fill(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stopping or len(self._ready) < self.depth)
                if self._stopping:
                    return
            try:
                ready = self._create()
            except OSError as exc:
                log.warning(
                    "could not create a file ahead for incoming data sets",
                    extra={"folder": str(self.folder), "reason": exc.strerror or str(exc)},
                )
                with self._changed:
                    self._changed.wait_for(lambda: self._stopping, RETRY_S)
                continue
            with self._changed:
                if self._stopping:  # stop() may already have emptied the pool
                    ready.close()
                    Path(ready.name).unlink()
                    return
                self._ready.append(ready)
                self._changed.notify_all()

    def _create(self) -> ReadyFile:
        path = self.folder / f"{os.urandom(8).hex()}.part"  # never a spool-like `*/*/*.dcm`
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        return ReadyFile(str(path), os.fdopen(os.open(path, flags, 0o600), "wb"))


def provide(assoc: Any, files: ReadyFiles | None) -> None:
    """Let `assoc`'s DUL thread take its data set files from `files`."""
    dul = getattr(assoc, "dul", None)
    if files is None or dul is None:
        return
    install()
    setattr(dul, _FILES, files)


def install() -> None:
    """Give pynetdicom's DIMSE module a `NamedTemporaryFile` that takes ready files.

    Process-wide and idempotent; threads without `provide` get the real one.
    """
    global _installed
    with _install_lock:
        if not _installed:
            pynetdicom.dimse_messages.NamedTemporaryFile = _named_temporary_file  # type: ignore[assignment]
            _installed = True


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    files: ReadyFiles | None = getattr(threading.current_thread(), _FILES, None)
    if files is not None and not args and kwargs == _PYNETDICOM_CALL:
        ready = files.take()
        if ready is not None:
            return ready
    return tempfile.NamedTemporaryFile(*args, **kwargs)
