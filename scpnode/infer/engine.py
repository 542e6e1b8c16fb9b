"""Model loading and slice scoring: the node's only door to torch.

The engine is built once by the composition root (``load_model``) and passed to the pipeline.
It trusts nothing but the model card: the weights must hash to the card's SHA-256, are loaded
with ``torch.load(weights_only=True)`` (no pickled code), and are fed exactly the preprocessing
the card records, through the same function training used.

Precision (``[model] precision``): on CUDA the forward runs under bf16 autocast (fp16 on cards
without bf16) in channels_last, the tensor cores' format; on a CPU it stays fp32 unless bf16
is asked for explicitly. Preprocessing is always fp32 on the CPU (the bits training saw);
probabilities are always float64.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType

import numpy as np
import torch
from torch import nn

from model_zoo.card import ModelCard, ModelCardError, WeightsMismatch, check_sha256, load_card
from model_zoo.preprocess import UNKNOWN, Box, hu_batch_to_input, hu_to_input_into
from model_zoo.registry import ModelSpec, get_spec
from scpnode.domain import ModelIdentity


class DeviceError(ValueError):
    """The configured ``[model] device`` cannot be used here."""


class ModelLoadError(ValueError):
    """Weights that cannot be served (wrong architecture, unreadable, mismatching card)."""


#: values of ``[model] precision``
PRECISIONS = ("auto", "fp32", "bf16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _cuda_bf16(device: torch.device) -> bool:
    """Whether the card computes in bf16 natively (Ampere and later), not by emulation."""
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation to exclude
            return torch.cuda.is_bf16_supported()


def resolve_precision(spec: str, device: torch.device | str) -> str:
    """``auto`` | ``fp32`` | ``bf16`` on ``device`` → what the forward runs in: ``fp32``,
    ``bf16`` or ``fp16`` (autocast).

    ``auto`` is bf16 on a CUDA device, fp32 on a CPU (bf16 there is slower on most CPUs and
    is used only when set explicitly). bf16 on a CUDA card without it becomes fp16.
    """
    text = spec.strip().lower()
    if text not in PRECISIONS:
        raise ValueError(f"model.precision must be one of {', '.join(PRECISIONS)}, got {spec!r}")
    device = torch.device(device)
    if text == "fp32" or (text == "auto" and device.type != "cuda"):
        return "fp32"
    if device.type == "cuda" and not _cuda_bf16(device):
        return "fp16"
    return "bf16"


#: slices per forward for ``model.batch_size = "auto"``. On a CPU, the largest batch whose
#: activations stay in cache: CTnet-10's bare forward on the 2-core development VM ran
#: 350 / 359 / 265 / 263 / 252 slices/s at batch 8 / 16 / 24 / 32 / 64. On CUDA, the batch
#: the H200 figures were measured at (docs/performance.md).
AUTO_BATCH_SIZE = {"cpu": 16, "cuda": 64}


def resolve_batch_size(setting: int | str, device: torch.device | str) -> int:
    """``model.batch_size`` (a number, or ``auto``) → slices per forward on ``device``."""
    if setting == "auto":
        return AUTO_BATCH_SIZE.get(torch.device(device).type, AUTO_BATCH_SIZE["cpu"])
    if isinstance(setting, str) or setting < 1:
        raise ValueError(f"model.batch_size must be a positive number or auto, got {setting!r}")
    return setting


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
    """A verified model on its device, with the card it is served under.

    ``precision`` is what :func:`predict` runs the forward in (``fp32``, ``bf16`` or
    ``fp16`` autocast; see :func:`resolve_precision`); ``load_model`` resolves it.
    """

    module: nn.Module
    spec: ModelSpec
    card: ModelCard
    device: torch.device
    identity: ModelIdentity
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision != "fp32" and self.precision not in _AUTOCAST:
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")


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


def load_model(
    name: str, weights_path: Path | str, device: torch.device | str, precision: str = "auto"
) -> LoadedModel:
    """Build ``name`` from the registry and load verified weights onto ``device``.

    ``precision`` is ``[model] precision`` (``auto`` | ``fp32`` | ``bf16``), resolved here for
    the device (:func:`resolve_precision`); a bad value is a ValueError before any file is read.

    Raises ModelCardError (missing/malformed card), WeightsMismatch (hash differs),
    ModelLoadError (anything else that makes the weights unservable), UnknownModelError.
    """
    weights_path = Path(weights_path)
    device = resolve_device(device) if isinstance(device, str) else device
    resolved = resolve_precision(precision, device)
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
    return LoadedModel(
        module=module, spec=spec, card=card, device=device, identity=identity, precision=resolved
    )


def prepare(model: LoadedModel, hu_slices: Sequence[np.ndarray]) -> np.ndarray:
    """The card's preprocessing of HU slices: ``float32 [N, 3, h, w]`` on the CPU.

    Pure numpy/torch-CPU work that releases the GIL for most of its time, so it may run in a
    thread beside the one running :func:`score` (decode and resize overlap the forward).
    """
    return prepare_for_card(model.card, hu_slices)


def prepare_for_card(
    card: ModelCard, hu_slices: Sequence[np.ndarray], boxes: Sequence[Box | None] | None = None
) -> np.ndarray:
    """`prepare` from the card alone: what a decoder process, which holds no model, runs.
    ``boxes``: each slice's ``body_box``, when the caller computed them for a measure too."""
    pre = card.preprocessing
    return hu_batch_to_input(
        hu_slices,
        card.input_size,
        window_center=pre.window_center,
        window_width=pre.window_width,
        mean=pre.mean,
        std=pre.std,
        body_crop=pre.body_crop,
        boxes=boxes,
    )


