"""What each piece of the receive path's adapter buys: our SCP with one piece switched off at
a time, against the whole node and dcmtk `storescp`, interleaved in one process.

    .venv/bin/python bench/receive_parts.py [--slices 300] [--runs 7] [--parts all]

Pieces (docs/performance.md): `response` (plain C-STORE-RSPs from a template,
receive/store_response.py), `file-meta` (each data set file's meta written directly,
receive/file_meta.py), `hash` (SHA-256 on a second thread while the header is read),
`walk` (the header walked in memory, header_walk.py), `log-handlers` (pynetdicom's logging
handlers unbound), and `recorder` (the audit recorder replaced by a sink that drops records:
its share of the GIL, not a piece one could switch off). Each variant is the full node minus
that piece; the baseline is the full node in the same rounds. The machine is noisy (±15 %
between runs): read medians over several runs, and differences under ~5 % as noise.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pynetdicom.dimse_messages
from pydicom.uid import generate_uid

from bench.ingest import run_storescp, send
from scpnode import headers
from scpnode.config import NodeSettings
from scpnode.db import Database
from scpnode.ingest import Recorder
from scpnode.receive import file_meta, handlers
from scpnode.receive.server import ReceiveServer
from scpnode.spool import Spool, file_sha256
from scpnode.synth import make_study_spec, write_study


def _inline_hash(_self: Any, temp: Path) -> Future[tuple[str, int]]:
    done: Future[tuple[str, int]] = Future()
    done.set_result(file_sha256(temp))
    return done


@contextlib.contextmanager
def _without(part: str) -> Iterator[None]:
    """The node with `part` switched off for the duration (restored after)."""
    saved: list[tuple[Any, str, Any]] = []

    def swap(owner: Any, name: str, value: Any) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    if part == "response":
        swap(handlers, "answer_stores_directly", lambda _assoc: None)
    elif part == "file-meta":
        swap(file_meta, "install", lambda: None)
        swap(pynetdicom.dimse_messages, "create_file_meta", file_meta._real_create)
        swap(pynetdicom.dimse_messages, "write_file_meta_info", file_meta._real_write)
    elif part == "hash":
        swap(handlers.StoreHandlers, "_hash_meanwhile", _inline_hash)
    elif part == "walk":
        swap(headers, "walk_header", lambda _fp: None)
    elif part == "log-handlers":
        swap(handlers, "drop_silent_log_handlers", lambda _assoc: None)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def run_node(folder: Path, work: Path, part: str | None) -> float:
    """Seconds until storescu's last C-STORE was acknowledged."""
    work.mkdir(parents=True)
    db = Database(f"sqlite:///{work}/bench.db")
    db.upgrade()
    recorder = Recorder(db)
    recorder.start()
    sink: Callable[[Any], None] = (lambda _r: None) if part == "recorder" else recorder.submit
    try:
        with _without(part or ""):
            server = ReceiveServer(NodeSettings(host="127.0.0.1"), Spool(work / "spool"), sink)
            port = server.start(port=0)
            try:
                return send([folder], port, "SCPNODE")
            finally:
                server.stop(5)
    finally:
        recorder.stop()
        db.dispose()
        shutil.rmtree(work, ignore_errors=True)


PARTS = ["response", "file-meta", "hash", "walk", "log-handlers", "recorder"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--parts", nargs="+", default=["all"], choices=["all", *PARTS])
    args = parser.parse_args()
    parts = PARTS if "all" in args.parts else args.parts
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_study(make_study_spec(1, n_slices=args.slices), root / "series")
        times: dict[str, list[float]] = {"storescp": [], "node": []}
        times.update({f"without {p}": [] for p in parts})
        for _ in range(args.runs):
            times["storescp"].append(run_storescp([root / "series"], root / "out"))
            times["node"].append(run_node(root / "series", root / generate_uid(), None))
            for part in parts:
                elapsed = run_node(root / "series", root / generate_uid(), part)
                times[f"without {part}"].append(elapsed)
        base, node = statistics.median(times["storescp"]), statistics.median(times["node"])
        print(f"{args.slices} slices, 1 sender; medians of {args.runs} interleaved runs")
        for label, values in times.items():
            t = statistics.median(values)
            print(f"{label:24s} {t:6.2f} s  / storescp {t / base:5.2f}  / node {t / node:5.2f}")


if __name__ == "__main__":
    main()
