"""The worker's warm-up (scpnode/warmup.py): one synthetic study through decode, scoring and
SR building, leaving nothing behind, and never stopping a worker from starting."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest

from scpnode.domain import NodeIdentity
from scpnode.infer.engine import load_model
from scpnode.uids import node_device_uid
from scpnode.warmup import warm_up
from tests.unit.test_engine import weights  # noqa: F401 - the fixture

NODE = NodeIdentity("SCPNODE", node_device_uid("SCPNODE"))


def leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("scpnode-warmup-*")}


def test_warm_up_runs_the_study_path_and_leaves_nothing(
    weights: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = load_model("ctnet10", weights, "cpu")
    before = leftovers()
    with caplog.at_level(logging.WARNING, logger="scpnode.warmup"):
        assert warm_up(model, NODE, batch_size=4) > 0
    assert not caplog.records, "the warm-up path failed on a real model"
    assert leftovers() == before


def test_a_failing_warm_up_only_logs(
    weights: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = load_model("ctnet10", weights, "cpu")
    broken = model.__class__(**{**model.__dict__, "module": None})  # forward cannot run
    with caplog.at_level(logging.WARNING, logger="scpnode.warmup"):
        warm_up(broken, NODE, batch_size=2)
    assert any("warm-up failed" in r.getMessage() for r in caplog.records)
