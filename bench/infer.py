"""Inference benchmark: slices/s per zoo model, and what the node's path costs on top.

    .venv/bin/python bench/infer.py [--models ctnet10 vgg16 ...] [--device auto|cpu|cuda]
                                    [--precision auto|fp32|bf16] [--batch 16] [--slices 128]
                                    [--seconds 1] [--repeats 3] [--threads N]
                                    [--decode-processes N] [--lung-gate] [--json]

For each model at its own input size (untrained weights: throughput does not depend on them):

- **bare**: the forward pass alone on a ready ``[batch, 3, h, w]`` tensor (channels_last,
  inference mode), fp32, and under the serving precision's autocast when that is not fp32
  (``--precision auto``: bf16 on CUDA, fp16 where bf16 is missing; fp32 on a CPU);
- **bare_lanes** (CPU, more than one torch thread): the same forward run the way the node's
  scoring lanes run it, one thread per core, each on one torch thread (infer/stream.py);
- **stream**: the worker's path, ``infer.stream.score_series``: DICOM read → decode → HU →
  window → crop → resize → batch, then forward → sigmoid in the serving precision, on a
  synthetic series of ``--slices`` 512x512 slices written once (on a CPU with several torch
  threads in scoring lanes, else a batch or two ahead in a producer thread);
- **stream, files parsed**: the same from the bare file paths, each file parsed by pydicom
  (what the worker does for a slice whose row has no pixel layout: compressed, unusual, or
  received before the layouts were noted); **stream** starts from the rows' layouts, as the
  worker does for plain uncompressed slices;
- **read+predict**: the same series through ``read_slices_hu`` (everything decoded first),
  then ``predict``: no overlap between decode and the model;
- **stream, decoder processes** (``--decode-processes N``): the same with
  ``model.decode_processes = N``: N spawned processes read, decode and preprocess;
- **ratio**: stream slices/s / bare slices/s at the serving precision (1.0: the path adds
  nothing to the forward; the node's target on CPU is >= 0.85 for CTnet-10), and against
  the faster of bare and bare_lanes (**stream / best bare**).

``--lung-gate`` also measures each slice's lung fraction on the stream and read+predict
paths, as the worker does for a card whose aggregation has the lung gate (the demo's).

``--threads N`` sets torch's CPU threads (the forward's, and preprocessing's resize): on a
CPU with more cores than N, decoding gets cores of its own.

Runs are interleaved (bare, stream, read+predict, bare, ...) ``--repeats`` times and the
median of each is reported: the machine's noise hits all of them alike.
Synthetic data only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_zoo.card import (
    Aggregation,
    Calibration,
    ModelCard,
    Preprocessing,
    TrainingData,
)
from model_zoo.preprocess import lung_fraction
from model_zoo.registry import get_spec, names
from scpnode.domain import ModelIdentity
from scpnode.headers import read_header
from scpnode.infer.decoders import DecoderPool
from scpnode.infer.dicom_slices import KnownSlice, SliceSource, known_slice, read_slices_hu
from scpnode.infer.engine import (
    PRECISIONS,
    LoadedModel,
    predict,
    resolve_device,
    resolve_precision,
)
from scpnode.infer.stream import score_series
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


def as_received(paths: list[Path]) -> list[SliceSource]:
    """Each file as the worker gets it from its instance row: with the pixel layout the SCP
    noted when it received the file (`read_header`), so only the pixel bytes are read."""
    sources = []
    for path in paths:
        header = read_header(path)
        # the instance row's fields (a namespace: a GPU box may lack SQLAlchemy)
        row = SimpleNamespace(path=str(path), sop_instance_uid=header.sop_uid,
                              **header.row_fields())  # fmt: skip
        sources.append(known_slice(row))
    if not all(isinstance(s, KnownSlice) for s in sources):
        raise SystemExit("the synthetic slices should all have a pixel layout")
    return sources


#: forwards per lane in one timed run of the bare forward in lanes
LANE_FORWARDS = 4


def in_lanes(forward: Callable[[], None], lanes: int, forwards: int) -> None:
    """`forwards` calls of `forward` in each of `lanes` threads of one torch thread each."""

    def lane() -> None:
        torch.set_num_threads(1)
        for _ in range(forwards):
            forward()

    own = torch.get_num_threads()
    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.set_num_threads(own)


def loaded(name: str, device: torch.device, precision: str = "fp32") -> LoadedModel:
    """An untrained ``name`` set up as ``engine.load_model`` would serve it."""
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
    return LoadedModel(
        module=module, spec=spec, card=card, device=device, identity=identity, precision=precision
    )


def bench_model(name: str, device: torch.device, paths: list[Path], args: argparse.Namespace,
                pools: dict[tuple[int, ...], DecoderPool]) -> dict[str, object]:  # fmt: skip
    precision = resolve_precision(args.precision, device)
    model = loaded(name, device, precision)
    pool = None
    if args.decode_processes:  # one pool per input size, started once
        size = tuple(model.card.input_size)
        if size not in pools:
            pools[size] = DecoderPool(model.card, args.decode_processes)
        pool = pools[size]
    h, w = model.spec.input_size
    x = torch.rand(args.batch, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def bare(dtype: torch.dtype | None) -> Callable[[], None]:
        def forward() -> None:
            with (
                torch.inference_mode(),
                torch.autocast(
                    device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
                ),
            ):
                model.module(x)

        return forward

    runs: dict[str, Callable[[], object]] = {"bare_fp32": bare(None)}
    lanes = torch.get_num_threads() if device.type == "cpu" else 1
    if lanes > 1:  # the forward alone the way the node's lanes run it
        runs["bare_lanes"] = lambda: in_lanes(bare(None), lanes, LANE_FORWARDS)
    if precision != "fp32":
        runs[f"bare_{precision}"] = bare(torch.bfloat16 if precision == "bf16" else torch.float16)
    measure = lung_fraction if args.lung_gate else None

    def read_predict() -> object:
        hu = [s.hu for s in read_slices_hu(paths)]
        for a in hu if measure is not None else ():
            measure(a)
        return predict(model, hu, batch_size=args.batch)

    sources = as_received(paths)
    runs["stream"] = lambda: score_series(model, sources, batch_size=args.batch, measure=measure)
    runs["stream_files"] = lambda: score_series(model, paths, batch_size=args.batch,
                                                measure=measure)  # fmt: skip
    runs["read_predict"] = read_predict
    if pool is not None:
        runs["stream_pool"] = lambda: score_series(model, sources, batch_size=args.batch,
                                                   measure=measure, decoders=pool)  # fmt: skip
    items = {k: (args.batch if k.startswith("bare_") else len(paths)) for k in runs}
    if "bare_lanes" in runs:
        items["bare_lanes"] = args.batch * lanes * LANE_FORWARDS
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            samples[key].append(rate(fn, items[key], args.seconds, sync))
    row: dict[str, object] = {
        "model": name, "input": f"{h}x{w}", "device": str(device), "precision": precision,
        "batch": args.batch, "slices": len(paths), "lung_gate": args.lung_gate,
    }  # fmt: skip
    row.update({k: statistics.median(v) for k, v in samples.items()})
    if precision != "fp32":  # how far the served probabilities move (untrained weights)
        hu = [s.hu for s in read_slices_hu(paths[: args.batch])]
        fp32 = predict(dataclasses.replace(model, precision="fp32"), hu, batch_size=args.batch)
        row["max_abs_dp"] = float(np.abs(predict(model, hu, batch_size=args.batch) - fp32).max())
    bare_rate = float(row[f"bare_{precision}"])  # type: ignore[arg-type]
    row["ratio"] = float(row["stream"]) / bare_rate  # type: ignore[arg-type]
    if "bare_lanes" in row:  # against the faster of the two ways to run the bare forward
        best = max(bare_rate, float(row["bare_lanes"]))  # type: ignore[arg-type]
        row["ratio_best_bare"] = float(row["stream"]) / best  # type: ignore[arg-type]
    if "stream_pool" in row:
        row["ratio_pool"] = float(row["stream_pool"]) / bare_rate  # type: ignore[arg-type]
    row["samples"] = {k: [round(s, 1) for s in v] for k, v in samples.items()}
    return row


def table(rows: list[dict[str, object]]) -> str:
    bare = sorted(
        {k for r in rows for k in r if k.startswith("bare_")}, key=lambda k: k != "bare_fp32"
    )
    head = ["model", "input", "device", "precision",
            *[f"{k} (slices/s)" for k in bare],
            "stream (slices/s)", "stream, files parsed (slices/s)", "read+predict (slices/s)",
            "stream / bare"]  # fmt: skip
    best = any("ratio_best_bare" in r for r in rows)
    if best:
        head.append("stream / best bare")
    if any("stream_pool" in r for r in rows):
        head[-1:-1] = ["stream, decoder processes (slices/s)", "that / bare"]
    dp = any("max_abs_dp" in r for r in rows)
    if dp:
        head.append("max abs Δp vs fp32")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["model"]), str(r["input"]), str(r["device"]), str(r["precision"])]
        cells += [f"{float(r[k]):.1f}" if k in r else "" for k in bare]  # type: ignore[arg-type]
        cells += [f"{float(r[k]):.1f}" for k in ("stream", "stream_files", "read_predict")]  # type: ignore[arg-type]
        if "stream_pool" in r:
            cells += [f"{float(r['stream_pool']):.1f}", f"{float(r['ratio_pool']):.2f}"]  # type: ignore[arg-type]
        cells.append(f"{float(r['ratio']):.2f}")  # type: ignore[arg-type]
        if best:
            cells.append(f"{float(r['ratio_best_bare']):.2f}" if "ratio_best_bare" in r else "")  # type: ignore[arg-type]
        if dp:
            cells.append(f"{float(r['max_abs_dp']):.1e}" if "max_abs_dp" in r else "")  # type: ignore[arg-type]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(names()))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--decode-processes", type=int, default=0,
                        help="also time the path with this many decoder processes")  # fmt: skip
    parser.add_argument("--lung-gate", action="store_true",
                        help="measure the lung fraction per slice (demo card)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_study_spec(3, covid=True, n_slices=args.slices)
        paths = write_study(spec, Path(tmp) / "series")
        rows = []
        pools: dict[tuple[int, ...], DecoderPool] = {}
        try:
            for name in args.models:
                rows.append(bench_model(name, device, paths, args, pools))
                print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
        finally:
            for pool in pools.values():
                pool.close()
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{where}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"batch {args.batch}, {args.slices} slices, median of {args.repeats}"
        f"{', lung gate' if args.lung_gate else ''}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
