"""How an association's transport ends: bounded reads, and no partial file left behind.

Both close gaps in pynetdicom's ending paths that tests/hostile found; the handlers call them.
"""

from __future__ import annotations

import contextlib
import queue
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def discard_partial_datasets(assoc: Any, unserved: Iterable[Path] = ()) -> None:
    """Delete the temp files of data sets an ended association never handed to `on_store`.

    In chunked mode pynetdicom writes each incoming data set to a temp file (in `.incoming`),
    kept by the DIMSE message being reassembled and by decoded requests not yet served; only
    the served ones are unlinked by pynetdicom. `unserved`: complete ones it dropped. Call
    only once the association's thread has ended (its DUL thread is then stopped, so nothing
    writes to these files any more).
    """
    dimse = getattr(assoc, "dimse", None)
    files = [getattr(getattr(dimse, "message", None), "_data_set_file", None)]
    pending = getattr(dimse, "msg_queue", None)
    while pending is not None:
        try:
            _, primitive = pending.get_nowait()
        except (queue.Empty, TypeError, ValueError):
            break
        files.append(getattr(primitive, "_dataset_file", None))
    paths = set(unserved)
    for partial in files:
        if partial is None:
            continue
        with contextlib.suppress(OSError):
            partial.close()
        with contextlib.suppress(TypeError):
            paths.add(Path(partial.name))
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def bound_reads(sock: socket.socket | None, timeout_s: float | None) -> None:
    """Give an accepted socket a read timeout; pynetdicom leaves it blocking.

    pynetdicom reads a PDU with blocking `recv` calls until the length in its header has
    arrived, and checks its ARTIM and network timers only between PDUs. A peer that sends a
    PDU header claiming more bytes than follow (a truncated A-ASSOCIATE-RQ, a P-DATA-TF whose
    length lies, random bytes) so held the connection, two threads and an association slot
    for as long as it kept TCP open, past `node.network_timeout_s` (found by
    tests/hostile). With a timeout the read fails after that much silence and pynetdicom
    closes the connection (Evt17). Legitimate transfers are unaffected: the timeout bounds
    each read, not the whole PDU.
    """
    if sock is not None and timeout_s:
        with contextlib.suppress(OSError):  # already closed
            sock.settimeout(timeout_s)
