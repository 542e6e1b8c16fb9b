"""What every console request needs: settings, database, sessions, templates, and the rules
for who may see and do what.

`page_user` (HTML pages: not signed in → redirect to the login form) and `data_user`
(exports, downloads, actions: → 401) authenticate; `action_user` also checks the CSRF token
and the origin, and the admin role when asked (→ 403).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from scpnode import audit
from scpnode.audit import ChainCheck, verify_chain
from scpnode.config import Settings
from scpnode.db import Database
from scpnode.domain import AuditKind
from scpnode.web import formatting
from scpnode.web.auth import (
    CSRF_FIELD,
    SESSION_COOKIE,
    Forbidden,
    LoginThrottle,
    Sessions,
    SignedIn,
    Unauthenticated,
    same_origin,
    tokens_match,
)
from scpnode.web.metrics import Metrics
from scpnode.web.model_status import ModelStatus

HERE = Path(__file__).parent


class ChainVerifier:
    """Runs `audit.verify_chain` in a background thread (a million events take a while) and
    records the result as a `chain_verified` event, so the audit page shows the last check
    even after a restart."""

    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db, self.clock = db, clock
        self._lock = threading.Lock()
        self.running_since: datetime | None = None

    def start(self, actor: str) -> bool:
        """False when a verification is already running."""
        with self._lock:
            if self.running_since is not None:
                return False
            self.running_since = self.clock()
        threading.Thread(target=self._run, args=(actor,), name="chain-verify", daemon=True).start()
        return True

    def _run(self, actor: str) -> None:
        try:
            with self.db.snapshot() as session:
                check: ChainCheck = verify_chain(session)
            with self.db.session() as session:
                audit.append(
                    session,
                    AuditKind.CHAIN_VERIFIED,
                    now=self.clock(),
                    actor=actor,
                    ok=check.ok,
                    events=check.events,
                    first_broken_seq=check.first_broken_seq,
                    problem=check.problem,
                )
        finally:
            with self._lock:
                self.running_since = None

    def wait(self, timeout_s: float = 30.0) -> None:
        """For tests: until the running verification (if any) has been recorded."""
        for thread in threading.enumerate():
            if thread.name == "chain-verify":
                thread.join(timeout_s)


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True),  # every template escapes everything
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(formatting.FILTERS)
    return Jinja2Templates(env=env)


@dataclass
class Console:
    settings: Settings
    db: Database
    clock: Callable[[], datetime]
    sessions: Sessions = field(init=False)
    throttle: LoginThrottle = field(init=False)
    metrics: Metrics = field(init=False)
    model: ModelStatus = field(init=False)
    verifier: ChainVerifier = field(init=False)
    templates: Jinja2Templates = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.db, self.settings.web, self.clock)
        self.throttle = LoginThrottle()
        self.metrics = Metrics(
            self.db, self.settings.storage.spool_dir, self.settings.storage.min_free_mb
        )
        self.model = ModelStatus(self.settings)
        self.verifier = ChainVerifier(self.db, self.clock)
        self.templates = _templates()

    @property
    def page_size(self) -> int:
        return self.settings.web.page_size

    def page_user(self, request: Request) -> SignedIn:
        found = self.sessions.lookup(request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise Unauthenticated(True)
        return found

    def data_user(self, request: Request) -> SignedIn:
        found = self.sessions.lookup(request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise Unauthenticated(False)
        return found

    async def action_user(self, request: Request, *, admin: bool = True) -> SignedIn:
        """A POST that changes something: session, same origin, CSRF token, then the role."""
        me = self.data_user(request)
        form = await request.form()
        if not same_origin(request):
            raise Forbidden("cross-site request refused")
        if not tokens_match(me.csrf, form.get(CSRF_FIELD)):
            raise Forbidden("missing or wrong CSRF token (reload the page and try again)")
        if admin and not me.user.is_admin:
            raise Forbidden(f"{me.user.name} is a viewer; this action needs the admin role")
        return me

    def render(
        self,
        request: Request,
        name: str,
        me: SignedIn | None,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        context.update(me=me, csrf_field=CSRF_FIELD, now=self.clock())
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)
