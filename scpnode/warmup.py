"""Pay the first study's one-time costs when a worker starts, not on a radiologist's study.

Measured (bench/pipeline.py, 300-slice studies, 2-core CPU): the first study after start-up
took 4.25 s from the last slice to the SR at the PACS, the next ones 2.9–3.3 s. Building the
first SR alone took 0.52 s against 0.11 s after (highdicom's and pydicom's lazily built
tables); the first decode and forward of a batch shape also pay once. A throwaway study of
synthetic slices goes through the same decode → score → aggregate → SR-build path here;
nothing is stored, sent or audited.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from scpnode.aggregate import aggregate
from scpnode.domain import NodeIdentity, SliceScore
from scpnode.infer.decoders import DecoderPool
from scpnode.infer.engine import LoadedModel
from scpnode.infer.stream import cpu_lanes, score_series
from scpnode.report import build_result_sr, sr_to_bytes
from scpnode.synth import make_study_spec, write_study
from scpnode.uids import derive_uid

log = logging.getLogger(__name__)


def warm_up(
    model: LoadedModel, node: NodeIdentity, batch_size: int, decoders: DecoderPool | None = None
) -> float:
    """Run one synthetic study of `batch_size` slices through scoring and SR building (and
    the decoder processes, which start here); returns the seconds it took. Never raises: a
    failed warm-up only costs the speed-up."""
    import pydicom

    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="scpnode-warmup-") as tmp:
            # two batches where a CPU scores in lanes: a lane's one-thread forward is built
            # apart from the main thread's
            batches = min(2, cpu_lanes(model, decoders, 2))
            n_slices = max(1, batch_size) * batches
            paths = write_study(make_study_spec(0, n_slices=n_slices), Path(tmp))
            scored = score_series(model, paths, batch_size=batch_size, decoders=decoders)
            scores = [SliceScore(s.sop_instance_uid, s.sop_class_uid, i, s.z, s.probability)
                      for i, s in enumerate(scored)]  # fmt: skip
            result = aggregate(scores, threshold=0.5)
            keys = {k.sop_instance_uid for k in result.key_slices}
            evidence = [pydicom.dcmread(s.path, stop_before_pixels=True)
                        for s in scored if s.sop_instance_uid in keys]  # fmt: skip
            sr = build_result_sr(
                evidence=evidence, result=result, model=model.identity, node=node,
                series_instance_uid=derive_uid("warm-up series"),
                sop_instance_uid=derive_uid("warm-up sr"), instance_number=1,
            )  # fmt: skip
            sr_to_bytes(sr)
    except Exception:
        log.warning("warm-up failed; the first study pays its one-time costs", exc_info=True)
    return time.perf_counter() - started
