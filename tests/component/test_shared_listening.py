"""Several receiving processes on one listening socket (`node.receive_processes` > 1).

`serve` hands its listening socket to its `scpnode receive` children; each takes a waiting
connection at once only while it serves no association, so a new scanner goes to an idle
process. Two servers in this process stand in for two processes: each counts only its own
AE's associations, which is all the choice looks at. The peers are pynetdicom SCUs holding
real associations open on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from scpnode.config import NodeSettings
from scpnode.receive import server as server_module
from scpnode.receive.server import ReceiveServer
from scpnode.spool import Spool


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ReceiveServer, ReceiveServer, int]]:
    """serve's server (binds the port) and a second one accepting on its socket."""
    node = NodeSettings(host="127.0.0.1", receive_processes=2)
    first = ReceiveServer(node, Spool(tmp_path / "spool"), lambda _record: None)
    port = first.start(port=0)
    second = ReceiveServer(node, Spool(tmp_path / "spool"), lambda _record: None)
    assert second.start(listen_fd=first.listening_fd) == port
    try:
        yield first, second, port
    finally:
        second.stop(5)
        first.stop(5)


def associate(port: int) -> Association:
    scu = AE(ae_title="CT01")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title="SCPNODE")
    assert assoc.is_established
    return assoc


def test_a_new_association_goes_to_the_idle_process(
    pair: tuple[ReceiveServer, ReceiveServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five rounds of two scanners: each time the second lands on the other process. Left to
    chance (both wait on the one socket) all five would come out so 1 time in 32."""
    first, second, port = pair
    # a busy process leaves the connection to the idle one for a whole second: room enough
    # for the idle one's accept loop even on a loaded machine
    monkeypatch.setattr(server_module, "DEFER_PER_ASSOCIATION_S", 1.0)

    def served() -> tuple[int, int]:
        return first.active_associations, second.active_associations

    for _ in range(5):
        one = associate(port)
        wait_for(lambda: sum(served()) == 1, 5, "the first association to be served")
        two = associate(port)
        wait_for(lambda: sum(served()) == 2, 5, "the second association to be served")
        assert served() == (1, 1)
        echo = two.send_c_echo()
        assert echo.Status == 0x0000
        one.release()
        two.release()
        wait_for(lambda: sum(served()) == 0, 5, "both associations to end")


def test_with_every_process_busy_a_new_association_is_still_accepted(
    pair: tuple[ReceiveServer, ReceiveServer, int],
) -> None:
    first, second, port = pair
    held = [associate(port), associate(port)]
    try:
        wait_for(lambda: first.active_associations + second.active_associations == 2, 5,
                 "two associations")  # fmt: skip
        third = associate(port)  # both busy: the less busy one takes it after its deferral
        assert third.send_c_echo().Status == 0x0000
        third.release()
    finally:
        for assoc in held:
            assoc.release()


def test_a_receiving_process_stopping_leaves_the_socket_listening(
    pair: tuple[ReceiveServer, ReceiveServer, int],
) -> None:
    """A child that stops (or dies and is restarted) closes its descriptor only: shutting the
    shared socket down would have stopped serve's own listening with it."""
    first, second, port = pair
    second.stop(5)
    for _ in range(3):
        assoc = associate(port)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    assert first.listening_fd >= 0


def test_a_shared_socket_needs_the_shared_port_setting(tmp_path: Path) -> None:
    single = ReceiveServer(NodeSettings(host="127.0.0.1"), Spool(tmp_path / "s"), lambda _r: None)
    with pytest.raises(ValueError, match="receive_processes"):
        single.start(listen_fd=0)
