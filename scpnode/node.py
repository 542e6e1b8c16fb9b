"""`scpnode serve`: the SCP process, its timers, and the worker processes it supervises.

The SCP and inference run in separate processes (the GIL): this process receives, records and
decides completion; `scpnode worker` children claim jobs and deliver. A child that dies is
restarted; its job's lease expires and another claim takes it over.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from scpnode import audit
from scpnode.app import (
    check_model_policy,
    destination_tls,
    load_checked_card,
    node_identity,
    open_database,
    resolve_weights,
)
from scpnode.clock import utcnow
from scpnode.config import Settings
from scpnode.domain import AuditKind
from scpnode.ingest import Recorder
from scpnode.queue import release_dead_claims
from scpnode.receive.server import ReceiveServer
from scpnode.reconcile import reconcile
from scpnode.schedule import Scheduler, SweepOnDemand, sweep_logged
from scpnode.spool import Spool

log = logging.getLogger(__name__)


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM (warm stop) when `serve` dies, even by kill -9, so
    no orphaned worker keeps running beside the next `serve`. Linux only; a no-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerPool:
    """`scpnode worker` subprocesses (or another subcommand: `web`, the console; `receive`,
    extra receiving processes), restarted when they die, stopped by PID."""

    def __init__(
        self,
        count: int,
        config: Path | None,
        subcommand: str = "worker",
        args: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.count = count
        self.pass_fds = tuple(pass_fds)  # inherited by every child, restarted ones too
        self.name = subcommand
        self.command = [sys.executable, "-m", "scpnode", subcommand]
        if config is not None:
            self.command += ["--config", str(config)]
        self.command += list(args)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="worker-pool", daemon=True)

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        self._monitor.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.command, preexec_fn=_stop_with_parent, pass_fds=self.pass_fds)
        log.info(f"{self.name} started", extra={"pid": proc.pid})
        return proc

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self.procs):
                code = proc.poll()
                if code is None or self._stopping.is_set():
                    continue
                log.error(
                    f"{self.name} exited; restarting",
                    extra={"pid": proc.pid, "code": code, "delay_s": backoff},
                )
                if self._stopping.wait(backoff):
                    return
                self.procs[i] = self._spawn()
                backoff = min(backoff * 2, 60.0)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (warm: the job in hand finishes), then SIGKILL whatever is left."""
        self._stopping.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Node:
    """Everything `serve` runs; `demo` and system tests drive the same object."""

    def __init__(self, settings: Settings, *, say: object = print) -> None:
        self.settings = settings
        self.say = say
        self.spool = Spool(
            settings.storage.spool_dir,
            min_free_mb=settings.storage.min_free_mb,
            fsync=settings.storage.fsync,
        )
        self.db = open_database(settings)
        self.scheduler = Scheduler(self.db, settings, self.spool, utcnow)
        # a series that reached its announced count is swept at once, not at the next tick
        self.recorder = Recorder(self.db, on_series_filled=self.scheduler.sweep_soon)
        self.scp = ReceiveServer(settings.node, self.spool, self.recorder.submit)
        self.workers = WorkerPool(settings.worker.processes, settings.source)
        # the console in its own process: its pages and exports never share the SCP's GIL
        self.console = WorkerPool(int(settings.web.enabled), settings.source, "web")
        self.receivers: WorkerPool | None = None  # node.receive_processes - 1, once bound
        self.port: int | None = None
        self._started = False

    def prepare(self) -> None:
        """Check the model policy, build demo weights if needed, reconcile spool and DB."""
        if self.settings.model.weights is None:
            check_model_policy(self.settings, None)  # refuse before spending minutes training
        destination_tls(self.settings)  # bad certificates stop `serve`, not just its workers
        weights = resolve_weights(self.settings, train=True, log=self.say)  # type: ignore[arg-type]
        card = load_checked_card(self.settings, weights)
        if card.synthetic:
            self.say(  # type: ignore[operator]
                "NOTE: serving SYNTHETIC demo weights (trained on generated phantoms, "
                "not on patient data): results are not clinical."
            )
        self.spool.prepare()
        self.settings.outbox_dir.mkdir(parents=True, exist_ok=True)
        jobs, deliveries = release_dead_claims(self.db, utcnow())
        if jobs or deliveries:
            log.warning(
                "work of dead processes released", extra={"jobs": jobs, "deliveries": deliveries}
            )
        added = reconcile(self.db, self.spool)
        if added:
            log.warning("spool files reconciled into the database", extra={"instances": added})

    def start(self, port: int | None = None) -> int:
        self._started = True
        self.recorder.start()
        self.port = self.scp.start(port=port)
        self._start_receivers()
        self.scheduler.start()
        self.workers.start()
        self.console.start()
        with self.db.session() as session:
            audit.append(
                session,
                AuditKind.NODE_STARTED,
                ae_title=self.settings.node.ae_title,
                port=self.port,
                pid=os.getpid(),
                device_uid=node_identity(self.settings).device_uid,
            )
        return self.port

    def _start_receivers(self) -> None:
        """`node.receive_processes` - 1 `scpnode receive` children accepting on our listening
        socket (one queue: each connection goes to the least busy process)."""
        extra = self.settings.node.receive_processes - 1
        if extra <= 0:
            return
        if self.settings.source is None:
            raise ValueError("node.receive_processes > 1 needs a configuration file")
        fd = self.scp.listening_fd
        self.receivers = WorkerPool(
            extra, self.settings.source, "receive", ["--listen-fd", str(fd)], pass_fds=[fd]
        )
        self.receivers.start()

    def stop(self) -> None:
        """Stop accepting, finish in-flight stores, record them, stop timers and workers."""
        if not self._started:
            self.db.dispose()
            return
        self._started = False
        if self.receivers is not None:
            self.receivers.stop(timeout_s=45.0)  # each drains its associations, like ours
        self.scp.stop()
        self.recorder.stop()
        self.scheduler.stop()
        self.console.stop(timeout_s=15.0)
        self.workers.stop()
        with self.db.session() as session:
            audit.append(session, AuditKind.NODE_STOPPED, pid=os.getpid())
        self.db.dispose()

    def run_until_signal(self) -> int:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.prepare()
        port = self.start()
        log.info(
            "node serving",
            extra={
                "ae_title": self.settings.node.ae_title,
                "port": port,
                "workers": self.settings.worker.processes,
            },
        )
        while not stop.wait(1.0):
            pass
        log.info("stopping: no new associations; finishing in-flight stores")
        self.stop()
        return 0


