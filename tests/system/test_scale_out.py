"""Scale-out on a real PostgreSQL server: two SCP nodes (`serve` with no local workers) and
three `scpnode worker` processes share one database and one spool; Orthanc is the PACS.

Twenty studies arrive at both nodes — some split between them mid-study, the rest spread —
and one worker is killed (kill -9) in the middle of a job. Every study must be analysed once,
the dead worker's job taken over when its lease runs out, and Orthanc must hold exactly one SR
per study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from scpnode.audit_views import list_studies
from scpnode.db import Database
from scpnode.db.models import JobRow, ResultRow, StudyRow
from scpnode.send import Outcome, Peer, echo
from scpnode.synth import make_study_spec, write_study
from tests.conftest import need
from tests.system.peers import PEER_ENV, Orthanc, free_port, wait_until
from tests.system.test_crash import srs_in_orthanc

pytestmark = pytest.mark.system
STUDIES, SPLIT, SLICES, BIG_SLICES, WORKERS, LEASE_S = 20, 8, 12, 96, 3, 3.0
FINAL = {"delivered", "failed", "expired", "ignored", "not_analysed"}


def shared_config(root: Path, db_url: str, pacs: Orthanc) -> Path:
    """One file for every process of the deployment; each SCP node sets its own port by env."""
    config = root / "scpnode.toml"
    config.write_text(f"""
