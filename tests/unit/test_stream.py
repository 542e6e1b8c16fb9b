"""Batch-by-batch scoring (scpnode/infer/stream.py) on real DICOM files and a real model:
the same scores and order as reading the whole series, a bounded number of decoded slices
alive at a time, and a broken file reported like `read_slices_hu` reports it; on one torch
thread (the producer thread) and on two (scoring lanes)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from scpnode.infer import decoders, engine, stream
from scpnode.infer.dicom_slices import SliceReadError, read_pixels, read_slices_hu
from scpnode.infer.engine import load_model, predict
from tests.unit.test_dicom_slices import hu_image, write_ct
from tests.unit.test_engine import weights  # noqa: F401 - the fixture


@pytest.fixture(params=[1, 2], ids=["producer-thread", "two-lanes"])
def torch_threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """The calling thread's torch threads: 1 takes the producer-thread path, 2 the lanes."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)


def series(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        paths.append(folder / f"s{i}.dcm")
        write_ct(paths[-1], hu_image(i), z=100.0 - 2.5 * i, number=i + 1)
    random.Random(7).shuffle(paths)
    return paths


def test_same_scores_and_order_as_the_whole_series(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    torch_threads: int,
) -> None:
    model = load_model("ctnet10", weights, "cpu")
    assert stream.cpu_lanes(model, None, 3) == torch_threads
    paths = series(tmp_path, 11)
    whole = read_slices_hu(paths)
    expected = predict(model, [s.hu for s in whole], batch_size=4)
    got = stream.score_series(
        model, paths, batch_size=4, measure=lambda hu, _box, offset: float(hu.mean()) + offset
    )
    assert [s.sop_instance_uid for s in got] == [s.sop_instance_uid for s in whole]
    assert [s.z for s in got] == [s.z for s in whole]
    np.testing.assert_allclose([s.probability for s in got], expected, rtol=1e-5, atol=1e-6)
    assert [s.measure for s in got] == pytest.approx([float(s.hu.mean()) for s in whole])


def test_at_most_a_few_batches_are_decoded_at_once(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    torch_threads: int,
) -> None:
    model = load_model("ctnet10", weights, "cpu")
    paths = series(tmp_path, 24)
    decoded, scored, most_ahead = [0], [0], [0]

    def counting_read(path: Path):  # type: ignore[no-untyped-def]
        decoded[0] += 1
        most_ahead[0] = max(most_ahead[0], decoded[0] - scored[0])
        return read_pixels(path)

    def counting_score(model, batch):  # type: ignore[no-untyped-def]
        scored[0] += len(batch)
        return engine.score(model, batch)

    monkeypatch.setattr(decoders, "read_pixels", counting_read)
    monkeypatch.setattr(stream, "score", counting_score)
    got = stream.score_series(model, paths, batch_size=3, prefetch=1)
    assert len(got) == 24 and scored[0] == 24
    # one batch just taken for scoring, one waiting in the queue, one being decoded (or
    # one batch per lane): never the series
    assert most_ahead[0] <= 3 * 3, f"{most_ahead[0]} slices decoded ahead of the model"


def test_a_broken_file_raises_and_leaves_no_thread(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    torch_threads: int,
) -> None:
    model = load_model("ctnet10", weights, "cpu")
    paths = series(tmp_path, 9)
    (tmp_path / "s4.dcm").write_bytes(b"not dicom at all")
    (tmp_path / "s7.dcm").write_bytes(b"broken as well, in a later batch")
    with pytest.raises(SliceReadError) as caught:
        stream.score_series(model, sorted(paths), batch_size=2)
    assert caught.value.path.name == "s4.dcm"  # the first in input order, whoever read it
    assert not [t for t in threading.enumerate()
                if t.name == "slice-decoder" or t.name.startswith("scoring-lane")]  # fmt: skip
    assert torch.get_num_threads() == torch_threads


def test_lanes_score_on_one_thread_each_and_leave_the_thread_counts_as_they_were(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lane's forward on one torch thread does not wait for the other cores; torch makes
    the last count set the default of threads started later, so the caller's comes back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = load_model("ctnet10", weights, "cpu")
        paths = series(tmp_path, 8)
        seen: list[tuple[str, int]] = []

        def scoring(model, batch):  # type: ignore[no-untyped-def]
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return engine.score(model, batch)

        monkeypatch.setattr(stream, "score", scoring)
        got = stream.score_series(model, paths, batch_size=2)
        assert len(got) == 8 and len(seen) == 4
        assert {n for _, n in seen} == {1}
        assert all(name.startswith("scoring-lane-") for name, _ in seen)
        assert torch.get_num_threads() == 2
        started_later: list[int] = []
        later = threading.Thread(target=lambda: started_later.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert started_later == [2]
    finally:
        torch.set_num_threads(before)


def test_one_batch_or_decoder_processes_take_no_lanes(weights: Path) -> None:  # noqa: F811
    model = load_model("ctnet10", weights, "cpu")
    threads = torch.get_num_threads()
    assert stream.cpu_lanes(model, None, 1) == 1
    assert stream.cpu_lanes(model, None, 100) == threads
    assert stream.cpu_lanes(model, object(), 100) == 1  # type: ignore[arg-type]


def test_decoder_processes_give_the_same_scores_and_errors(tmp_path: Path, weights: Path) -> None:  # noqa: F811
    """`model.decode_processes`: spawned processes read, decode and preprocess; the numbers
    and the SliceReadError (path and reason) are those of the in-thread path."""
    from model_zoo.preprocess import lung_fraction

    model = load_model("ctnet10", weights, "cpu")
    paths = series(tmp_path, 10)
    pool = decoders.DecoderPool(model.card, 2)
    try:
        alone = stream.score_series(model, paths, batch_size=3, measure=lung_fraction)
        pooled = stream.score_series(model, paths, batch_size=3, measure=lung_fraction,
                                     decoders=pool)  # fmt: skip
        assert [s.sop_instance_uid for s in pooled] == [s.sop_instance_uid for s in alone]
        np.testing.assert_array_equal([s.probability for s in pooled],
                                      [s.probability for s in alone])  # fmt: skip
        assert [s.measure for s in pooled] == [s.measure for s in alone]
        assert [s.z for s in pooled] == [s.z for s in alone]
        (tmp_path / "s4.dcm").write_bytes(b"not dicom at all")
        with pytest.raises(SliceReadError) as caught:
            stream.score_series(model, sorted(paths), batch_size=2, decoders=pool)
        assert caught.value.path.name == "s4.dcm" and "not a readable DICOM" in caught.value.reason
        good = [p for p in paths if p.name != "s4.dcm"]
        assert len(stream.score_series(model, good, batch_size=4, decoders=pool)) == 9
    finally:
        pool.close()
