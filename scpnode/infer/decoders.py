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
from dataclasses import dataclass

import numpy as np

from model_zoo.card import ModelCard
from model_zoo.preprocess import UNKNOWN, Box, body_box
from scpnode.infer.dicom_slices import NO_PIXELS, SliceHU, SliceSource, read_pixels
from scpnode.infer.engine import prepare_one_for_card

__all__ = ["NO_PIXELS", "DecoderPool", "Prepared", "SliceMeasure", "prepare_paths"]


@dataclass(frozen=True)
class Prepared:
    """One batch ready for the forward: the slices' identities (their HU pixels dropped),
    the model input and the measures."""

    slices: list[tuple[SliceHU, float | None, float]]
    batch: np.ndarray
    measures: list[float | None]


#: a per-slice measure (the lung gate's `lung_fraction`): of the pixels, the body box the
#: crop uses (found once for both) and the pixels' offset to HU (`HUPixels`)
SliceMeasure = Callable[[np.ndarray, Box | None, float], float]


def prepare_paths(
    card: ModelCard, paths: Sequence[SliceSource], measure: SliceMeasure | None
) -> Prepared:
    """Read, decode and preprocess one batch; raises SliceReadError for a bad file.

    One slice at a time: its pixels are dropped before the next slice is read, so the
    allocator hands the same memory back. A batch of them alive at once took fresh pages
    from the kernel for every slice, and the page faults cost more than the decoding (0.4 ms
    a slice on a VM). A spooled slice usually stays stored integers (`HUPixels`).
    """
    height, width = card.input_size
    batch = np.empty((len(paths), 3, height, width), dtype=np.float32)
    slices: list[tuple[SliceHU, float | None, float]] = []
    measures: list[float | None] = []
    crop = measure is not None or card.preprocessing.body_crop
    for i, source in enumerate(paths):
        s, position, number, pixels = read_pixels(source)
        values, offset = pixels.values, pixels.offset
        box = body_box(values, offset=offset) if crop else None
        measures.append(None if measure is None else float(measure(values, box, offset)))
        prepare_one_for_card(card, values, batch[i], box if crop else UNKNOWN, offset)
        slices.append((s, position, number))
    return Prepared(slices, batch, measures)


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

    def submit(
        self, paths: Sequence[SliceSource], measure: SliceMeasure | None
    ) -> Future[Prepared]:
        """`measure` must be a module-level function (it travels by name)."""
        return self._pool.submit(prepare_paths, self.card, list(paths), measure)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
