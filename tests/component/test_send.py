"""Our C-STORE SCU against a real peer on loopback (the PACS stand-in)."""

from __future__ import annotations

from pathlib import Path

from scpnode.pacs_standin import PacsStandIn
from scpnode.send import Peer, store_datasets
from scpnode.synth import iter_study_datasets, make_study_spec


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
