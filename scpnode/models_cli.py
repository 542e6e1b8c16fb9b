"""`scpnode models list|train`: what the zoo holds and the reproducible synthetic weights."""

from __future__ import annotations

from typing import Any

from model_zoo.card import ModelCardError, load_card, verify_weights
from model_zoo.registry import count_parameters, get_spec, names


def model_rows() -> list[dict[str, Any]]:
    from scpnode.demo_weights import ARCHITECTURE, default_cache_dir, demo_weights_path

    rows = []
    for name in names():
        spec = get_spec(name)
        weights = "none (train them: scpnode models train --synthetic)"
        if name == ARCHITECTURE:
            weights = _weights_status(demo_weights_path(default_cache_dir()))
        rows.append(
            {
                "name": name,
                "input_size": list(spec.input_size),
                "parameters": count_parameters(spec.build()),
                "weights": weights,
                "description": spec.description,
            }
        )
    return rows


def _weights_status(path: Any) -> str:
    if not path.exists():
        return "synthetic demo weights not built (scpnode models train --synthetic)"
    try:
        card = load_card(path)
        verify_weights(path, card)
    except ModelCardError as exc:
        return f"unusable: {exc}"
    kind = "synthetic demo" if card.synthetic else "trained"
    return f"{kind} {card.version} at {path}"


def train_synthetic(*, seed: int, force: bool) -> None:
    from scpnode.demo_weights import demo_weights_path, ensure_demo_weights

    path = demo_weights_path(None, seed)
    if force and path.exists():
        path.unlink()
    print(ensure_demo_weights(seed=seed))