def prepare_one_for_card(
    card: ModelCard,
    hu: np.ndarray,
    out: np.ndarray,
    box: Box | EllipsisType | None = UNKNOWN,
    offset: float = 0.0,
) -> None:
    """One slice of `prepare_for_card`, written into ``out`` (its row of the batch); the HU
    are ``hu + offset`` (stored integers and their intercept: `dicom_slices.HUPixels`)."""
    pre = card.preprocessing
    hu_to_input_into(
        hu, out, window_center=pre.window_center, window_width=pre.window_width,
        mean=pre.mean, std=pre.std, body_crop=pre.body_crop, box=box, offset=offset,
    )  # fmt: skip


def _autocast(model: LoadedModel) -> contextlib.AbstractContextManager[object]:
    if model.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(model.device.type, dtype=_AUTOCAST[model.precision])


def _logits(model: LoadedModel, batch: np.ndarray) -> torch.Tensor:
    """Launch the forward of one prepared batch; the logits stay on the device (no sync)."""
    x = torch.from_numpy(batch).to(model.device, non_blocking=True)
    with _autocast(model):
        logits = model.module(x.contiguous(memory_format=torch.channels_last))
    return logits.reshape(-1)


def score(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """Probabilities (float64) of one batch made by :func:`prepare`, in the model's precision."""
    model.module.eval()
    with torch.inference_mode():
        return torch.sigmoid(_logits(model, batch).double()).cpu().numpy()


def predict(
    model: LoadedModel, hu_slices: Sequence[np.ndarray], batch_size: int = 32
) -> np.ndarray:
    """Slice probabilities (float64, one per slice, input order), preprocessed per the card.

    Slices are preprocessed one batch at a time, so memory stays bounded by the batch size;
    with more than one batch, the next one is prepared in a helper thread while the model
    scores the current one, and on CUDA nothing waits for the device until the last batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [hu_slices[i : i + batch_size] for i in range(0, len(hu_slices), batch_size)]
    if not chunks:
        return np.empty(0, dtype=np.float64)
    model.module.eval()
    logits: list[torch.Tensor] = []
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        ahead = None
        if len(chunks) > 1:
            ahead = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="prepare"))
        pending: Future[np.ndarray] | None = None
        for i, chunk in enumerate(chunks):
            batch = prepare(model, chunk) if pending is None else pending.result()
            if ahead is not None and i + 1 < len(chunks):
                pending = ahead.submit(prepare, model, chunks[i + 1])
            logits.append(_logits(model, batch).float())
        probs = torch.sigmoid(torch.cat(logits).double())
    return probs.cpu().numpy()


__all__ = [
    "PRECISIONS",
    "DeviceError",
    "LoadedModel",
    "ModelCardError",
    "ModelLoadError",
    "WeightsMismatch",
    "load_model",
    "predict",
    "prepare",
    "prepare_for_card",
    "resolve_device",
    "resolve_precision",
    "score",
]