class ReceivingProcess:
    """What `scpnode receive` runs: an SCP and a recorder of its own (one GIL each), and a
    completion sweep run only when one of its batches fills a series. Timers, workers and
    the periodic sweep stay with `serve`, which starts, restarts and stops these processes."""

    def __init__(self, settings: Settings) -> None:
        spool = Spool(
            settings.storage.spool_dir,
            min_free_mb=settings.storage.min_free_mb,
            fsync=settings.storage.fsync,
        )
        self.db = open_database(settings)
        self.sweeper = SweepOnDemand(lambda: sweep_logged(self.db, settings, utcnow))
        self.recorder = Recorder(self.db, on_series_filled=self.sweeper.sweep_soon)
        self.scp = ReceiveServer(settings.node, spool, self.recorder.submit)

    def start(self, port: int | None = None, listen_fd: int | None = None) -> int:
        self.sweeper.start()
        self.recorder.start()
        return self.scp.start(port=port, listen_fd=listen_fd)

    def stop(self) -> None:
        self.scp.stop()
        self.recorder.stop()  # records the last batch, which may ask for one more sweep
        self.sweeper.stop()
        self.db.dispose()


def run_receiver(settings: Settings, port: int | None, listen_fd: int | None = None) -> int:
    """`scpnode receive`: one more receiving process, accepting on `serve`'s listening socket
    (`listen_fd`, inherited) or joining its port (`port`, SO_REUSEPORT)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    receiving = ReceivingProcess(settings)
    bound = receiving.start(port, listen_fd)
    log.info("receiving process listening", extra={"port": bound, "pid": os.getpid()})
    while not stop.wait(1.0):
        pass
    receiving.stop()
    return 0
