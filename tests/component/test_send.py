"""Our C-STORE SCU against a real peer on loopback (the PACS stand-in)."""

from __future__ import annotations

import time
from pathlib import Path

from pynetdicom.dimse_primitives import C_ECHO

from scpnode.pacs_standin import PacsStandIn
from scpnode.send import Peer, association, store_datasets
from scpnode.synth import iter_study_datasets, make_study_spec

VERIFICATION = "1.2.840.10008.1.1"


def test_a_peer_that_stops_answering_leaves_the_rest_unsent_not_an_exception(
    tmp_path: Path,
) -> None:
    """A scanner simulator (and the demo) must report what happened, not crash: the store
    that got no response within the timeout is None, and so is every one after it."""
    pacs = PacsStandIn(tmp_path / "pacs", "PACS")
    pacs.delay_s = 3.0  # stores, then answers too late
    port = pacs.start()
    try:
        datasets = list(iter_study_datasets(make_study_spec(7, n_slices=3)))
        statuses = store_datasets(datasets, Peer("PACS", "127.0.0.1", port), "CT01",
                                  timeout_s=0.5)  # fmt: skip
        assert statuses == [None, None, None]
        pacs.delay_s = 0.0
        assert store_datasets(datasets[:1], Peer("PACS", "127.0.0.1", port), "CT01") == [0]
    finally:
        pacs.stop()


def test_a_response_the_requestor_reactor_takes_still_reaches_the_waiting_store(
    tmp_path: Path,
) -> None:
    """pynetdicom's send_* can go ahead while its reactor is still running one more turn; the
    reactor then takes the peer's response off the queue and drops it, and the store waits
    out its DIMSE timeout. Here a C-ECHO goes out without pausing the reactor at all, so the
    reactor takes the response every time: it must still reach the caller's `get_msg`."""
    pacs = PacsStandIn(tmp_path / "pacs", "PACS")
    port = pacs.start()
    try:
        with association(Peer("PACS", "127.0.0.1", port), "CT01", [VERIFICATION],
                         timeout_s=2.0) as assoc:  # fmt: skip
            request = C_ECHO()
            request.MessageID = 7
            request.AffectedSOPClassUID = VERIFICATION
            context = assoc._get_valid_context(VERIFICATION, "", "scu")
            assoc.dimse.send_msg(request, context.context_id)
            time.sleep(0.3)  # the running reactor has long taken the response
            assoc._reactor_checkpoint.clear()  # now pause it, as send_* believes it did
            _, response = assoc.dimse.get_msg(block=True)
            assoc._reactor_checkpoint.set()
        assert response is not None, "the reactor dropped the response"
        assert (response.MessageIDBeingRespondedTo, response.Status) == (7, 0x0000)
    finally:
        pacs.stop()
