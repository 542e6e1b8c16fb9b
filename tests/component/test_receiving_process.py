"""`scpnode receive` (a second receiving process): a series it fills is queued at once.

Here no `serve` timer runs at all, so a study can only be queued by the child's own
on-demand sweep, which its recorder asks for when a batch fills a series.
"""

from __future__ import annotations

import time
from typing import Any

from scpnode.node import ReceivingProcess
from scpnode.send import Peer, store_datasets
from scpnode.synth import iter_study_datasets, make_study_spec

N = 12


def wait_for_status(rig: Any, uid: str, status: str, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = rig.studies().get(uid, {}).get("status")
        if seen == status:
            return seen
        time.sleep(0.05)
    return seen


def test_a_filled_series_is_queued_by_the_receiving_process_itself(make_rig: Any) -> None:
    rig = make_rig(start_pacs=False)
    receiving = ReceivingProcess(rig.settings)
    port = receiving.start(0)
    try:
        peer = Peer("SCPNODE", "127.0.0.1", port)
        whole = make_study_spec(41, n_slices=N)  # every header says ImagesInAcquisition = N
        short = make_study_spec(42, n_slices=N)
        assert store_datasets(list(iter_study_datasets(whole)), peer, "CT01") == [0] * N
        assert store_datasets(list(iter_study_datasets(short))[:-1], peer, "CT02") == [0] * (N - 1)
        # seconds before serve's grace timer could have queued it, and no timer runs here
        assert wait_for_status(rig, whole.study_instance_uid, "queued", 5.0) == "queued"
        complete = rig.show(whole.study_instance_uid)
        reasons = [e["detail"].get("reason") for e in complete["events"]
                   if e["kind"] == "study_complete"]  # fmt: skip
        assert reasons and "expected" in reasons[0], complete["events"]
        assert rig.studies()[short.study_instance_uid]["status"] == "receiving"  # one missing
    finally:
        receiving.stop()
