"""Ingest benchmark: dcmtk `storescu` sending synthetic CT series to dcmtk `storescp` (the
baseline), to a bare pynetdicom SCP whose handler does nothing (the stack's own ceiling), and
to our SCP (spool + recorder + SQLite); same files, same machine, no fsync on either side.

    .venv/bin/python bench/ingest.py [--slices 300] [--runs 5] [--senders 1] [--fastpath on]
                                     [--receive-processes 1] [--compare-reuseport]

`--senders 4` sends four copies of the series at once (four `storescu`, `storescp --fork`).
`--fastpath off` measures our SCP without receive/fastpath.py (pynetdicom's polling loops),
to show what the adapter buys. `--receive-processes N` adds N-1 `scpnode receive` children on
the node's listening socket, as `serve` runs them; `--compare-reuseport` also runs them
binding the port themselves (SO_REUSEPORT: the kernel's hash picks the process). Runs are
interleaved (storescp, bare, node, storescp, ...) so a noisy machine slows all of them
alike; prints medians and the ratio of each to storescp.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa
from pydicom.uid import generate_uid

from scpnode.config import NodeSettings
from scpnode.db import Database
from scpnode.db.models import AssociationRow
from scpnode.ingest import Recorder
from scpnode.receive import handlers as receive_handlers
from scpnode.receive.server import ReceiveServer
from scpnode.spool import Spool
from scpnode.synth import make_study_spec, write_study
from tests.conftest import need
from tests.system.peers import free_port

ENV = {**os.environ, "TCP_NODELAY": "1"}


def send(folders: list[Path], port: int, aec: str) -> float:
    """All folders at once, one `storescu` each; wall time until the last one finished."""
    started = time.perf_counter()
    storescu = [need("storescu"), "-aec", aec, "+sd", "+r"]
    procs = [
        subprocess.Popen(
            [*storescu, "-aet", f"BENCH{i}", "127.0.0.1", str(port), str(folder)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i, folder in enumerate(folders)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - started


def wait_listening(port: int, timeout_s: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def run_storescp(folders: list[Path], out: Path) -> float:
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    fork = ["--fork"] if len(folders) > 1 else []
    proc = subprocess.Popen(
        [need("storescp"), *fork, "-aet", "STORESCP", "-od", str(out), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        return send(folders, port, "STORESCP")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(out, ignore_errors=True)


def run_bare(folders: list[Path], work: Path) -> float:
    """Our SCP's AE configuration (contexts, PDU size, fast path) with a do-nothing handler."""
    server = ReceiveServer(NodeSettings(host="127.0.0.1"), Spool(work / "spool"), lambda _r: None)
    server.handlers.on_store = lambda _event: 0  # type: ignore[method-assign]
    port = server.start(port=0)
    try:
        return send(folders, port, "SCPNODE")
    finally:
        server.stop(5)
        shutil.rmtree(work, ignore_errors=True)


def run_node(
    folders: list[Path], work: Path, processes: int = 1, join: str = "socket"
) -> tuple[float, float, list[int]]:
    """(last C-STORE acknowledged, last audit row written, associations per receiving
    process); `processes` > 1: this one plus `scpnode receive` children accepting on its
    listening socket, as `serve` runs them (`join="port"`: children binding the port
    themselves, SO_REUSEPORT)."""
    work.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite:///{work}/bench.db")
    db.upgrade()
    recorder = Recorder(db)
    recorder.start()
    node = NodeSettings(host="127.0.0.1", receive_processes=processes)
    server = ReceiveServer(node, Spool(work / "spool"), recorder.submit)
    port = server.start(port=0)
    fd = server.listening_fd if join == "socket" and processes > 1 else None
    children = start_receivers(work, port, processes - 1, fd)
    try:
        wire = send(folders, port, "SCPNODE")
        started = time.perf_counter()
        recorder.flush()
        for child in children:  # each drains and writes its rows before it exits
            child.terminate()
            child.wait(60)
        written = wire + (time.perf_counter() - started)
        with db.session() as session:
            owners = session.execute(
                sa.select(sa.func.count())
                .select_from(AssociationRow)
                .group_by(AssociationRow.scp_owner)
            ).scalars()
            spread = sorted((int(n) for n in owners), reverse=True)
        return wire, written, spread
    finally:
        for child in children:
            child.kill()
        server.stop(5)
        recorder.stop()
        db.dispose()
        shutil.rmtree(work, ignore_errors=True)


