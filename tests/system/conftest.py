from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_weights() -> Path:
    """The reproducible synthetic weights, trained once per machine (cached outside git)."""
    from scpnode.demo_weights import ensure_demo_weights

    return ensure_demo_weights()
