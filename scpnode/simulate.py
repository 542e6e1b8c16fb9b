"""`scpnode simulate`: a CT scanner that auto-forwards synthetic studies, one association per
series, in the scanner's own slice order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scpnode.send import Peer, store_datasets
from scpnode.synth import StudySpec, iter_study_datasets, study_specs


@dataclass
class SimulationReport:
    specs: list[StudySpec] = field(default_factory=list)
    statuses: dict[str, list[int | None]] = field(default_factory=dict)  # per series

    @property
    def study_uids(self) -> list[str]:
        return [s.study_instance_uid for s in self.specs]

    @property
    def truth(self) -> dict[str, str]:
        return {s.study_instance_uid: s.label.value for s in self.specs}

    @property
    def all_stored(self) -> bool:
        return all(status == 0 for values in self.statuses.values() for status in values)

    def lines(self) -> list[str]:
        out = []
        for spec in self.specs:
            sent = self.statuses.get(spec.series_instance_uid, [])
            ok = sum(1 for s in sent if s == 0)
            out.append(
                f"sent study {spec.study_instance_uid} ({spec.label.value}, {spec.finding}): "
                f"{ok}/{len(sent)} instances stored"
            )
        return out


def simulate(
    host: str,
    port: int,
    *,
    called_aet: str,
    calling_aet: str,
    studies: int = 2,
    slices: int = 60,
    covid_fraction: float = 0.5,
    seed: int = 0,
    specs: Sequence[StudySpec] | None = None,
) -> SimulationReport:
    """Send each study's series over its own association; returns every C-STORE status."""
    chosen = (
        list(specs)
        if specs is not None
        else study_specs(studies=studies, slices=slices, covid_fraction=covid_fraction, seed=seed)
    )
    report = SimulationReport(specs=chosen)
    peer = Peer(called_aet, host, port)
    for spec in chosen:
        datasets = list(iter_study_datasets(spec))
        report.statuses[spec.series_instance_uid] = store_datasets(datasets, peer, calling_aet)
    return report
