"""`scpnode demo`: the whole node on synthetic studies, with nothing but this repository.

A temporary spool and SQLite file, a PACS stand-in on loopback, the real SCP and worker
processes, and a simulated scanner sending studies with known truth over DICOM. Exit 0 only
if every study's SR reached the PACS.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom

from scpnode.audit_views import list_studies
from scpnode.config import load_settings
from scpnode.node import Node
from scpnode.pacs_standin import PacsStandIn
from scpnode.simulate import simulate
from scpnode.sr_text import sr_lines
from scpnode.synth import StudySpec, make_study_spec, study_seed

TERMINAL = {"delivered", "failed", "expired", "not_analysed", "ignored", "reported"}
NODE_AET, PACS_AET = "SCPNODE", "DEMOPACS"


def demo_specs(studies: int, slices: int, seed: int) -> list[StudySpec]:
    """A COVID-like study and a normal one first, then a random mix (other findings too)."""
    specs = [
        make_study_spec(study_seed(seed, 0), covid=True, n_slices=slices),
        make_study_spec(study_seed(seed, 1), finding="normal", n_slices=slices),
    ]
    specs += [make_study_spec(study_seed(seed, i), n_slices=slices) for i in range(2, studies)]
    return specs[:studies]


def write_demo_config(workdir: Path, pacs_port: int) -> Path:
    config = workdir / "node.toml"
    config.write_text(f"""\
[node]
ae_title = "{NODE_AET}"
host = "127.0.0.1"

[storage]
spool_dir = "spool"
min_free_mb = 64

[database]
url = "sqlite:///scpnode.db"

[study]
association_grace_s = 1.0
idle_timeout_s = 30

[model]
allow_synthetic = true   # the demo runs on synthetic weights and a stand-in PACS

[worker]
poll_interval_s = 0.2

[delivery]
retry_initial_s = 1

[[destinations]]
name = "demo-pacs"
ae_title = "{PACS_AET}"
host = "127.0.0.1"
port = {pacs_port}

[web]
enabled = false
""")
    return config


def run_demo(*, studies: int = 2, slices: int = 48, seed: int = 7, keep: Path | None = None) -> int:
    workdir = keep or Path(tempfile.mkdtemp(prefix="scpnode-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pacs = PacsStandIn(workdir / "pacs", PACS_AET)
    pacs_port = pacs.start()
    settings = load_settings(write_demo_config(workdir, pacs_port))
    node = Node(settings)
    try:
        node.prepare()
        port = node.start(port=0)
        print(
            f"node {NODE_AET} listening on 127.0.0.1:{port}; PACS stand-in {PACS_AET} on "
            f"127.0.0.1:{pacs_port}; work folder {workdir}"
        )
        sent = simulate(
            "127.0.0.1",
            port,
            called_aet=NODE_AET,
            calling_aet="DEMOSCANNER",
            specs=demo_specs(studies, slices, seed),
        )
        for line in sent.lines():
            print(line)
        rows = _wait_for_reports(node, sent.study_uids, timeout_s=120 + 2.0 * studies * slices)
    finally:
        node.stop()
        pacs.stop()
    ok = _print_outcome(rows, sent.truth, pacs)
    if keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def _wait_for_reports(node: Node, uids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        with node.db.snapshot() as session:
            rows = list_studies(session, uids)
        done = len(rows) == len(uids) and all(r["status"] in TERMINAL for r in rows)
        pending = any(d["status"] == "pending" for r in rows for d in r["deliveries"])
        if (done and not pending) or time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def _print_outcome(rows: list[dict[str, Any]], truth: dict[str, str], pacs: PacsStandIn) -> bool:
    at_pacs = {p.stem: p for p in pacs.received}
    ok = bool(rows)
    print(
        "\nstudy                                               truth        decision     "
        "probability  status     SR at PACS"
    )
    for row in rows:
        sr_uid = row["sr_sop_instance_uid"]
        arrived = sr_uid in at_pacs
        ok = ok and arrived
        print(
            f"{row['study_instance_uid']:<50}  {truth.get(row['study_instance_uid'], '?'):<11}  "
            f"{row['label'] or '-':<11}  {_p(row['probability']):<11}  {row['status']:<9}  "
            f"{'yes' if arrived else 'NO'}"
        )
    for row in rows:
        path = at_pacs.get(row["sr_sop_instance_uid"] or "")
        if path is not None:
            print(f"\nSR received by the PACS for study {row['study_instance_uid']} ({path}):")
            for line in sr_lines(pydicom.dcmread(path)):
                print("  " + line)
    print("\nRESULT: every SR reached the PACS" if ok else "\nRESULT: some SRs did not arrive")
    return ok


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
