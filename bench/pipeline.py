"""Pipeline benchmark: where a study's time goes, against the bare model forward.

    .venv/bin/python bench/pipeline.py [--slices 120] [--studies 2] [--end-to-end-only]
                                       [--pace 50] [--prescore on|off|both]

1. Inference on one series: bare CTnet-10 forward on ready tensors (the baseline), our
   `predict` (preprocessing + forward), and the whole read → HU → predict path.
2. End to end through `Node` (SCP + worker process + delivery to a PACS stand-in), each
   study sent over one association at `--pace` images/s (0: full speed): time from its last
   C-STORE response to its SR stored at the PACS, split into the completion wait (until the
   `study_complete` event) and the report latency (the rest: claim, inference, SR, send),
   with how many slices were already scored when the last one was acknowledged; scoring
   while arriving off, then on (`--prescore`), in one run; and the peak RSS of the SCP and
   worker processes (`--slices 1000 --studies 1`: the memory bound of issue 6).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_zoo.preprocess import hu_batch_to_input
from scpnode.config import load_settings
from scpnode.db import Database
from scpnode.db.models import AuditEventRow, PrescoreRow
from scpnode.demo import NODE_AET, write_demo_config
from scpnode.demo_weights import ensure_demo_weights
from scpnode.infer.dicom_slices import read_slices_hu
from scpnode.infer.engine import load_model, predict, resolve_device
from scpnode.node import Node
from scpnode.pacs_standin import PacsStandIn
from scpnode.send import Peer, association
from scpnode.synth import iter_study_datasets, make_study_spec, write_study


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


def end_to_end(slices: int, studies: int, work: Path, *, pace: float, prescore: bool) -> None:
    """Each study over one association (paced at `pace` images/s, 0: full speed), then the
    time from its last C-STORE response to its SR at the PACS, with the breakdown."""
    pacs = PacsStandIn(work / "pacs", "DEMOPACS")
    config = write_demo_config(work, pacs.start())
    if not prescore:
        config.write_text(config.read_text().replace("[worker]\n", "[worker]\nprescore = false\n"))
    settings = load_settings(config)
    node = Node(settings, say=lambda _m: None)
    node.prepare()
    port = node.start(port=0)
    db = Database(settings.database.url)
    rows = []
    try:
        time.sleep(25)  # let the worker process load torch and the model (~10 s on 2 cores)
        for i in range(studies):
            spec = make_study_spec(100 + i, n_slices=slices)
            datasets = list(iter_study_datasets(spec))  # rendered before the clock starts
            last_ack, scored_at_last, sent_s = send_paced(port, datasets, pace, db)
            deadline = time.monotonic() + 120
            while not any(p.parent.name == spec.study_instance_uid for p in pacs.received):
                assert time.monotonic() < deadline, "no SR at the PACS within 120 s"
                time.sleep(0.01)
            at_pacs = time.time()
            rows.append(breakdown(db, spec.study_instance_uid, last_ack, at_pacs,
                                  slices, scored_at_last) | {"sent": sent_s})  # fmt: skip
        rss = {"SCP process (this one)": peak_rss_mb(os.getpid())}
        for pid in (p.pid for p in node.workers.procs):
            rss[f"worker {pid}"] = peak_rss_mb(pid)
    finally:
        db.dispose()
        node.stop()
        pacs.stop()
    sender = f"paced {pace:g} images/s" if pace else "full speed"
    ahead = "on" if prescore else "off"
    print(f"end to end, {slices}-slice studies, sender {sender}, scoring while arriving "
          f"{ahead}: last C-STORE response -> SR stored at the PACS")  # fmt: skip
    for i, r in enumerate(rows):
        print(f"  study {i}: sent in {r['sent']:5.2f} s; then {r['total']:5.2f} s = "
              f"completion wait {r['completion_wait']:4.2f} s "
              f"+ report latency {r['report_latency']:4.2f} s  [scored by the last slice "
              f"{r['scored_at_last']}/{slices}; job: claim {r['claim']:4.2f} s, inference "
              f"{r['inference']:4.2f} s ({r['reused']} reused), SR + outbox + send "
              f"{r['report']:4.2f} s]")  # fmt: skip
    print("peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))


def send_paced(port: int, datasets: list, pace: float, db: Database) -> tuple[float, int, float]:  # type: ignore[type-arg]
    """Send like a scanner (one association); (wall time of the last response, slices
    already scored at that moment, seconds from the first C-STORE to the last response)."""
    peer = Peer(NODE_AET, "127.0.0.1", port)
    classes = {str(ds.SOPClassUID) for ds in datasets}
    with association(peer, "BENCH", classes, transfer_syntaxes=[ExplicitVRLittleEndian]) as assoc:
        started = time.perf_counter()
        for k, ds in enumerate(datasets):
            if pace:
                time.sleep(max(0.0, started + k / pace - time.perf_counter()))
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0, status
        last_ack, sent_s = time.time(), time.perf_counter() - started
        with db.session() as session:
            scored = int(session.scalar(select(func.count()).select_from(PrescoreRow)) or 0)
    return last_ack, scored, sent_s


def breakdown(db: Database, uid: str, last_ack: float, at_pacs: float, slices: int,
              scored_at_last: int) -> dict[str, float]:  # fmt: skip
    """The study's audit events place each stage on the node's clock (same host, UTC)."""
    deadline = time.monotonic() + 10  # the PACS has the SR; its audit row follows
    while True:
        with db.session() as session:
            events = session.scalars(
                select(AuditEventRow).where(AuditEventRow.study_instance_uid == uid)
                .order_by(AuditEventRow.seq)
            ).all()  # fmt: skip
        if any(e.kind == "delivered" for e in events) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    at = {e.kind: e.ts.timestamp() for e in reversed(events)}  # first of each kind
    done = json.loads(next(e.detail for e in events if e.kind == "inference_done"))
    complete, claimed = at["study_complete"], at["job_claimed"]
    result, delivered = at["study_result"], at.get("delivered", at_pacs)
    wait = max(0.0, complete - last_ack)
    return {
        "total": at_pacs - last_ack, "completion_wait": wait,
        "report_latency": at_pacs - last_ack - wait, "scored_at_last": scored_at_last,
        "claim": claimed - complete, "inference": float(done["seconds"]),
        "reused": done.get("scored_while_arriving", 0),
        "report": delivered - result,
    }  # fmt: skip


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
    parser.add_argument("--pace", type=float, default=0.0,
                        help="images/s the scanner sends at (0: as fast as it can)")  # fmt: skip
    parser.add_argument("--prescore", choices=["on", "off", "both"], default="both",
                        help="scoring while the study arrives (both: off then on)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.end_to_end_only:
            inference(args.slices, Path(tmp))
        modes = {"on": [True], "off": [False], "both": [False, True]}[args.prescore]
        for n, prescore in enumerate(modes):
            end_to_end(args.slices, args.studies, Path(tmp) / f"run{n}", pace=args.pace,
                       prescore=prescore)  # fmt: skip


if __name__ == "__main__":
    main()
