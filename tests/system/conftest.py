from pathlib import Path

import pytest

from tests.system.peers import stop_started_serves


@pytest.fixture(autouse=True, scope="module")
def _no_serve_left_running():  # type: ignore[no-untyped-def]
    """A failing test must not leave `scpnode serve` (and its children) behind. Per module,
    not per test: module fixtures share one `serve` among their tests."""
    yield
    stop_started_serves()


@pytest.fixture(scope="session")
def demo_weights() -> Path:
    """The reproducible synthetic weights, trained once per machine (cached outside git)."""
    from scpnode.demo_weights import ensure_demo_weights

    return ensure_demo_weights()
