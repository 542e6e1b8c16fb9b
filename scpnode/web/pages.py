"""The console's pages (GET, read-only): dashboard, studies, one study, associations,
deliveries, audit, models. Each is one short transaction of bounded, indexed queries."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from scpnode.audit_views import (
    LABEL_NONE,
    SORT_KEYS,
    StudyFilter,
    count_studies,
    parse_bound,
    select_study_ids,
    show_study,
    studies_by_id,
)
from scpnode.db.models import AssociationRow, DeliveryRow, StudyRow
from scpnode.delivery import list_deliveries
from scpnode.domain import AssociationOutcome, AuditKind, DeliveryState, Label, StudyState
from scpnode.web import queries
from scpnode.web.console import Console
from scpnode.web.metrics import spool_free_bytes
from scpnode.web.plot import probability_svg
from scpnode.web.sr_view import read_sr

STATUSES = [s.value for s in StudyState]
LABELS = [Label.COVID19.value, Label.NON_COVID19.value, LABEL_NONE]


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def url_with(request: Request, **changes: Any) -> str:
    """This page's URL with some query parameters changed (None removes one)."""
    params = {k: v for k, v in request.query_params.multi_items() if k not in changes}
    items = list(params.items()) + [(k, v) for k, v in changes.items() if v not in (None, "")]
    return request.url.path + ("?" + urlencode(items) if items else "")


