"""Score a series batch by batch: decode ahead in a thread, never the whole study in memory.

`read_slices_hu` + `predict` held every decoded slice of a series at once (a 1,000-slice CT
is 1 GB of float32 HU) and left the model idle while files were read and decoded. Here a
producer thread reads, decodes and preprocesses the next batches (file reads, the decoders,
numpy and the resize release the GIL for much of that) while the model scores the current
one, so the consumer runs only the forward; at most `prefetch` + 1 batches exist at a time,
and only each slice's score (and, when asked, one per-slice measure such as the lung
fraction of the lung gate) is kept. Slices are then put in anatomical order exactly as
`read_slices_hu` orders them.

On a CPU with more than one torch thread the producer thread loses: a forward that spreads
over every core waits, at each layer, for the core the producer holds, and the producer's
own resize fans out and spins on the cores the forward needs. There the series is scored
in *lanes* instead (`_scored_in_lanes`): one thread per core, each taking the next batch,
reading, preprocessing and scoring it on one torch thread. The cores never wait for each
other, and the producer's work is shared by all of them (docs/performance.md).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from scpnode.infer.decoders import NO_PIXELS, DecoderPool, Prepared, SliceMeasure, prepare_paths
from scpnode.infer.dicom_slices import SliceSource, order_along_normal
from scpnode.infer.engine import LoadedModel, score

_DONE = object()


@dataclass(frozen=True)
class ScoredSlice:
    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    z: float
    probability: float
    measure: float | None = None  # e.g. the lung fraction, when a measure was asked for


@dataclass(frozen=True)
class PlacedScore:
    """A scored slice with what anatomical ordering needs, kept until the series is whole
    (the worker stores these for slices scored while their study is still arriving)."""

    slice: ScoredSlice
    position: float | None  # along the slice normal; None without usable geometry
    instance_number: float


def score_series(
    model: LoadedModel,
    paths: Sequence[SliceSource],
    *,
    batch_size: int = 32,
    measure: SliceMeasure | None = None,
    prefetch: int = 2,
    decoders: DecoderPool | None = None,
) -> list[ScoredSlice]:
    """Every slice's probability (and `measure` of its HU array and body box), in anatomical
    order.

    Raises `SliceReadError` for the first file that cannot become a slice, like
    `read_slices_hu`; the producer thread is stopped and joined before returning.
    """
    placed = score_slices(model, paths, batch_size=batch_size, measure=measure,
                          prefetch=prefetch, decoders=decoders)  # fmt: skip
    return in_anatomical_order(placed)


def score_slices(
    model: LoadedModel,
    paths: Sequence[SliceSource],
    *,
    batch_size: int = 32,
    measure: SliceMeasure | None = None,
    prefetch: int = 2,
    decoders: DecoderPool | None = None,
) -> list[PlacedScore]:
    """`score_series` without the ordering, in input order: for scoring part of a series.

    With `decoders`, batches are read, decoded and preprocessed by those processes (up to
    `prefetch` + their number of batches ahead) instead of by one thread. On a CPU with
    several torch threads and more than one batch, the batches are scored in lanes.
    """
    paths = list(paths)
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    lanes = cpu_lanes(model, decoders, len(chunks))
    if lanes > 1:
        scored: Iterable[tuple[Prepared, np.ndarray]] = _scored_in_lanes(
            model, chunks, measure, lanes
        )
    else:
        batches = _prepared_batches(model, chunks, measure, prefetch, decoders)
        scored = ((ready, score(model, ready.batch)) for ready in batches)
    placed: list[PlacedScore] = []
    for ready, probs in scored:
        for (s, position, number), p, m in zip(ready.slices, probs, ready.measures,
                                                 strict=True):  # fmt: skip
            kept = ScoredSlice(s.sop_instance_uid, s.sop_class_uid, s.path, s.z, float(p), m)
            placed.append(PlacedScore(kept, position, number))
    return placed


def cpu_lanes(model: LoadedModel, decoders: DecoderPool | None, batches: int) -> int:
    """How many lanes score `batches` batches: the calling thread's torch threads on a CPU
    (each lane one of them), 1 on an accelerator, with decoder processes, or for one batch."""
    if model.device.type != "cpu" or decoders is not None:
        return 1
    return max(1, min(torch.get_num_threads(), batches))


def _scored_in_lanes(
    model: LoadedModel,
    chunks: Sequence[Sequence[SliceSource]],
    measure: SliceMeasure | None,
    lanes: int,
) -> list[tuple[Prepared, np.ndarray]]:
    """Every batch read, preprocessed and scored by `lanes` threads of one torch thread each,
    in batch order. The first batch (in order) that failed raises, as on the other paths;
    no lane starts a batch after a failed one. Only scores are kept: each lane holds one
    batch of pixels at a time."""
    results: list[tuple[Prepared, np.ndarray] | BaseException | None] = [None] * len(chunks)
    taken = itertools.count()  # next() on it is atomic: each batch goes to one lane
    first_failed = [len(chunks)]

    def lane() -> None:
        torch.set_num_threads(1)
        while (j := next(taken)) < min(len(chunks), first_failed[0]):
            try:
                ready = prepare_paths(model.card, chunks[j], measure)
                results[j] = (replace(ready, batch=NO_PIXELS), score(model, ready.batch))
            except BaseException as exc:  # raised below, in batch order
                results[j] = exc
                first_failed[0] = min(first_failed[0], j)
                return

    own = torch.get_num_threads()
    threads = [threading.Thread(target=lane, name=f"scoring-lane-{i}", daemon=True)
               for i in range(lanes)]  # fmt: skip
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        # torch makes a thread's count the default of threads started later: give it back
        torch.set_num_threads(own)
    done: list[tuple[Prepared, np.ndarray]] = []
    for item in results:
        if isinstance(item, BaseException):
            raise item
        if item is None:  # only after a failure, which raised above
            raise RuntimeError("a scoring lane stopped without a result")
        done.append(item)
    return done


def _prepared_batches(
    model: LoadedModel,
    chunks: list[list[SliceSource]],
    measure: SliceMeasure | None,
    prefetch: int,
    decoders: DecoderPool | None,
) -> Iterator[Prepared]:
    if decoders is not None:
        yield from _from_processes(decoders, chunks, measure, prefetch + decoders.processes)
        return
    batches: queue.Queue[object] = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce, args=(model, chunks, measure, batches, stop),
        daemon=True, name="slice-decoder",
    )  # fmt: skip
    producer.start()
    try:
        while (item := batches.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()  # a producer still decoding or waiting on the full queue gives up
        producer.join()


def _from_processes(
    decoders: DecoderPool,
    chunks: list[list[SliceSource]],
    measure: SliceMeasure | None,
    ahead: int,
) -> Iterator[Prepared]:
    """Batches in order, at most `ahead` of them submitted beyond the one being scored."""
    pending: deque[Future[Prepared]] = deque()
    queued = iter(chunks)
    try:
        for chunk in queued:
            pending.append(decoders.submit(chunk, measure))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def in_anatomical_order(placed: Sequence[PlacedScore]) -> list[ScoredSlice]:
    """Slices scored in any order and at any time, ordered exactly as `read_slices_hu` does."""
    keyed = [(p.slice, p.position, p.instance_number, str(p.slice.path)) for p in placed]
    return [_with_z(s, z) for s, z in order_along_normal(keyed)]


def _with_z(s: ScoredSlice, z: float) -> ScoredSlice:
    return ScoredSlice(s.sop_instance_uid, s.sop_class_uid, s.path, z, s.probability, s.measure)


def _produce(
    model: LoadedModel,
    chunks: list[list[SliceSource]],
    measure: SliceMeasure | None,
    batches: queue.Queue[object],
    stop: threading.Event,
) -> None:
    """Decode and preprocess batches ahead of the model, so the consumer only runs the
    forward; hand over an exception instead of raising it."""
    try:
        for chunk in chunks:
            if stop.is_set():
                return
            _offer(prepare_paths(model.card, chunk, measure), batches, stop)
        _offer(_DONE, batches, stop)
    except BaseException as exc:  # re-raised in the consumer
        _offer(exc, batches, stop)


def _offer(item: object, batches: queue.Queue[object], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            batches.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
