"""Ingest benchmark: dcmtk `storescu` sending one synthetic CT series to dcmtk `storescp`
(the baseline) and to our SCP (spool + recorder + SQLite), same files, same machine, no fsync.

    .venv/bin/python bench/ingest.py [--slices 300] [--runs 3]

Prints the median wall time of each and the ratio node / storescp.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scpnode.config import NodeSettings
from scpnode.db import Database
from scpnode.ingest import Recorder
from scpnode.receive.server import ReceiveServer
from scpnode.spool import Spool
from scpnode.synth import make_study_spec, write_study
from tests.conftest import need
from tests.system.peers import free_port

ENV = {**os.environ, "TCP_NODELAY": "1"}


def send(folder: Path, port: int, aec: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            need("storescu"),
            "-aet",
            "BENCH",
            "-aec",
            aec,
            "+sd",
            "+r",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        env=ENV,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def run_storescp(folder: Path, out: Path) -> float:
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [need("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)], env=ENV
    )
    try:
        time.sleep(0.5)
        return send(folder, port, "STORESCP")
    finally:
        proc.terminate()
        proc.wait()


def run_node(folder: Path, work: Path) -> tuple[float, float]:
    db = Database(f"sqlite:///{work}/bench.db")
    db.upgrade()
    recorder = Recorder(db)
    recorder.start()
    server = ReceiveServer(NodeSettings(host="127.0.0.1"), Spool(work / "spool"), recorder.submit)
    port = server.start(port=0)
    try:
        wire = send(folder, port, "SCPNODE")
        started = time.perf_counter()
        recorder.flush()
        return wire, wire + (time.perf_counter() - started)
    finally:
        server.stop(5)
        recorder.stop()
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = make_study_spec(1, n_slices=args.slices)
        write_study(spec, root / "series")
        size = sum(p.stat().st_size for p in (root / "series").rglob("*.dcm"))
        base, node, node_db = [], [], []
        for i in range(args.runs):
            base.append(run_storescp(root / "series", root / f"storescp{i}"))
            wire, with_db = run_node(root / "series", root / f"node{i}")
            node.append(wire)
            node_db.append(with_db)
        b, n, d = (statistics.median(x) for x in (base, node, node_db))
        print(f"series: {args.slices} slices, {size / 1e6:.0f} MB; median of {args.runs} runs")
        print(f"dcmtk storescp         {b:6.2f} s  {args.slices / b:6.0f} images/s")
        print(
            f"scpnode SCP (acked)    {n:6.2f} s  {args.slices / n:6.0f} images/s  ratio {n / b:.2f}"
        )
        print(
            f"scpnode SCP + DB rows  {d:6.2f} s  {args.slices / d:6.0f} images/s  ratio {d / b:.2f}"
        )


if __name__ == "__main__":
    main()
