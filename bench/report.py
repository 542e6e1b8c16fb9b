"""SR build benchmark: a 600-slice study reported with its top-k key slices, against the naive
report that references every analysed slice (what makes highdicom slow on large studies).

    .venv/bin/python bench/report.py [--slices 600]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread
from pydicom.data import get_testdata_file

from scpnode.aggregate import aggregate
from scpnode.domain import ModelIdentity, NodeIdentity, SliceScore
from scpnode.report import build_result_sr, sr_to_bytes
from scpnode.uids import derive_uid, node_device_uid

MODEL = ModelIdentity("ctnet10", "bench", "ef" * 32, synthetic=True)
NODE = NodeIdentity("SCPNODE", node_device_uid("SCPNODE"))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def evidence(n: int) -> list:
    base = dcmread(get_testdata_file("CT_small.dcm", download=False), stop_before_pixels=True)
    out = []
    for i in range(n):
        ds = base.copy()
        ds.SOPInstanceUID = derive_uid("bench-slice", str(i))
        out.append(ds)
    return out


def build(slices: list, key: int) -> float:
    scores = [
        SliceScore(ds.SOPInstanceUID, ds.SOPClassUID, i, float(i), (i * 37 % 100) / 100)
        for i, ds in enumerate(slices)
    ]
    started = time.perf_counter()
    result = aggregate(scores, threshold=0.5, key_slices=key)
    keys = {s.sop_instance_uid for s in result.key_slices}
    sr = build_result_sr(
        evidence=[ds for ds in slices if ds.SOPInstanceUID in keys],
        result=result,
        model=MODEL,
        node=NODE,
        series_instance_uid=derive_uid("bench-series"),
        sop_instance_uid=derive_uid("bench-sr", str(key)),
        instance_number=1,
        now=NOW,
    )
    sr_to_bytes(sr)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=600)
    args = parser.parse_args()
    slices = evidence(args.slices)
    build(slices, 5)  # warm up imports and highdicom's tables
    ours = min(build(slices, 5) for _ in range(3))
    top10 = min(build(slices, 10) for _ in range(3))
    print(f"{args.slices}-slice study, SR with top 5 key slices:  {ours * 1000:7.1f} ms")
    print(f"{args.slices}-slice study, SR with top 10 key slices: {top10 * 1000:7.1f} ms")
    per_slice = (top10 - ours) / 5
    naive = ours + per_slice * (args.slices - 5)
    print(
        f"every slice referenced (extrapolated from the per-slice cost {per_slice * 1000:.1f} "
        f"ms): {naive:7.1f} s  -> ours is {naive / ours:.0f}x faster"
    )


if __name__ == "__main__":
    main()
