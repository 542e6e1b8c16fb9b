"""docs/config-reference.md is generated from the settings model and must match it."""

from __future__ import annotations

from pathlib import Path

from scpnode.config import Settings
from scpnode.config_doc import render

DOC = Path(__file__).parents[2] / "docs" / "config-reference.md"


def test_committed_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(), (
        "docs/config-reference.md is stale: python -m scpnode.config_doc > docs/config-reference.md"
    )


def test_reference_lists_every_key_with_its_environment_variable() -> None:
    text = render()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if section in ("source", "destinations") or not hasattr(model, "model_fields"):
            continue
        for key, sub in model.model_fields.items():
            if hasattr(sub.annotation, "model_fields"):  # a nested table: [node.tls]
                assert f"## [{section}.{key}]" in text
                continue
            assert f"`SCPNODE_{section.upper()}__{key.upper()}`" in text, f"{section}.{key}"