[node]
host = "127.0.0.1"
[storage]
spool_dir = "shared/spool"
min_free_mb = 64
[database]
url = "{db_url}"
[study]
association_grace_s = 1.0
idle_timeout_s = 30
[model]
allow_synthetic = true
[worker]
processes = 0
lease_s = {LEASE_S}
poll_interval_s = 0.2
# the big study's job must last long enough to be killed in: with slices scored while they
# arrive it is over in ~0.2 s, and the kill could land after it
prescore = false
[delivery]
retry_initial_s = 1
retry_max_s = 2
[[destinations]]
name = "pacs"
ae_title = "{pacs.aet}"
host = "127.0.0.1"
port = {pacs.dicom_port}
[web]
enabled = false
""")
    return config


class Procs:
    """The deployment's processes, each with its log; stopped by PID at the end."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *command: str, env: dict[str, str] | None = None) -> int:
        log = (self.config.parent / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "scpnode", *command, "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.procs[name] = proc
        return proc.pid

    def alive(self, name: str) -> bool:
        if self.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited:\n" + self.log(name)[-3000:])
        return True

    def log(self, name: str) -> str:
        return (self.config.parent / f"{name}.log").read_text(errors="replace")

    def stop_all(self, timeout_s: float = 60) -> dict[str, int]:
        """SIGTERM to all (warm stop: a second one would be a cold stop), then wait, bounded."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {name: int(proc.returncode) for name, proc in self.procs.items()}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    need("Orthanc")
    server = Orthanc(tmp_path_factory.mktemp("orthanc-scale"))
    server.start({})
    yield server
    server.stop()


def make_studies(root: Path) -> tuple[str, list[tuple[str, list[Path]]]]:
    """The big study (the one whose worker dies), then 19 small ones; files in send order."""
    big = make_study_spec(800, covid=True, n_slices=BIG_SLICES)
    studies = [(big.study_instance_uid, write_study(big, root))]
    for i in range(1, STUDIES):
        spec = make_study_spec(800 + i, n_slices=SLICES)
        studies.append((spec.study_instance_uid, write_study(spec, root)))
    return big.study_instance_uid, studies


def storescu(port: int, files: list[Path]) -> int:
    done = subprocess.run([need("storescu"), "-aet", "CT01", "-aec", "SCPNODE", "127.0.0.1",
                           str(port), *map(str, files)], env=PEER_ENV, capture_output=True,
                          timeout=120)  # fmt: skip
    return done.returncode


def sends(studies: list[tuple[str, list[Path]]], ports: tuple[int, int]) -> list[tuple[int, list]]:
    """Study 0 to node A; SPLIT studies half to A, half to B (two associations at once);
    the rest alternately to A and B."""
    plan: list[tuple[int, list[Path]]] = [(ports[0], studies[0][1])]
    for i, (_uid, files) in enumerate(studies[1:], start=1):
        if i <= SPLIT:
            half = len(files) // 2
            plan += [(ports[0], files[:half]), (ports[1], files[half:])]
        else:
            plan.append((ports[i % 2], files))
    return plan


def running_owner(db: Database, study_uid: str) -> str | None:
    with db.session() as session:
        return session.scalar(
            select(JobRow.lease_owner)
            .join(StudyRow, StudyRow.id == JobRow.study_id)
            .where(StudyRow.study_instance_uid == study_uid, JobRow.state == "running")
        )


def job_attempts(db: Database, study_uid: str) -> int:
    with db.session() as session:
        return int(session.scalar(
            select(func.max(JobRow.attempts)).join(StudyRow, StudyRow.id == JobRow.study_id)
            .where(StudyRow.study_instance_uid == study_uid)) or 0)  # fmt: skip


def all_settled(db: Database, uids: set[str]) -> list[dict[str, Any]] | None:
    with db.snapshot() as session:  # while the nodes write
        rows = [r for r in list_studies(session) if r["study_instance_uid"] in uids]
    return rows if len(rows) == len(uids) and all(r["status"] in FINAL for r in rows) else None


def test_two_nodes_three_workers_one_database(
    tmp_path: Path, pg_url: str, orthanc: Orthanc, demo_weights: Path
) -> None:
    started = time.monotonic()
    big_uid, studies = make_studies(tmp_path / "data")
    uids = {uid for uid, _ in studies}
    config = shared_config(tmp_path, pg_url, orthanc)
    ports = (free_port(), free_port())
    procs = Procs(config)
    db = Database(pg_url)
    try:
        for n, port in enumerate(ports):
            procs.start(f"scp{n}", "serve", env={"SCPNODE_NODE__PORT": str(port)})
        workers = {procs.start(f"worker{n}", "worker"): f"worker{n}" for n in range(WORKERS)}
        for n, port in enumerate(ports):
            wait_until(lambda n=n, port=port: procs.alive(f"scp{n}") and echo(
                Peer("SCPNODE", "127.0.0.1", port), "PROBE", 2).outcome == Outcome.DELIVERED,
                120, f"SCP node {n} to answer C-ECHO")  # fmt: skip
        up_at = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = pool.map(lambda job: storescu(*job), sends(studies, ports))
            owner = wait_until(lambda: running_owner(db, big_uid), 120,
                               "a worker to start on the big study", interval_s=0.05)  # fmt: skip
            victim = int(owner.rpartition(":")[2])
            assert victim in workers, (owner, workers)
            os.kill(victim, signal.SIGKILL)  # mid-job: its lease stays in the database
            killed_at = time.monotonic()
            wait_until(lambda: job_attempts(db, big_uid) >= 2, 60, "the job to be taken over",
                       interval_s=0.05)  # fmt: skip
            takeover_s = time.monotonic() - killed_at
            assert all(code == 0 for code in results)
        sent_at = time.monotonic()
        rows = wait_until(lambda: all_settled(db, uids), 180, "every study to settle")
        settled_at = time.monotonic()
        with db.session() as session:
            uid = select(StudyRow.study_instance_uid)
            results_per_study = Counter(
                session.scalars(uid.join(ResultRow, ResultRow.study_id == StudyRow.id))
            )
            jobs_per_study = Counter(
                session.scalars(uid.join(JobRow, JobRow.study_id == StudyRow.id))
            )
        srs = {uid: srs_in_orthanc(orthanc, uid) for uid in uids}
        duplicates = sum(n - 1 for n in results_per_study.values()) + sum(
            max(0, len(v) - 1) for v in srs.values()
        )
        assert {r["status"] for r in rows} == {"delivered"}, Counter(r["status"] for r in rows)
        assert set(results_per_study.values()) == {1} and len(results_per_study) == STUDIES
        assert set(jobs_per_study.values()) == {1}, jobs_per_study.most_common(3)
        assert all(srs[r["study_instance_uid"]] == [r["sr_sop_instance_uid"]] for r in rows)
        assert next(r for r in rows if r["study_instance_uid"] == big_uid)["received_instances"] \
            == BIG_SLICES  # fmt: skip
        split = [r for r in rows if len(r["deliveries"]) and r["received_instances"] == SLICES]
        assert len(split) == STUDIES - 1
        assert takeover_s <= LEASE_S + 5, takeover_s
        assert duplicates == 0
        verify = [sys.executable, "-m", "scpnode", "audit", "verify", "--config", str(config)]
        check = subprocess.run(verify, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        print(f"\nscale-out on PostgreSQL: {STUDIES} studies ({SPLIT} split across both SCP "
              f"nodes), 2 SCP nodes, {WORKERS} workers (1 killed mid-job), duplicates "
              f"{duplicates}, takeover {takeover_s:.1f} s after kill -9 (lease {LEASE_S:g} s), "
              f"wall {time.monotonic() - started:.0f} s (nodes up {up_at - started:.0f} s, "
              f"sent {sent_at - up_at:.0f} s, all delivered {settled_at - up_at:.0f} s after "
              f"the first association)")  # fmt: skip
    finally:
        codes = procs.stop_all()
        db.dispose()
    assert all(code == 0 for name, code in codes.items() if (name in workers.values()
               and procs.procs[name].pid != victim) or name.startswith("scp")), codes  # fmt: skip
