"""The SCP's event-driven waits (scpnode/receive/fastpath.py), on real sockets and threads.

No timing benchmark here: each test gives a wait far longer than the event it expects and
proves the wait ended because of the event (bounded by a generous join)."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time

import pynetdicom.association
import pynetdicom.dul

from scpnode.receive import fastpath


def finishes_early(wait, trigger, long_s: float = 20.0) -> float:
    """Run `wait(long_s)` in a thread, fire `trigger`, return how long the wait lasted."""
    lasted: list[float] = []

    def run() -> None:
        started = time.monotonic()
        wait(long_s)
        lasted.append(time.monotonic() - started)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.05)
    trigger()
    thread.join(long_s + 5)
    assert lasted, "the wait never ended"
    return lasted[0]


def test_association_wait_ends_when_a_request_is_queued() -> None:
    pending: queue.Queue[object] = queue.Queue()
    lasted = finishes_early(fastpath._queue_wait(pending), lambda: pending.put((1, "C-STORE")))
    assert lasted < 10, "the reactor slept its full interval with a request waiting"


def test_dul_wait_ends_on_incoming_bytes_and_on_outgoing_primitives() -> None:
    ours, peer = socket.socketpair()
    wake_r, wake_w = os.pipe()
    outgoing = fastpath._WakingQueue(wake_w)
    wait = fastpath._io_wait(ours, wake_r, outgoing)
    try:
        assert finishes_early(wait, lambda: peer.sendall(b"\x04")) < 10
        ours.recv(1)
        assert finishes_early(wait, lambda: outgoing.put("P-DATA")) < 10
        outgoing.get_nowait()
        started = time.monotonic()
        wait(0.05)  # nothing to do: it waits (at most) what it was asked
        assert time.monotonic() - started >= 0.04
    finally:
        fastpath._close_fds(wake_r, wake_w)
        ours.close()
        peer.close()


def test_recv_reads_exactly_the_pdu_and_stops_at_close() -> None:
    ours, peer = socket.socketpair()
    recv = fastpath._recv_exact(ours)
    body = bytes(range(256)) * 4000  # ~1 MB, arriving in many segments
    sender = threading.Thread(target=peer.sendall, args=(body + b"next",))
    sender.start()
    assert recv(len(body)) == bytearray(body)
    sender.join(10)
    assert recv(4) == bytearray(b"next")
    peer.sendall(b"abc")
    peer.close()
    assert recv(10) == bytearray(b"abc")  # the peer closed: what came, as pynetdicom's recv
    ours.close()


def test_a_huge_claimed_length_is_not_allocated_up_front() -> None:
    ours, peer = socket.socketpair()
    peer.sendall(b"tiny")
    peer.close()
    claimed = 0xFFFFFFF0  # a hostile PDU header: 4 GiB
    assert fastpath._recv_exact(ours)(claimed) == bytearray(b"tiny")
    ours.close()


def test_only_hooked_threads_and_poll_sleeps_change() -> None:
    fastpath.install()
    clock = pynetdicom.association.time
    assert clock.sleep is fastpath._sleep and pynetdicom.dul.time.sleep is fastpath._sleep
    assert clock.monotonic is time.monotonic  # everything else is the real module
    started = time.monotonic()
    clock.sleep(0.02)  # this thread has no hook: a real sleep, even one that looks like a poll
    assert time.monotonic() - started >= 0.015

    calls: list[float] = []
    thread = threading.current_thread()
    setattr(thread, fastpath._HOOK, calls.append)
    try:
        clock.sleep(0.001)  # a poll on a hooked thread goes to its hook
        started = time.monotonic()
        clock.sleep(0.05)  # a deliberate pause is never shortened
        assert time.monotonic() - started >= 0.04
    finally:
        delattr(thread, fastpath._HOOK)
    assert calls == [0.001]
