"""Everything that is not an HTML page: exports, the SR download, admin actions, and the
unauthenticated probes (`/metrics`, `/healthz`, `/readyz`).

Exports stream the filtered set in batches (a 100,000-study CSV never sits in memory).
Actions are POSTs that pass `Console.action_user` (session, origin, CSRF token, admin role)
and are audit events themselves.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from scpnode import audit
from scpnode.audit_views import iter_studies
from scpnode.db.models import SrRow, StudyRow
from scpnode.delivery import requeue
from scpnode.domain import AuditKind
from scpnode.web.console import Console
from scpnode.web.metrics import spool_free_bytes
from scpnode.web.pages import study_filter, study_sort

CSV_COLUMNS = (
    "study_instance_uid",
    "first_received_at",
    "calling_aet",
    "calling_aets",
    "received_instances",
    "status",
    "reason",
    "label",
    "probability",
    "model",
    "sr_sop_instance_uid",
    "deliveries",
    "status_changed_at",
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def csv_cell(value: Any) -> str:
    """A CSV cell that a spreadsheet will not run: text starting like a formula gets a quote
    (AE titles and reasons come from scanners)."""
    if value is None:
        return ""
    if isinstance(value, list):
        value = " ".join(
            f"{d['destination']}:{d['status']}({d['attempts']})" if isinstance(d, dict) else d
            for d in value
        )
    text_value = str(value)
    if isinstance(value, str) and text_value.startswith(FORMULA_START):
        return "'" + text_value
    return text_value


def _rows(console: Console, request: Request) -> Iterator[dict[str, Any]]:
    found, _ = study_filter(request.query_params)
    sort, descending = study_sort(request.query_params)
    with console.db.snapshot() as session:  # the whole export from one moment
        yield from iter_studies(session, found, sort=sort, descending=descending)


def _csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for n, row in enumerate(rows, 1):
        writer.writerow([csv_cell(row.get(k)) for k in CSV_COLUMNS])
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json_chunks(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """A JSON array in the shape of `scpnode audit studies --json` (DESIGN §4)."""
    yield "["
    for n, row in enumerate(rows):
        yield ("," if n else "") + "\n" + json.dumps(row, default=str)
    yield "\n]\n"


def _check_filters(request: Request) -> None:
    _, errors = study_filter(request.query_params)
    if errors:
        raise HTTPException(400, "; ".join(errors))


def _export(request: Request, chunks: Any, media_type: str, filename: str) -> Response:
    """The filtered, sorted set as a streamed attachment (viewers may export)."""
    console = _console(request)
    console.data_user(request)
    _check_filters(request)
    return StreamingResponse(
        chunks(_rows(console, request)),
        media_type=media_type,
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


def export_csv(request: Request) -> Response:
    return _export(request, _csv_lines, "text/csv; charset=utf-8", "studies.csv")


def export_json(request: Request) -> Response:
    return _export(request, _json_chunks, "application/json", "studies.json")


def download_sr(request: Request) -> Response:
    """The object exactly as sent (outbox bytes); the download is audited (it carries the
    patient's identity)."""
    console = _console(request)
    me = console.data_user(request)
    uid, sop = request.path_params["uid"], request.path_params["sop"].removesuffix(".dcm")
    with console.db.session() as session:
        row = session.execute(
            select(SrRow.path, SrRow.kind)
            .join(StudyRow, StudyRow.id == SrRow.study_id)
            .where(StudyRow.study_instance_uid == uid, SrRow.sop_instance_uid == sop)
        ).first()
        if row is None or not Path(row.path).is_file():
            raise HTTPException(404, "no such report for this study (or its file is gone)")
        audit.append(
            session,
            AuditKind.SR_DOWNLOADED,
            study_uid=uid,
            now=console.clock(),
            sop_instance_uid=sop,
            kind=row.kind,
            actor=f"web:{me.user.name}",
        )
    return FileResponse(row.path, media_type="application/dicom", filename=f"{sop}.dcm")


async def retry_delivery(request: Request) -> Response:
    console = _console(request)
    me = await console.action_user(request)
    ids = None if request.path_params.get("id") is None else [int(request.path_params["id"])]
    done = await run_in_threadpool(_requeue, console, ids, me.user.name)
    form = await request.form()
    back = str(form.get("back", ""))
    target = back if back.startswith("/studies/") else "/deliveries"
    return RedirectResponse(f"{target}?done={len(done)}", status_code=303)


def _requeue(console: Console, ids: list[int] | None, name: str) -> list[int]:
    with console.db.session() as session:
        return requeue(
            session, ids, console.clock(), console.settings.delivery.max_age_h, f"web:{name}"
        )


async def verify_audit(request: Request) -> Response:
    console = _console(request)
    me = await console.action_user(request)
    console.verifier.start(f"web:{me.user.name}")
    return RedirectResponse("/audit", status_code=303)


def metrics(request: Request) -> Response:
    return PlainTextResponse(
        _console(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


def healthz(request: Request) -> Response:
    """Liveness: the console process answers (no database access: a slow database must not
    get a live process restarted)."""
    return PlainTextResponse("ok\n")


def readyz(request: Request) -> Response:
    """Readiness: the database answers, the spool is writable with enough free space, and the
    model's weights are present and match their card."""
    console = _console(request)
    checks = {"database": _check_db(console), "spool": _check_spool(console)}
    model = console.model.check()
    checks["model"] = {"ok": model.ok, "detail": model.problem or f"{model.tag} at {model.path}"}
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


def _check_db(console: Console) -> dict[str, Any]:
    try:
        with console.db.session() as session:
            session.execute(text("SELECT 1 FROM audit_chain_head LIMIT 1"))
        return {"ok": True, "detail": "answers"}
    except Exception as exc:  # any driver error means not ready; the reason is shown
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}


def _check_spool(console: Console) -> dict[str, Any]:
    spool = console.settings.storage
    if not spool.spool_dir.is_dir() or not os.access(spool.spool_dir, os.W_OK):
        return {"ok": False, "detail": f"{spool.spool_dir} missing or not writable"}
    free = spool_free_bytes(spool.spool_dir)
    if free < spool.min_free_mb * 1024 * 1024:
        return {"ok": False, "detail": f"{free} bytes free, below storage.min_free_mb"}
    return {"ok": True, "detail": f"{free} bytes free"}


ROUTES = [
    Route("/studies.csv", export_csv, methods=["GET"]),
    Route("/studies.json", export_json, methods=["GET"]),
    Route("/studies/{uid}/sr/{sop}", download_sr, methods=["GET"]),
    Route("/deliveries/retry-failed", retry_delivery, methods=["POST"]),
    Route("/deliveries/{id:int}/retry", retry_delivery, methods=["POST"]),
    Route("/audit/verify", verify_audit, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
