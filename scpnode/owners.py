"""Who holds a job lease or a delivery claim: "host:pid", so a restarted node can tell which
of its own holders died (and release their work at once instead of waiting for the lease)."""

from __future__ import annotations

import os
import socket


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead_local_owner(owner: str | None) -> bool:
    """True only when the owner ran on this host and its process no longer exists.

    A live PID may belong to another process by now; then we wait for the lease, which is
    always safe. Owners on other hosts are never judged here.
    """
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False