def paging(request: Request, total: int, size: int) -> dict[str, Any]:
    try:
        page = max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        page = 1
    pages = max(1, -(-total // size))
    page = min(page, pages)
    return {
        "page": page,
        "pages": pages,
        "total": total,
        "offset": (page - 1) * size,
        "prev": url_with(request, page=page - 1) if page > 1 else None,
        "next": url_with(request, page=page + 1) if page < pages else None,
    }


def study_filter(params: QueryParams) -> tuple[StudyFilter, list[str]]:
    """The Studies page's (and exports') query parameters; problems come back as messages."""
    errors: list[str] = []

    def bound(key: str, end: bool) -> datetime | None:
        text = params.get(key, "").strip()
        try:
            return parse_bound(text, end=end) if text else None
        except ValueError:
            errors.append(f"{key}: not a date (YYYY-MM-DD) or ISO 8601 time: {text!r}")
            return None

    def prob(key: str) -> float | None:
        text = params.get(key, "").strip()
        try:
            value = float(text) if text else None
        except ValueError:
            value = -1.0
        if value is not None and not 0.0 <= value <= 1.0:
            errors.append(f"{key}: a probability between 0 and 1, not {text!r}")
            return None
        return value

    statuses = tuple(s for s in params.getlist("status") if s)
    errors += [f"status: unknown status {s!r}" for s in statuses if s not in STATUSES]
    label = params.get("label") or None
    if label is not None and label not in LABELS:
        errors.append(f"label: one of {', '.join(LABELS)}")
        label = None
    found = StudyFilter(
        since=bound("since", False),
        until=bound("until", True),
        calling_aet=params.get("calling_aet", "").strip() or None,
        statuses=tuple(s for s in statuses if s in STATUSES),
        label=label,
        min_p=prob("min_p"),
        max_p=prob("max_p"),
    )
    return found, errors


def study_sort(params: QueryParams) -> tuple[str, bool]:
    sort = params.get("sort", "received")
    return (sort if sort in SORT_KEYS else "received"), params.get("dir", "desc") != "asc"


def dashboard(request: Request) -> Response:
    console = _console(request)
    me = console.page_user(request)
    now = console.clock()
    midnight = datetime.combine(now.date(), time(), tzinfo=UTC)
    with console.db.snapshot() as session:
        latencies = queries.report_latencies(session, now - timedelta(days=7))
        context: dict[str, Any] = {
            "today": queries.studies_since(session, midnight),
            "week": queries.studies_since(session, now - timedelta(days=7)),
            "days": queries.positive_rate_by_day(session, midnight - timedelta(days=13), now),
            "queue": queries.queue_depth(session),
            "study_states": queries.count_by(session, StudyRow.state),
            "deliveries": queries.count_by(session, DeliveryRow.state),
            "failures": list_deliveries(session, DeliveryState.FAILED, newest_first=True, limit=5),
            "p50": queries.percentile(latencies, 0.50),
            "p95": queries.percentile(latencies, 0.95),
            "latency_n": len(latencies),
        }
    spool = console.settings.storage
    return console.render(
        request,
        "dashboard.html",
        me,
        nav="dashboard",
        model=console.model.check(),
        free=spool_free_bytes(spool.spool_dir),
        min_free=spool.min_free_mb * 1024 * 1024,
        **context,
    )


def studies(request: Request) -> Response:
    console = _console(request)
    me = console.page_user(request)
    found, errors = study_filter(request.query_params)
    sort, descending = study_sort(request.query_params)
    with console.db.snapshot() as session:
        page = paging(request, count_studies(session, found), console.page_size)
        ids = select_study_ids(
            session,
            found,
            sort=sort,
            descending=descending,
            offset=page["offset"],
            limit=console.page_size,
        )
        rows = studies_by_id(session, ids)
    headers = [
        (
            key,
            title,
            url_with(
                request, sort=key, page=None, dir="asc" if sort == key and descending else "desc"
            ),
        )
        for key, title in (
            ("received", "Received"),
            ("calling_aet", "Calling AE"),
            ("status", "Status"),
            ("label", "Label"),
            ("probability", "Probability"),
            ("changed", "Status changed"),
        )
    ]
    query = request.url.query
    return console.render(
        request,
        "studies.html",
        me,
        nav="studies",
        rows=rows,
        paging=page,
        errors=errors,
        params=request.query_params,
        statuses=STATUSES,
        labels=LABELS,
        headers=headers,
        sort=sort,
        descending=descending,
        csv_url="/studies.csv" + (f"?{query}" if query else ""),
        json_url="/studies.json" + (f"?{query}" if query else ""),
    )


def study(request: Request) -> Response:
    console = _console(request)
    me = console.page_user(request)
    uid = request.path_params["uid"]
    with console.db.snapshot() as session:
        found = show_study(session, uid)
    if found is None:
        raise HTTPException(404, f"no study {uid}")
    current = next((r for r in reversed(found["results"]) if r["outcome"] == "analysed"), None)
    report = next(
        (r for r in found["reports"] if r["sop_instance_uid"] == found["sr_sop_instance_uid"]),
        None,
    )
    sr = read_sr(report["path"]) if report else None
    plots = [
        (
            r,
            probability_svg(
                r["slices"], r["threshold"], sr.key_uids if sr and r is current else ()
            ),
        )
        for r in found["results"]
        if r["slices"]
    ]
    return console.render(
        request,
        "study.html",
        me,
        nav="studies",
        study=found,
        current=current,
        sr=sr,
        plots=plots,
        analysed_series=current["series_instance_uid"] if current else None,
        done=request.query_params.get("done"),
    )


def associations(request: Request) -> Response:
    console = _console(request)
    me = console.page_user(request)
    aet = request.query_params.get("calling_aet", "").strip() or None
    outcome = request.query_params.get("outcome") or None
    with console.db.snapshot() as session:
        total = queries.count_associations(session, calling_aet=aet, outcome=outcome)
        page = paging(request, total, console.page_size)
        rows = queries.list_associations(
            session,
            calling_aet=aet,
            outcome=outcome,
            offset=page["offset"],
            limit=console.page_size,
        )
        outcomes = queries.count_by(session, AssociationRow.outcome)
    return console.render(
        request,
        "associations.html",
        me,
        nav="associations",
        rows=rows,
        paging=page,
        params=request.query_params,
        outcomes=[o.value for o in AssociationOutcome],
        counts=outcomes,
    )


def deliveries(request: Request) -> Response:
    console = _console(request)
    me = console.page_user(request)
    state = request.query_params.get("status") or None
    if state not in (None, *[s.value for s in DeliveryState]):
        state = None
    with console.db.snapshot() as session:
        counts = queries.count_by(session, DeliveryRow.state)
        total = counts.get(state, 0) if state else sum(counts.values())
        page = paging(request, total, console.page_size)
        rows = list_deliveries(
            session, state, newest_first=True, offset=page["offset"], limit=console.page_size
        )
    return console.render(
        request,
        "deliveries.html",
        me,
        nav="deliveries",
        rows=rows,
        paging=page,
        status=state,
        counts=counts,
        states=[s.value for s in DeliveryState],
        done=request.query_params.get("done"),
    )


def audit_page(request: Request) -> Response:
    console = _console(request)
    me = console.page_user(request)
    kind = request.query_params.get("kind") or None
    with console.db.snapshot() as session:
        head_seq, head_hash = queries.chain_head(session)
        page = paging(request, queries.count_events(session, kind), console.page_size)
        events = queries.list_recent_events(
            session, kind=kind, offset=page["offset"], limit=console.page_size
        )
        last = queries.last_verification(session)
    return console.render(
        request,
        "audit.html",
        me,
        nav="audit",
        events=events,
        paging=page,
        kind=kind,
        kinds=[k.value for k in AuditKind],
        head_seq=head_seq,
        head_hash=head_hash,
        last=last,
        running=console.verifier.running_since,
    )


def models(request: Request) -> Response:
    console = _console(request)
    me = console.page_user(request)
    with console.db.snapshot() as session:
        used = queries.models_in_use(session)
    return console.render(
        request,
        "models.html",
        me,
        nav="models",
        model=console.model.check(),
        used=used,
        settings=console.settings.model,
    )


ROUTES = [
    Route("/", dashboard, methods=["GET"]),
    Route("/studies", studies, methods=["GET"]),
    Route("/studies/{uid}", study, methods=["GET"]),
    Route("/associations", associations, methods=["GET"]),
    Route("/deliveries", deliveries, methods=["GET"]),
    Route("/audit", audit_page, methods=["GET"]),
    Route("/models", models, methods=["GET"]),
]