def start_receivers(
    work: Path, port: int, count: int, listen_fd: int | None = None
) -> list[subprocess.Popen[bytes]]:
    if count <= 0:
        return []
    config = work / "node.toml"
    config.write_text(
        f'[node]\nhost = "127.0.0.1"\nreceive_processes = {count + 1}\n'
        f'[storage]\nspool_dir = "spool"\n[database]\nurl = "sqlite:///bench.db"\n'
        "[web]\nenabled = false\n"
    )
    logs = [work / f"receive{i}.log" for i in range(count)]
    command = [sys.executable, "-m", "scpnode", "receive", "--config", str(config)]
    where = ["--port", str(port)] if listen_fd is None else ["--listen-fd", str(listen_fd)]
    children = [
        subprocess.Popen(
            [*command, *where],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            pass_fds=() if listen_fd is None else (listen_fd,),
        )
        for log in logs
    ]
    deadline = time.monotonic() + 60
    while not all("listening" in log.read_text() for log in logs):
        if time.monotonic() > deadline or any(c.poll() is not None for c in children):
            raise RuntimeError(f"receiving processes did not start: see {logs}")
        time.sleep(0.1)
    return children


def copies(series: Path, n: int, root: Path) -> list[Path]:
    """n copies of the series with their own UIDs (so every sender stores new instances)."""
    if n == 1:
        return [series]
    folders = []
    for i in range(n):
        spec = make_study_spec(100 + i, n_slices=len(list(series.glob("**/*.dcm"))))
        write_study(spec, root / f"series{i}")
        folders.append(root / f"series{i}")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--fastpath", choices=["on", "off"], default="on")
    parser.add_argument("--receive-processes", type=int, default=1, help="node.receive_processes")
    parser.add_argument(
        "--compare-reuseport",
        action="store_true",
        help="also run the children binding the port themselves (SO_REUSEPORT, the kernel's "
        "hash picks the process) instead of sharing serve's listening socket",
    )
    args = parser.parse_args()
    if args.fastpath == "off":
        receive_handlers.accelerate = lambda _assoc, _sock: None  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_study(make_study_spec(1, n_slices=args.slices), root / "series")
        folders = copies(root / "series", args.senders, root)
        images = args.slices * len(folders)
        size = sum(p.stat().st_size for f in folders for p in f.rglob("*.dcm"))
        times: dict[str, list[float]] = {"storescp": [], "bare": [], "node": [], "node+db": []}
        spreads: dict[str, list[list[int]]] = {"node": [], "reuseport": []}
        rp = args.receive_processes

        def node_run(key: str, join: str) -> Callable[[Path], object]:
            def run(work: Path) -> None:
                wire, written, spread = run_node(folders, work, rp, join)
                times[key].append(wire)
                if key == "node":
                    times["node+db"].append(written)
                spreads[key].append(spread)

            return run

        runners: list[tuple[str, Callable[[Path], object]]] = [
            ("storescp", lambda w: times["storescp"].append(run_storescp(folders, w))),
            ("bare", lambda w: times["bare"].append(run_bare(folders, w))),
            ("node", node_run("node", "socket")),
        ]
        if args.compare_reuseport and rp > 1:
            times["reuseport"] = []
            runners.append(("reuseport", node_run("reuseport", "port")))
        for _ in range(args.runs):
            for name, run in runners:
                run(root / f"{name}-{generate_uid()}")
        base = statistics.median(times["storescp"])
        print(
            f"{images} images ({args.senders} sender(s) x {args.slices} slices, "
            f"{size / 1e6:.0f} MB); median of {args.runs} interleaved runs; "
            f"fast path {args.fastpath}; receive_processes {rp}; {os.cpu_count()} CPUs"
        )
        labels = {
            "storescp": "dcmtk storescp" + (" --fork" if args.senders > 1 else ""),
            "bare": "pynetdicom, do-nothing handler",
            "node": "scpnode SCP (acked)",
            "node+db": "scpnode SCP + audit rows",
            "reuseport": "scpnode SCP, SO_REUSEPORT (acked)",
        }
        for key, label in labels.items():
            if key not in times:
                continue
            t = statistics.median(times[key])
            print(f"{label:32s} {t:6.2f} s  {images / t:6.0f} images/s  ratio {t / base:5.2f}")
        if rp > 1:  # how the kernel or the processes spread the senders, run by run
            for key in ("node", "reuseport"):
                if spreads[key]:
                    print(f"associations per receiving process ({key}): {spreads[key]}")


if __name__ == "__main__":
    main()
