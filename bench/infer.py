"""Inference benchmark: slices/s per zoo model, and what the node's path costs on top.

    .venv/bin/python bench/infer.py [--models ctnet10 vgg16 ...] [--device auto|cpu|cuda]
                                    [--batch 16] [--slices 32] [--seconds 2] [--json]

For each model at its own input size (untrained weights: throughput does not depend on them):

- **bare**: the forward pass alone on a ready ``[batch, 3, h, w]`` tensor (channels_last,
  inference mode), fp32; on CUDA also under bf16 (fp16 where bf16 is missing) autocast;
- **whole path**: what a worker does per series: DICOM decode to HU (``read_slices_hu``),
  preprocessing (``hu_batch_to_input``), batching, forward, sigmoid (``engine.predict``), on
  a synthetic series of ``--slices`` 512x512 slices written once;
- **ratio**: whole-path seconds per slice / bare fp32 seconds per slice (1.0: the model is
  all the cost; large: decode and preprocessing dominate).

Synthetic data only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_zoo.card import (
    Aggregation,
    Calibration,
    ModelCard,
    Preprocessing,
    TrainingData,
)
from model_zoo.registry import get_spec, names
from scpnode.domain import ModelIdentity
from scpnode.infer.dicom_slices import read_slices_hu
from scpnode.infer.engine import LoadedModel, predict, resolve_device
from scpnode.synth import make_study_spec, write_study


def rate(fn: Callable[[], object], items: int, seconds: float, sync: Callable[[], None]) -> float:
    """Items per second: one warm-up call, then repeat until ``seconds`` have passed."""
    fn()
    sync()
    runs, started = 0, time.perf_counter()
    while True:
        fn()
        sync()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return runs * items / elapsed


def _loaded(name: str, device: torch.device) -> LoadedModel:
    spec = get_spec(name)
    torch.manual_seed(0)
    module = spec.build().to(device).to(memory_format=torch.channels_last).eval()
    card = ModelCard(
        name=name, version="bench", architecture=name, input_size=spec.input_size,
        preprocessing=Preprocessing(), training_domain="dicom-hu", slice_thickness_mm=(0.5, 5),
        threshold=0.5, aggregation=Aggregation(), calibration=Calibration(),
        training_data=TrainingData("untrained (benchmark)"), weights_sha256="0" * 64,
        synthetic=True, created_by="bench/infer.py",
    )  # fmt: skip
    identity = ModelIdentity(name, "bench", "0" * 64, synthetic=True, intended_use="benchmark")
    return LoadedModel(module=module, spec=spec, card=card, device=device, identity=identity)


def bench_model(name: str, device: torch.device, paths: list[Path], args: argparse.Namespace
                ) -> dict[str, object]:  # fmt: skip
    model = _loaded(name, device)
    h, w = model.spec.input_size
    x = torch.rand(args.batch, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward() -> None:
        with torch.inference_mode():
            model.module(x)

    row: dict[str, object] = {"model": name, "input": f"{h}x{w}", "device": str(device),
                              "batch": args.batch}  # fmt: skip
    row["bare_fp32"] = rate(forward, args.batch, args.seconds, sync)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

        def forward_amp() -> None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                model.module(x)

        row[f"bare_{str(dtype).split('.')[-1]}"] = rate(forward_amp, args.batch, args.seconds, sync)

    def whole() -> None:
        hu = [s.hu for s in read_slices_hu(paths)]
        predict(model, hu, batch_size=args.batch)

    row["whole_path"] = rate(whole, len(paths), args.seconds, sync)
    row["ratio"] = float(row["bare_fp32"]) / float(row["whole_path"])  # type: ignore[arg-type]
    return row


def table(rows: list[dict[str, object]]) -> str:
    keys = [k for k in rows[0] if k.startswith("bare_")] if rows else []
    head = ["model", "input", "device", *[f"{k} (slices/s)" for k in keys],
            "whole path (slices/s)", "whole/bare time"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["model"]), str(r["input"]), str(r["device"])]
        cells += [f"{float(r[k]):.1f}" for k in keys]  # type: ignore[arg-type]
        cells += [f"{float(r['whole_path']):.1f}", f"{float(r['ratio']):.2f}"]  # type: ignore[arg-type]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(names()))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_study_spec(3, covid=True, n_slices=args.slices)
        paths = write_study(spec, Path(tmp) / "series")
        rows = []
        for name in args.models:
            rows.append(bench_model(name, device, paths, args))
            print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", file=sys.stderr)


if __name__ == "__main__":
    main()
