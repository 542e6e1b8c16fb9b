"""Console benchmark: a generated audit database of 100,000 studies, then the console's pages,
exports, probes and the CLI's study query, timed through the real ASGI app.

    .venv/bin/python bench/web.py [--studies 100000] [--db PATH] [--runs 3]

The database has what a node would have written (associations, instances, jobs, results,
slice scores for every 100th study, SRs, deliveries with attempts, a valid hash-chained audit
log of six events per study), spread over 60 days and 20 scanners. A page should answer in
well under a second on 100,000 studies: every query is indexed or bounded by a page. Prints
the median of `--runs` requests (the first, cold one included in the runs) per line.
`/readyz` answers 503 here on purpose: the benchmark has no model weights, and says so.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert
from starlette.testclient import TestClient

from scpnode.audit import GENESIS, event_hash
from scpnode.audit_views import StudyFilter, count_studies, select_study_ids, studies_by_id
from scpnode.clock import utcnow
from scpnode.config import load_settings
from scpnode.db import Database
from scpnode.db.models import (
    AssociationRow,
    AuditEventRow,
    ChainHeadRow,
    DeliveryAttemptRow,
    DeliveryRow,
    InstanceRow,
    JobRow,
    ResultRow,
    SliceScoreRow,
    SrRow,
    StudyRow,
)
from scpnode.web.app import create_app
from scpnode.web.users import Role, add_user

PASSWORD = "bench password 123"
DAYS = 60
INSTANCES = 3  # per study: enough for the grouped counts; a page's cost does not grow with it
BATCH = 20_000


def _state(i: int) -> str:
    r = i % 100
    if r < 88:
        return "delivered"
    return {
        88: "failed",
        89: "failed",
        90: "failed",
        91: "ignored",
        92: "ignored",
        93: "not_analysed",
        94: "not_analysed",
        95: "reported",
        96: "expired",
        97: "queued",
        98: "processing",
        99: "receiving",
    }[r]


def generate(db: Database, n: int, now: datetime) -> None:
    """Bulk-insert `n` studies and everything around them (a few seconds per 10,000)."""
    rng = random.Random(7)
    step = timedelta(days=DAYS) / n
    rows: dict[Any, list[dict[str, Any]]] = {
        t: []
        for t in (
            AssociationRow,
            StudyRow,
            InstanceRow,
            JobRow,
            ResultRow,
            SliceScoreRow,
            SrRow,
            DeliveryRow,
            DeliveryAttemptRow,
            AuditEventRow,
        )
    }
    seq, prev = 0, GENESIS
    result_id = sr_id = 0

    def event(ts: datetime, kind: str, uid: str, assoc: int | None, **detail: Any) -> None:
        nonlocal seq, prev
        seq += 1
        row = SimpleNamespace(
            seq=seq,
            ts=ts,
            kind=kind,
            study_instance_uid=uid,
            association_id=assoc,
            prev_hash=prev,
            detail=json.dumps(detail, sort_keys=True),
        )
        row.hash = event_hash(row)  # type: ignore[arg-type]
        prev = row.hash
        rows[AuditEventRow].append(vars(row))

    for i in range(n):
        sid, uid, aet = i + 1, f"2.25.{10**20 + i}", f"CT{i % 20:02d}"
        t0 = now - (n - i) * step
        state = _state(i)
        rows[AssociationRow].append(
            dict(
                id=sid,
                calling_aet=aet,
                called_aet="SCPNODE",
                peer_host="10.0.0.1",
                peer_port=4000,
                started_at=t0,
                ended_at=t0 + timedelta(seconds=20),
                outcome="aborted" if i % 500 == 0 else "released",
                instances=INSTANCES,
                failures=0,
                bytes=INSTANCES * 530_000,
            )
        )
        rows[StudyRow].append(
            dict(
                id=sid,
                study_instance_uid=uid,
                state=state,
                first_calling_aet=aet,
                first_received_at=t0,
                last_received_at=t0 + timedelta(seconds=20),
                state_changed_at=t0 + timedelta(seconds=60),
                reason="not a chest CT" if state == "ignored" else None,
            )
        )
        series = f"{uid}.1"
        for k in range(INSTANCES):
            rows[InstanceRow].append(
                dict(
                    study_id=sid,
                    association_id=sid,
                    series_instance_uid=series,
                    sop_instance_uid=f"{series}.{k}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    calling_aet=aet,
                    path="-",
                    bytes=530_000,
                    sha256="0" * 64,
                    received_at=t0,
                    modality="CT",
                )
            )
        event(t0, "association_accepted", uid, sid, calling_aet=aet)
        event(t0 + timedelta(seconds=20), "instance_stored", uid, sid, series={series: INSTANCES})
        event(t0 + timedelta(seconds=21), "study_complete", uid, None, reason="all received")
        if state in ("receiving", "queued", "ignored"):
            continue
        rows[JobRow].append(
            dict(
                id=sid,
                study_id=sid,
                state="done",
                created_at=t0,
                attempts=1,
                finished_at=t0 + timedelta(seconds=40),
            )
        )
        if state == "processing":
            continue
        result_id += 1
        p = rng.betavariate(0.6, 0.6)
        analysed = state != "not_analysed"
        rows[ResultRow].append(
            dict(
                id=result_id,
                study_id=sid,
                job_id=sid,
                created_at=t0 + timedelta(seconds=40),
                outcome="analysed" if analysed else "not_analysed",
                series_instance_uid=series,
                input_fingerprint="f" * 64,
                model_name="ctnet10",
                model_version="bench",
                weights_sha256="a" * 64,
                threshold=0.5 if analysed else None,
                threshold_source="card",
                aggregation="mean of top 10%" if analysed else None,
                probability=p if analysed else None,
                label=("covid19" if p >= 0.5 else "non_covid19") if analysed else None,
                n_slices=64,
                device="cpu",
                inference_s=1.5,
                reason=None if analysed else "localizers only",
            )
        )
        rows[StudyRow][-1]["current_result_id"] = result_id
        if analysed and i % 100 == 0:
            rows[SliceScoreRow] += [
                dict(
                    result_id=result_id,
                    sop_instance_uid=f"{series}.{k % INSTANCES}",
                    slice_index=k,
                    z=-150.0 + 5 * k,
                    probability=min(1.0, p * (1 - abs(k - 32) / 40)),
                )
                for k in range(64)
            ]
        event(t0 + timedelta(seconds=40), "study_result", uid, None, probability=p)
        sr_id += 1
        sop = f"{uid}.9.{sr_id}"
        rows[SrRow].append(
            dict(
                id=sr_id,
                study_id=sid,
                result_id=result_id,
                sop_instance_uid=sop,
                series_instance_uid=f"{uid}.9",
                kind="result" if analysed else "not_analysed",
                path=f"/nonexistent/{sop}.dcm",
                sha256="b" * 64,
                bytes=9000,
                created_at=t0 + timedelta(seconds=41),
            )
        )
        event(t0 + timedelta(seconds=41), "sr_created", uid, None, sr_sop_instance_uid=sop)
        d_state = {"reported": "pending", "failed": "failed", "expired": "expired"}.get(
            state, "delivered"
        )
        done = t0 + timedelta(seconds=45 + rng.random() * 60)
        rows[DeliveryRow].append(
            dict(
                id=sr_id,
                sr_id=sr_id,
                study_id=sid,
                destination="pacs",
                ae_title="PACS",
                host="10.0.0.2",
                port=104,
                state=d_state,
                attempts=1,
                created_at=t0,
                expires_at=t0 + timedelta(hours=24),
                next_attempt_at=done,
                delivered_at=done if d_state == "delivered" else None,
                last_status=0 if d_state == "delivered" else 0xC000,
                last_error=None if d_state == "delivered" else "refused: 0xC000",
            )
        )
        rows[DeliveryAttemptRow].append(
            dict(
                delivery_id=sr_id,
                started_at=done,
                ended_at=done,
                outcome="delivered" if d_state == "delivered" else "permanent",
                dicom_status=0 if d_state == "delivered" else 0xC000,
            )
        )
        event(
            done,
            "delivered" if d_state == "delivered" else "delivery_failed",
            uid,
            None,
            destination="pacs",
        )
    with db.session() as session:
        for table, found in rows.items():
            for start in range(0, len(found), BATCH):
                session.execute(insert(table), found[start : start + BATCH])
        session.merge(ChainHeadRow(id=1, seq=seq, head_hash=prev))


def timed(fn: Any, runs: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=None, help="reuse or keep this SQLite file")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scpnode-bench-web-"))
    db_path = args.db or work / "audit.db"
    (work / "spool").mkdir()
    (work / "node.toml").write_text(
        f'[database]\nurl = "sqlite:///{db_path}"\n[storage]\nspool_dir = "{work}/spool"\n'
        f'min_free_mb = 1\n[model]\nweights = "{work}/none.pt"\n'
    )
    settings = load_settings(work / "node.toml", env={})
    db = Database(settings.database.url)
    db.upgrade()
    now = utcnow()
    with db.session() as session:
        fresh = count_studies(session, StudyFilter()) == 0
    if fresh:
        started = time.perf_counter()
        generate(db, args.studies, now)
        print(
            f"generated {args.studies} studies in {time.perf_counter() - started:.1f} s "
            f"({db_path.stat().st_size / 2**20:.0f} MiB)"
        )
    name = f"bench{time.time_ns()}"  # a new admin per run (the database may be reused)
    with db.session() as session:
        add_user(session, name, Role.ADMIN, PASSWORD, now=now, actor="bench")
        n = count_studies(session, StudyFilter())
    print(f"{n} studies in {db_path}\n")
    client = TestClient(create_app(settings, db), base_url="https://testserver")
    client.get("/login")
    client.post(
        "/login",
        data={
            "username": name,
            "password": PASSWORD,
            "next": "/",
            "csrf_token": client.cookies.get("scpnode_login"),
        },
    )
    sample = f"2.25.{10**20 + (n // 100) * 100 - 100}"  # has slice scores
    failed_day = (now - timedelta(days=3)).date().isoformat()
    pages = [
        "/",
        "/studies",
        "/studies?page=1000",
        "/studies?calling_aet=CT07",
        "/studies?status=failed",
        "/studies?label=covid19&min_p=0.9",
        "/studies?sort=probability&dir=desc",
        "/studies?sort=calling_aet&dir=asc",
        f"/studies?since={failed_day}&until={failed_day}",
        f"/studies/{sample}",
        "/associations",
        "/associations?calling_aet=CT03",
        "/associations?outcome=aborted",
        "/deliveries",
        "/deliveries?status=failed",
        "/audit",
        "/audit?kind=delivery_failed",
        "/models",
        "/healthz",
        "/readyz",
    ]
    print(f"{'request':58} {'ms':>9}  status")
    for page in pages:
        ms, rsp = timed(lambda p=page: client.get(p), args.runs)
        print(f"GET {page:54} {ms:9.1f}  {rsp.status_code}")
    console = client.app.state.console  # type: ignore[attr-defined]
    ms, text = timed(
        lambda: (console.metrics.__setattr__("_cached", None), console.metrics.render())[1],
        args.runs,
    )
    print(f"{'/metrics (uncached render)':62} {ms:9.1f}  {len(text.splitlines())} lines")
    for export in ("/studies.csv?status=failed", "/studies.json?calling_aet=CT07", "/studies.csv"):
        ms, rsp = timed(lambda e=export: client.get(e), 1)
        print(f"GET {export:54} {ms:9.1f}  {rsp.status_code}, {len(rsp.content) / 2**20:.1f} MiB")
    with db.session() as session:
        ms, _ = timed(
            lambda: studies_by_id(
                session,
                select_study_ids(
                    session, StudyFilter(calling_aet="CT07"), descending=True, limit=50
                ),
            ),
            args.runs,
        )
    print(f"{'CLI: audit studies --calling-aet CT07 --desc --limit 50':62} {ms:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
