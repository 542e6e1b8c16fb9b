"""Decoder processes: read, decode and preprocess slices on several cores for a fast model.

One decoder thread does ~300 slices/s of DICOM read + decode + preprocessing, most of it
Python that holds the GIL; a GPU forward does thousands (docs/performance.md). With
`model.decode_processes = N` the worker hands batches of paths to N processes, which return
model-ready input (``float32 [n, 3, h, w]``, a few MB) plus each slice's identity and
measure; the worker's thread only runs the forward. Children are spawned, never forked (the
worker holds a CUDA context), hold no model, and are started once per worker.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from model_zoo.card import ModelCard
from model_zoo.preprocess import Box, body_box
from scpnode.infer.dicom_slices import SliceHU, read_slice
from scpnode.infer.engine import prepare_for_card

NO_PIXELS = np.empty((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class Prepared:
    """One batch ready for the forward: the slices' identities (their HU pixels dropped),
    the model input and the measures."""

    slices: list[tuple[SliceHU, float | None, float]]
    batch: np.ndarray
    measures: list[float | None]


#: a per-slice measure (the lung gate's `lung_fraction`): of the HU pixels and the body box
#: the crop uses, found once for both
SliceMeasure = Callable[[np.ndarray, Box | None], float]


def prepare_paths(card: ModelCard, paths: Sequence[Path], measure: SliceMeasure | None) -> Prepared:
    """Read, decode and preprocess one batch; raises SliceReadError for a bad file."""
    read = [read_slice(p) for p in paths]
    hu = [s.hu for s, _, _ in read]
    boxes = [body_box(a) for a in hu] if measure or card.preprocessing.body_crop else None
    measures: list[float | None] = [None] * len(hu)
    if measure is not None and boxes is not None:
        measures = [float(measure(a, box)) for a, box in zip(hu, boxes, strict=True)]
    slim = [(replace(s, hu=NO_PIXELS), position, n) for s, position, n in read]
    return Prepared(slim, prepare_for_card(card, hu, boxes), measures)


def _one_thread() -> None:
    """Each decoder is one core's worth: torch's resize must not fan out on all of them."""
    import torch

    torch.set_num_threads(1)


class DecoderPool:
    """N spawned processes running `prepare_paths` for one model card."""

    def __init__(self, card: ModelCard, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"a decoder pool needs at least one process, got {processes}")
        self.card = card
        self.processes = processes
        self._pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_one_thread,
        )

    def submit(self, paths: Sequence[Path], measure: SliceMeasure | None) -> Future[Prepared]:
        """`measure` must be a module-level function (it travels by name)."""
        return self._pool.submit(prepare_paths, self.card, list(paths), measure)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
