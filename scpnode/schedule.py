"""Local timers of the SCP process (APScheduler): the completion sweep and spool hygiene.

APScheduler drives only this process's timers; everything that must be coordinated across
processes goes through the database with conditional updates (DESIGN §7).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from scpnode.config import Settings
from scpnode.db import Database
from scpnode.queue import sweep_completions
from scpnode.retention import purge_finished
from scpnode.spool import Spool

log = logging.getLogger(__name__)
STALE_INCOMING_S = 3600.0


def sweep_logged(db: Database, settings: Settings, clock: Callable[[], datetime]) -> list[str]:
    """One completion sweep; a failure is logged (the next sweep retries), never raised."""
    try:
        queued = sweep_completions(
            db,
            clock(),
            grace_s=settings.study.association_grace_s,
            idle_timeout_s=settings.study.idle_timeout_s,
        )
    except Exception:
        log.exception("completion sweep failed; will retry")
        return []
    for uid in queued:
        log.info("study complete, queued", extra={"study": uid})
    return queued


class SweepOnDemand:
    """The completion sweep of a `scpnode receive` child, run only when its recorder filled a
    series to its announced count.

    `serve`'s timer sweeps every study every 0.5 s; a child that received the last slice of a
    series would otherwise leave its study waiting for that tick. Queueing is a conditional
    UPDATE, so a study that two processes sweep at once is queued once.
    """

    def __init__(self, sweep: Callable[[], object]) -> None:
        self._sweep = sweep
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="completion-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sweep_soon(self) -> None:
        """Thread-safe; requests made while a sweep runs are served by one more sweep."""
        self._wanted.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping.is_set():
                return
            self._wanted.clear()
            self._sweep()


class Scheduler:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        spool: Spool,
        clock: Callable[[], datetime],
        sweep_interval_s: float = 0.5,
    ) -> None:
        self.db = db
        self.settings = settings
        self.spool = spool
        self.clock = clock
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._scheduler.add_job(
            self.sweep,
            "interval",
            seconds=sweep_interval_s,
            max_instances=1,
            coalesce=True,
            id="completion",
        )
        if settings.storage.retention_days > 0:
            self._scheduler.add_job(self.purge, "interval", minutes=30, max_instances=1,
                                    coalesce=True, id="retention")  # fmt: skip
        self._scheduler.add_job(
            self.clean_incoming,
            "interval",
            minutes=10,
            max_instances=1,
            coalesce=True,
            id="incoming",
        )

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        self._scheduler.shutdown(wait=True)

    def sweep_soon(self) -> None:
        """Run the completion sweep now (a series just reached its announced count) rather
        than at the next tick; thread-safe, and a sweep already running is not doubled."""
        try:
            self._scheduler.modify_job("completion", next_run_time=datetime.now(UTC))
        except Exception:  # stopped or not started: the timer covers it
            log.debug("completion sweep not brought forward", exc_info=True)

    def sweep(self) -> list[str]:
        return sweep_logged(self.db, self.settings, self.clock)

    def purge(self) -> list[str]:
        try:
            return purge_finished(self.db, self.spool, self.settings.storage.retention_days,
                                  self.clock())  # fmt: skip
        except Exception:
            log.exception("spool retention failed; will retry")
            return []

    def clean_incoming(self) -> int:
        """Drop partial receptions left by associations that died mid-transfer (any node's:
        an hour-old partial file belongs to no live association)."""
        cutoff = time.time() - STALE_INCOMING_S
        removed = 0
        for path in self.spool.incoming_root.glob("*/*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
