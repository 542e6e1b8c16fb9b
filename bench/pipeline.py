"""Pipeline benchmark: where a study's time goes, against the bare model forward.

    .venv/bin/python bench/pipeline.py [--slices 120] [--studies 2]

1. Inference on one series: bare CTnet-10 forward on ready tensors (the baseline), our
   `predict` (preprocessing + forward), and the whole read → HU → predict path.
2. End to end through `Node` (SCP + worker process + delivery to a PACS stand-in): time from
   the scanner's last acknowledged instance to the SR stored at the PACS, and the peak RSS of
   the SCP and worker processes (`--slices 1000 --studies 1`: the memory bound of issue 6).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_zoo.preprocess import hu_batch_to_input
from scpnode.config import load_settings
from scpnode.demo import write_demo_config
from scpnode.demo_weights import ensure_demo_weights
from scpnode.infer.dicom_slices import read_slices_hu
from scpnode.infer.engine import load_model, predict, resolve_device
from scpnode.node import Node
from scpnode.pacs_standin import PacsStandIn
from scpnode.simulate import simulate
from scpnode.synth import make_study_spec, write_study


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def inference(slices: int, work: Path) -> None:
    weights = ensure_demo_weights(log=lambda _m: None)
    model = load_model("ctnet10", weights, resolve_device("auto"))
    paths = write_study(make_study_spec(3, covid=True, n_slices=slices), work / "series")
    hu = [s.hu for s in read_slices_hu(paths)]
    pre, size = model.card.preprocessing, model.card.input_size
    tensor = torch.from_numpy(
        hu_batch_to_input(
            hu,
            size,
            window_center=pre.window_center,
            window_width=pre.window_width,
            mean=pre.mean,
            std=pre.std,
            body_crop=pre.body_crop,
        )
    )

    def bare() -> None:
        with torch.inference_mode():
            for start in range(0, slices, 32):
                model.module(tensor[start : start + 32].to(model.device))

    t_bare = timed(bare)
    t_predict = timed(lambda: predict(model, hu))
    t_full = timed(lambda: predict(model, [s.hu for s in read_slices_hu(paths)]))
    print(f"inference on {slices} slices ({model.device}, {torch.get_num_threads()} threads)")
    print(f"  bare forward              {t_bare:6.2f} s  {slices / t_bare:7.0f} slices/s  1.00")
    print(
        f"  predict (preprocess+fwd)  {t_predict:6.2f} s  {slices / t_predict:7.0f} slices/s  "
        f"{t_predict / t_bare:.2f}"
    )
    print(
        f"  read DICOM + predict      {t_full:6.2f} s  {slices / t_full:7.0f} slices/s  "
        f"{t_full / t_bare:.2f}"
    )


def end_to_end(slices: int, studies: int, work: Path) -> None:
    pacs = PacsStandIn(work / "pacs", "DEMOPACS")
    settings = load_settings(write_demo_config(work, pacs.start()))
    node = Node(settings, say=lambda _m: None)
    node.prepare()
    port = node.start(port=0)
    try:
        time.sleep(25)  # let the worker process load torch and the model (~10 s on 2 cores)
        latencies = []
        for i in range(studies):
            spec = make_study_spec(100 + i, n_slices=slices)
            sent = simulate(
                "127.0.0.1", port, called_aet="SCPNODE", calling_aet="BENCH", specs=[spec]
            )
            acked = time.perf_counter()
            assert sent.all_stored
            while not any(p.parent.name == spec.study_instance_uid for p in pacs.received):
                time.sleep(0.02)
            latencies.append(time.perf_counter() - acked)
        rss = {"SCP process (this one)": peak_rss_mb(os.getpid())}
        for pid in (p.pid for p in node.workers.procs):
            rss[f"worker {pid}"] = peak_rss_mb(pid)
    finally:
        node.stop()
        pacs.stop()
    grace = settings.study.association_grace_s
    print(f"end to end, {slices}-slice studies: last instance acknowledged -> SR at PACS")
    for i, t in enumerate(latencies):
        print(f"  study {i}: {t:5.2f} s (of which completion grace {grace:g} s)")
    print("peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--studies", type=int, default=2)
    parser.add_argument("--end-to-end-only", action="store_true",
                        help="skip part 1 (it holds the whole series in this process)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.end_to_end_only:
            inference(args.slices, Path(tmp))
        end_to_end(args.slices, args.studies, Path(tmp))


if __name__ == "__main__":
    main()
