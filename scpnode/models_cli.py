"""`scpnode models list|train|evaluate`: what the zoo holds, training, evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model_zoo.card import ModelCardError, load_card, verify_weights
from model_zoo.registry import get_spec, names, parameter_count


def weights_dir() -> Path:
    """Where trained weights go by default: beside the demo weights, outside git."""
    from scpnode.demo_weights import default_cache_dir

    return default_cache_dir() / "weights"


def model_rows(folder: Path | None = None) -> list[dict[str, Any]]:
    """One row per registry model; weights: the files in ``folder`` whose card names it."""
    folder = weights_dir() if folder is None else folder
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        status = _weights_status(path)
        if status is not None:
            found.setdefault(status[0], []).append(status[1])
    rows = []
    for name in names():
        spec = get_spec(name)
        rows.append(
            {
                "name": name,
                "input_size": list(spec.input_size),
                "parameters": parameter_count(spec),
                "weights": "; ".join(found.get(name, []))
                or f"none (scpnode models train --model {name} --data DIR)",
                "gpu_recommended": spec.gpu_recommended,
                "optimizer": f"{spec.optimizer} {spec.lr:g}",
                "paper_accuracy": spec.paper_accuracy,
                "description": spec.description,
            }
        )
    return rows


def _weights_status(path: Path) -> tuple[str, str] | None:
    """(architecture, status) of a weights file; None when it has no card at all."""
    try:
        card = load_card(path)
    except ModelCardError as exc:
        return None if "not found" in str(exc) else (path.stem.split("-")[0], f"unusable: {exc}")
    try:
        verify_weights(path, card)
    except ModelCardError as exc:
        return card.architecture, f"unusable: {exc}"
    kind = "synthetic" if card.synthetic else "trained"
    return card.architecture, f"{kind} {card.version} ({card.training_domain}) at {path}"


def train_synthetic(*, seed: int, force: bool) -> None:
    from scpnode.demo_weights import demo_weights_path, ensure_demo_weights

    path = demo_weights_path(None, seed)
    if force and path.exists():
        path.unlink()
    print(ensure_demo_weights(seed=seed))


def train(args: argparse.Namespace) -> None:
    """`models train --model NAME --data DIR`."""
    from scpnode.infer.engine import resolve_device
    from scpnode.zoo_train import TrainRequest, train_model

    get_spec(args.model)  # an unknown name fails before any data is read
    out = args.out or weights_dir() / f"{args.model}-{args.version}.pt"
    request = TrainRequest(
        model=args.model, data=args.data, out=out, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        patience=args.patience, device=args.device, pretrained=args.pretrained,
        checkpoint=args.checkpoint or out.with_name(out.name + ".ckpt"), split=args.split,
        calibration=args.calibration, augment=not args.no_augment, version=args.version,
        positive=args.positive, progress=not args.no_progress,
    )  # fmt: skip
    train_model(request, device=resolve_device(args.device))


def evaluate(args: argparse.Namespace) -> list[str]:
    """`models evaluate`; returns the files written."""
    from scpnode.infer.engine import resolve_device
    from scpnode.zoo_eval import evaluate as run
    from scpnode.zoo_eval import usable_weights

    if args.all:
        weights = usable_weights(args.weights_dir or weights_dir(), args.data, args.split,
                                 args.allow_domain_shift)  # fmt: skip
    else:
        weights = list(args.weights)
    report = run(
        weights, args.data, args.out, subset=args.subset, split=args.split, seed=args.seed,
        device=resolve_device(args.device), allow_domain_shift=args.allow_domain_shift,
        positive=args.positive,
    )  # fmt: skip
    return [str(p) for p in report.files]
