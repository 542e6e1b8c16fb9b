"""`/metrics` in the Prometheus text format (0.0.4), derived from the database and the spool.

No client library and no in-process counters: the node runs as several processes (SCP,
workers, console), so the database is the one place that knows every total. Counters are
sums over durable rows (they only grow, restarts included); gauges are current states. The
heavier aggregates are cached for `CACHE_S`, so a tight scrape interval costs little.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scpnode.db import Database
from scpnode.db.models import AssociationRow, DeliveryAttemptRow, DeliveryRow, ResultRow, StudyRow
from scpnode.domain import AssociationOutcome, DeliveryState, StudyState
from scpnode.web.queries import count_by, queue_depth, report_latencies

CACHE_S = 5.0
LATENCY_BUCKETS_S = (30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600)
RECENT_ANALYSES = 100  # slices/s gauge: throughput over this many latest analyses
Sample = tuple[str, dict[str, str], float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> list[str]:
    """One metric family: HELP, TYPE, then its samples."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{n}{_label_text(labels)} {_number(v)}" for n, labels, v in samples]
    return lines


def histogram(name: str, values: list[float], buckets: Iterable[float]) -> list[Sample]:
    """Cumulative buckets, +Inf, _sum and _count of already sorted `values`."""
    samples: list[Sample] = []
    index = 0
    for bound in buckets:
        while index < len(values) and values[index] <= bound:
            index += 1
        samples.append((f"{name}_bucket", {"le": _number(bound)}, index))
    samples.append((f"{name}_bucket", {"le": "+Inf"}, len(values)))
    samples += [(f"{name}_sum", {}, sum(values)), (f"{name}_count", {}, len(values))]
    return samples


def _with_all(found: dict[str, int], known: Iterable[str], label: str) -> list[Sample]:
    """Every known value gets a sample (0 included), so a series never vanishes."""
    keys = sorted(set(known) | set(found))
    return [("", {label: k}, found.get(k, 0)) for k in keys]


def _named(name: str, samples: list[Sample]) -> list[Sample]:
    return [(name, labels, v) for _, labels, v in samples]


class Metrics:
    """Renders the exposition; `render()` is cached for `CACHE_S` seconds."""

    def __init__(
        self,
        db: Database,
        spool_dir: Path,
        min_free_mb: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db, self.spool_dir, self.min_free_mb = db, spool_dir, min_free_mb
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: tuple[float, str] | None = None

    def render(self) -> str:
        with self._lock:
            now = self.monotonic()
            if self._cached is None or now - self._cached[0] > CACHE_S:
                with self.db.snapshot() as session:
                    text = "\n".join(self._lines(session)) + "\n"
                self._cached = (now, text)
            return self._cached[1]

    def _lines(self, session: Session) -> list[str]:
        return (
            self._reception(session)
            + self._processing(session)
            + self._delivery(session)
            + self._disk()
        )

    def _reception(self, session: Session) -> list[str]:
        instances, size = session.execute(
            select(
                func.coalesce(func.sum(AssociationRow.instances), 0),
                func.coalesce(func.sum(AssociationRow.bytes), 0),
            )
        ).one()
        outcomes = count_by(session, AssociationRow.outcome)
        return (
            family(
                "scpnode_instances_received_total",
                "counter",
                "Instances stored by the SCP.",
                [("scpnode_instances_received_total", {}, instances)],
            )
            + family(
                "scpnode_received_bytes_total",
                "counter",
                "Bytes of stored instances.",
                [("scpnode_received_bytes_total", {}, size)],
            )
            + family(
                "scpnode_associations_total",
                "counter",
                "Incoming associations by outcome (open: still running).",
                _named(
                    "scpnode_associations_total", _with_all(outcomes, AssociationOutcome, "outcome")
                ),
            )
        )

    def _processing(self, session: Session) -> list[str]:
        slices, seconds = session.execute(
            select(
                func.coalesce(func.sum(ResultRow.n_slices), 0),
                func.coalesce(func.sum(ResultRow.inference_s), 0.0),
            ).where(ResultRow.inference_s.is_not(None))
        ).one()
        recent = session.execute(
            select(ResultRow.n_slices, ResultRow.inference_s)
            .where(ResultRow.inference_s > 0)
            .order_by(ResultRow.id.desc())
            .limit(RECENT_ANALYSES)
        ).all()
        recent_s = sum(float(s or 0.0) for _, s in recent)
        rate = sum(int(n) for n, _ in recent) / recent_s if recent_s else 0.0
        states = count_by(session, StudyRow.state)
        return (
            family(
                "scpnode_studies",
                "gauge",
                "Studies by status.",
                _named("scpnode_studies", _with_all(states, StudyState, "status")),
            )
            + family(
                "scpnode_queue_depth",
                "gauge",
                "Study jobs queued or running.",
                [("scpnode_queue_depth", {}, queue_depth(session))],
            )
            + family(
                "scpnode_inference_slices_total",
                "counter",
                "Slices classified.",
                [("scpnode_inference_slices_total", {}, int(slices))],
            )
            + family(
                "scpnode_inference_seconds_total",
                "counter",
                "Seconds spent classifying slices.",
                [("scpnode_inference_seconds_total", {}, float(seconds or 0.0))],
            )
            + family(
                "scpnode_inference_slices_per_second",
                "gauge",
                f"Slices per second over the latest {RECENT_ANALYSES} analyses.",
                [("scpnode_inference_slices_per_second", {}, round(rate, 3))],
            )
        )

    def _delivery(self, session: Session) -> list[str]:
        latencies = report_latencies(session)
        states = count_by(session, DeliveryRow.state)
        attempts = count_by(session, DeliveryAttemptRow.outcome)
        return (
            family(
                "scpnode_report_latency_seconds",
                "histogram",
                "First instance received to report delivered, per delivery.",
                histogram("scpnode_report_latency_seconds", latencies, LATENCY_BUCKETS_S),
            )
            + family(
                "scpnode_deliveries",
                "gauge",
                "Deliveries by status.",
                _named("scpnode_deliveries", _with_all(states, DeliveryState, "status")),
            )
            + family(
                "scpnode_delivery_attempts_total",
                "counter",
                "Delivery attempts by outcome.",
                _named(
                    "scpnode_delivery_attempts_total",
                    _with_all(attempts, ("delivered", "transient", "permanent"), "outcome"),
                ),
            )
        )

    def _disk(self) -> list[str]:
        free = spool_free_bytes(self.spool_dir)
        return family(
            "scpnode_spool_free_bytes",
            "gauge",
            "Free bytes on the spool's filesystem (-1: spool missing).",
            [("scpnode_spool_free_bytes", {}, free)],
        ) + family(
            "scpnode_spool_min_free_bytes",
            "gauge",
            "Below this the SCP answers C-STORE with 0xA700.",
            [("scpnode_spool_min_free_bytes", {}, self.min_free_mb * 1024 * 1024)],
        )


def spool_free_bytes(spool_dir: Path) -> int:
    """Free bytes where the spool lives (its nearest existing parent); -1 when none exists."""
    path = spool_dir
    while not path.exists():
        if path.parent == path:
            return -1
        path = path.parent
    return int(shutil.disk_usage(path).free)
