"""Model loading and slice scoring: the node's only door to torch.

The engine is built once by the composition root (``load_model``) and passed to the pipeline.
It trusts nothing but the model card: the weights must hash to the card's SHA-256, are loaded
with ``torch.load(weights_only=True)`` (no pickled code), and are fed exactly the preprocessing
the card records, through the same function training used.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_zoo.card import ModelCard, ModelCardError, WeightsMismatch, check_sha256, load_card
from model_zoo.preprocess import hu_batch_to_input
from model_zoo.registry import ModelSpec, get_spec
from scpnode.domain import ModelIdentity


class DeviceError(ValueError):
    """The configured ``[model] device`` cannot be used here."""


class ModelLoadError(ValueError):
    """Weights that cannot be served (wrong architecture, unreadable, mismatching card)."""


def resolve_device(spec: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` → a usable device, or a DeviceError saying why.

    ``auto`` falls back to the CPU; an explicit ``cuda`` never does, so a misconfigured GPU
    node fails at start-up instead of silently running 50x slower.
    """
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise DeviceError(f"model.device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"model.device is {spec!r} but no CUDA device is available "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "use 'auto' or 'cpu'"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"model.device is {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device("cuda", index)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A verified model on its device, with the card it is served under."""

    module: nn.Module
    spec: ModelSpec
    card: ModelCard
    device: torch.device
    identity: ModelIdentity


def _check_card(name: str, spec: ModelSpec, card: ModelCard, weights_path: Path) -> None:
    if card.architecture != name:
        raise ModelLoadError(
            f"model card of {weights_path} describes architecture {card.architecture!r}, "
            f"but model.name is {name!r}"
        )
    if tuple(card.input_size) != tuple(spec.input_size):
        raise ModelLoadError(
            f"model card of {weights_path} says input_size {list(card.input_size)}, "
            f"but {name} takes {list(spec.input_size)}"
        )


def _read_state(weights_path: Path, card: ModelCard) -> tuple[dict, str]:
    """Read the file once, hash those bytes and unpickle them (no window for a swap)."""
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read weights {weights_path}: {exc}") from exc
    sha = hashlib.sha256(data).hexdigest()
    check_sha256(sha, card, weights_path)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ModelLoadError(f"cannot load weights {weights_path}: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights {weights_path} are not a state dict")
    return state, sha


def load_model(name: str, weights_path: Path | str, device: torch.device | str) -> LoadedModel:
    """Build ``name`` from the registry and load verified weights onto ``device``.

    Raises ModelCardError (missing/malformed card), WeightsMismatch (hash differs),
    ModelLoadError (anything else that makes the weights unservable), UnknownModelError.
    """
    weights_path = Path(weights_path)
    device = resolve_device(device) if isinstance(device, str) else device
    spec = get_spec(name)
    card = load_card(weights_path)
    _check_card(name, spec, card, weights_path)
    state, sha = _read_state(weights_path, card)
    module = spec.build()
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights {weights_path} do not fit {name}: {exc}") from exc
    module = module.to(device).to(memory_format=torch.channels_last).eval()
    identity = ModelIdentity(
        name=card.name,
        version=card.version,
        weights_sha256=sha,
        synthetic=card.synthetic,
        intended_use=card.intended_use,
    )
    return LoadedModel(module=module, spec=spec, card=card, device=device, identity=identity)


def predict(
    model: LoadedModel, hu_slices: Sequence[np.ndarray], batch_size: int = 32
) -> np.ndarray:
    """Slice probabilities (float64, one per slice, input order), preprocessed per the card.

    Slices are preprocessed one batch at a time, so memory stays bounded by the batch size.
    """
    pre, size = model.card.preprocessing, model.card.input_size
    out = np.empty(len(hu_slices), dtype=np.float64)
    model.module.eval()
    with torch.inference_mode():
        for start in range(0, len(hu_slices), batch_size):
            batch = hu_batch_to_input(
                hu_slices[start : start + batch_size],
                size,
                window_center=pre.window_center,
                window_width=pre.window_width,
                mean=pre.mean,
                std=pre.std,
                body_crop=pre.body_crop,
            )
            x = torch.from_numpy(batch).to(model.device, non_blocking=True)
            logits = model.module(x.contiguous(memory_format=torch.channels_last))
            probs = torch.sigmoid(logits.reshape(-1).double())
            out[start : start + len(batch)] = probs.cpu().numpy()
    return out


__all__ = [
    "DeviceError",
    "LoadedModel",
    "ModelCardError",
    "ModelLoadError",
    "WeightsMismatch",
    "load_model",
    "predict",
    "resolve_device",
]
