"""Event-driven waits and big socket reads for pynetdicom's acceptor threads.

pynetdicom runs each association as two polling loops: the association thread sleeps 1 ms
between looks at its DIMSE queue, and the DUL thread sleeps 1 ms whenever it found nothing
to read or send. A C-STORE crosses both loops twice (request in, response out), so each
instance waited for up to four sleeps on top of the work; and the DUL read every PDU in
4 KiB `recv` calls, each copied into a growing `bytearray`. Profiling the receive path
(bench/ingest.py, docs/performance.md) put these waits and copies at a large share of the
gap to dcmtk's `storescp`.

Without forking pynetdicom, this module (installed for the SCP's own acceptors only, from
`on_conn_open`, before their threads start) makes the same loops wake when there is work:

- the association thread's poll sleep waits on its DIMSE queue's condition instead, so a
  decoded request is served at once (it still wakes after the same 1 ms otherwise, so the
  release and abort checks keep their pace);
- the DUL thread's idle sleep becomes a `select` on the peer's socket and on a wake-up pipe
  that its outgoing queue writes to, so an arriving PDU and an outgoing response are both
  handled at once, and an idle association costs no more wake-ups than before;
- PDU bodies are read with `recv_into` straight into one buffer of the announced length.

Only sleeps of at most `POLL_S` on threads that carry a hook are changed: every other
thread in the process (our SCU, the scheduler) sleeps exactly as it asked, and pynetdicom's
deliberate longer pauses are untouched.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import Any

import pynetdicom.association
import pynetdicom.dul

POLL_S = 0.001  # pynetdicom's reactor and DUL poll interval; longer sleeps are deliberate
_HOOK = "_scpnode_wait"  # attribute on a reactor thread object: its event-driven wait
_installed = False
_install_lock = threading.Lock()


def _sleep(seconds: float) -> None:
    """`time.sleep` as pynetdicom's reactor modules see it once installed."""
    if seconds <= POLL_S:
        wait: Callable[[float], None] | None = getattr(threading.current_thread(), _HOOK, None)
        if wait is not None:
            wait(seconds)
            return
    time.sleep(seconds)


def install() -> None:
    """Give pynetdicom's association and DUL modules a `time` whose poll sleeps can wake.

    Process-wide and idempotent; threads without a hook see the real `time.sleep`.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        for module in (pynetdicom.association, pynetdicom.dul):
            clock = types.ModuleType("time", "time, with event-driven poll sleeps (scpnode)")
            clock.__dict__.update({k: v for k, v in vars(time).items() if not k.startswith("__")})
            clock.sleep = _sleep  # type: ignore[attr-defined]
            module.time = clock  # type: ignore[attr-defined]
        _installed = True


class _WakingQueue(queue.Queue[Any]):
    """The DUL's outgoing queue: every put also wakes the DUL's `select`."""

    def __init__(self, wake_fd: int) -> None:
        super().__init__()
        self._wake_fd = wake_fd

    def _put(self, item: Any) -> None:
        super()._put(item)
        with contextlib.suppress(OSError):  # full pipe: a wake-up is already pending
            os.write(self._wake_fd, b"\0")


def accelerate(assoc: Any, sock: Any) -> Callable[[], None] | None:
    """Hook one accepted association before its threads start; returns its release.

    Returns None (and changes nothing) when the association is not in the expected shape,
    e.g. a pynetdicom whose internals moved: the node then runs at pynetdicom's own pace.
    The wake-up pipe is closed by `release` (call it once the DUL thread has ended) or,
    failing that, when the DUL object is collected: never while the thread may select on it.
    """
    dul = getattr(assoc, "dul", None)
    dimse = getattr(assoc, "dimse", None)
    transport = getattr(dul, "socket", None)
    if sock is None or dul is None or dimse is None or transport is None:
        return None
    if not isinstance(getattr(dimse, "msg_queue", None), queue.Queue):
        return None
    outgoing = getattr(dul, "to_provider_queue", None)
    if not isinstance(outgoing, queue.Queue) or not outgoing.empty():
        return None
    install()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    dul.to_provider_queue = _WakingQueue(wake_w)
    setattr(assoc, _HOOK, _queue_wait(dimse.msg_queue))
    setattr(dul, _HOOK, _io_wait(sock, wake_r, dul.to_provider_queue))
    transport.recv = _recv_exact(sock)
    return weakref.finalize(dul, _close_fds, wake_r, wake_w)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _queue_wait(pending: queue.Queue[Any]) -> Callable[[float], None]:
    def wait(seconds: float) -> None:
        with pending.not_empty:
            if not pending._qsize():  # under the Condition that guards this count
                pending.not_empty.wait(seconds)

    return wait


def _io_wait(sock: Any, wake_fd: int, outgoing: queue.Queue[Any]) -> Callable[[float], None]:
    def wait(seconds: float) -> None:
        if not outgoing.empty() or getattr(sock, "pending", lambda: 0)():
            return  # work is already there (TLS may hold decrypted bytes select cannot see)
        try:
            ready, _, _ = select.select([sock, wake_fd], [], [], seconds)
        except (OSError, ValueError):  # socket closed under us: pynetdicom notices next loop
            return
        if wake_fd in ready:
            with contextlib.suppress(OSError):
                os.read(wake_fd, 4096)

    return wait


PREALLOCATE_MAX = 4 << 20  # a PDU length is the peer's claim: larger ones grow as they arrive


def _recv_exact(sock: Any) -> Callable[[int], bytearray]:
    """`AssociationSocket.recv` with its contract (all `nr_bytes`, or what came before the
    peer closed) but filled by `recv_into` in one buffer instead of 4 KiB appends.

    The length comes from the PDU header, unchecked by pynetdicom: a hostile 4 GiB claim
    must not allocate 4 GiB up front, so only lengths up to `PREALLOCATE_MAX` are.
    """

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes > PREALLOCATE_MAX:
            return _recv_growing(sock, nr_bytes)
        buffer = bytearray(nr_bytes)
        with memoryview(buffer) as view:
            got = 0
            while got < nr_bytes:
                n = sock.recv_into(view[got:], nr_bytes - got)
                if not n:
                    break
                got += n
        if got < nr_bytes:
            del buffer[got:]
        return buffer

    return recv


def _recv_growing(sock: Any, nr_bytes: int) -> bytearray:
    buffer = bytearray()
    while len(buffer) < nr_bytes:
        chunk = sock.recv(min(nr_bytes - len(buffer), 1 << 20))
        if not chunk:
            break
        buffer += chunk
    return buffer
