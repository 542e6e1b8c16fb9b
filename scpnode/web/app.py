"""The console's ASGI application: routes, security headers, sign-in and sign-out.

Server-rendered HTML (Jinja2, autoescaped), one local stylesheet, no script: the console works
offline and under `Content-Security-Policy: default-src 'self'; script-src 'none'`.
`/metrics`, `/healthz` and `/readyz` answer without credentials (DESIGN §5); every other
page and API needs a session.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scpnode import audit
from scpnode.clock import utcnow
from scpnode.config import Settings
from scpnode.db import Database
from scpnode.domain import AuditKind
from scpnode.web import data, pages
from scpnode.web.auth import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Forbidden,
    Unauthenticated,
    same_origin,
    tokens_match,
)
from scpnode.web.console import HERE, Console
from scpnode.web.users import authenticate

log = logging.getLogger(__name__)
LOGIN_ERRORS = {  # codes in the URL, fixed texts on the page (no text injection via links)
    "denied": "Wrong name or password.",
    "throttled": "Too many failed attempts: wait a few minutes.",
}
MAX_BODY = 64 * 1024  # forms are a few fields; anything bigger is not ours
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
        b"form-action 'self'; frame-ancestors 'none'; img-src 'self' data:",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the headers above to every response, and `no-store` to everything but /static
    (pages carry study data; a shared browser cache must not keep them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def safe_next(target: str | None) -> str:
    """Only a local path: `/studies?x=1`, never `//evil.example` or a full URL."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def login_form(request: Request) -> Response:
    console: Console = request.app.state.console
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = console.render(
        request,
        "login.html",
        None,
        next=safe_next(request.query_params.get("next")),
        login_token=token,
        error=LOGIN_ERRORS.get(request.query_params.get("error", "")),
        insecure=console.settings.web.cookie_secure
        and request.url.scheme != "https"
        and request.url.hostname not in ("127.0.0.1", "localhost", "::1"),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=1800,
        path="/login",
        httponly=True,
        secure=console.settings.web.cookie_secure,
        samesite="strict",
    )
    return response


async def login(request: Request) -> Response:
    """Check the double-submit token, the throttle, then the password (argon2, in a thread)."""
    from starlette.concurrency import run_in_threadpool

    console: Console = request.app.state.console
    form = await request.form()
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    target = safe_next(str(form.get("next", "/")))
    if not same_origin(request) or not tokens_match(
        request.cookies.get(LOGIN_COOKIE, ""), form.get(CSRF_FIELD)
    ):
        raise Forbidden("the sign-in form expired or came from another site; reload it")
    keys, now = (f"user:{name.lower()}", f"ip:{_client(request)}"), console.clock()
    if console.throttle.blocked(keys, now):
        return _login_again(target, "throttled")
    user = await run_in_threadpool(_check_password, console, name, password, _client(request))
    if user is None:
        console.throttle.failed(keys, now)
        return _login_again(target, "denied")
    console.throttle.succeeded(keys)
    token = await run_in_threadpool(console.sessions.create, user)
    response = RedirectResponse(target, status_code=303)
    console.sessions.set_cookie(response, token)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


def _check_password(console: Console, name: str, password: str, client: str) -> Any:
    with console.db.session() as session:
        user = authenticate(session, name, password)
        kind = AuditKind.USER_LOGIN if user else AuditKind.USER_LOGIN_FAILED
        audit.append(
            session,
            kind,
            now=console.clock(),
            user=name[:64],
            client=client,
            actor=f"web:{name[:64]}",
        )
    log.info("console sign-in", extra={"user": name[:64], "ok": user is not None})
    return user


def _login_again(target: str, error: str) -> Response:
    return RedirectResponse(f"/login?next={quote(target)}&error={quote(error)}", status_code=303)


async def logout(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool

    console: Console = request.app.state.console
    me = await console.action_user(request, admin=False)
    await run_in_threadpool(console.sessions.end, request.cookies.get(SESSION_COOKIE))
    await run_in_threadpool(_audit_logout, console, me.user.name)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _audit_logout(console: Console, name: str) -> None:
    with console.db.session() as session:
        audit.append(
            session, AuditKind.USER_LOGOUT, now=console.clock(), user=name, actor=f"web:{name}"
        )


async def _unauthenticated(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Unauthenticated)
    if exc.args and exc.args[0]:  # a page: send the browser to the sign-in form
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
    return PlainTextResponse("authentication required: sign in at /login", status_code=401)


async def _forbidden(request: Request, exc: Exception) -> Response:
    console: Console = request.app.state.console
    return console.render(
        request, "error.html", None, status_code=403, title="Forbidden", message=str(exc)
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    console: Console = request.app.state.console
    return console.render(
        request,
        "error.html",
        None,
        status_code=exc.status_code,
        title=str(exc.status_code),
        message=exc.detail,
    )


def create_app(
    settings: Settings, db: Database, *, clock: Callable[[], datetime] = utcnow
) -> Starlette:
    """The console for this node's settings and database (the caller owns `db`)."""
    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        *pages.ROUTES,
        *data.ROUTES,
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            Unauthenticated: _unauthenticated,
            Forbidden: _forbidden,
            HTTPException: _http_error,
        },
        middleware=[Middleware(SecurityHeaders)],
        max_body_size=MAX_BODY,
    )
    app.state.console = Console(settings, db, clock)
    return app
