"""Sessions, CSRF and login throttling for the console.

Design: the session cookie carries 32 random bytes; the database keeps only their SHA-256
(`web_sessions`), with the user, a per-session CSRF token and two deadlines (idle and
absolute). The cookie is HttpOnly (no script reads it; the console has no script anyway),
SameSite=Strict and Secure unless `web.cookie_secure = false`. Every state-changing request
is a POST carrying the session's CSRF token in a hidden field; it is compared in constant
time, and a request whose Origin (or Referer) names another host is refused as well. The
login form, before any session exists, uses a double-submit token: a random value in a
short-lived cookie that the form must echo.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from starlette.requests import Request
from starlette.responses import Response

from scpnode.config import WebSettings
from scpnode.db import Database
from scpnode.db.models import UserRow, WebSessionRow
from scpnode.web.users import Role, User

SESSION_COOKIE = "scpnode_session"
LOGIN_COOKIE = "scpnode_login"
CSRF_FIELD = "csrf_token"
TOUCH_EVERY = timedelta(seconds=60)  # last_seen is written at most this often


class Unauthenticated(Exception):
    """No valid session: pages redirect to the login form, everything else answers 401."""


class Forbidden(Exception):
    """Signed in but not allowed (role, CSRF, origin): 403 with the reason."""


@dataclass(frozen=True)
class SignedIn:
    user: User
    csrf: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Server-side sessions in the audit database (they survive restarts; logout is real)."""

    def __init__(self, db: Database, settings: WebSettings, clock: Callable[[], datetime]):
        self.db, self.settings, self.clock = db, settings, clock
        self.idle = timedelta(minutes=settings.session_idle_min)
        self.lifetime = timedelta(hours=settings.session_max_h)

    def create(self, user: User) -> str:
        """A new session for `user`; returns the cookie value (shown once, stored hashed)."""
        token, now = secrets.token_urlsafe(32), self.clock()
        with self.db.session() as session:
            session.execute(delete(WebSessionRow).where(WebSessionRow.expires_at < now))
            session.add(
                WebSessionRow(
                    token_sha256=_digest(token),
                    user_id=user.id,
                    csrf_token=secrets.token_urlsafe(32),
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + self.lifetime,
                )
            )
            row = session.get(UserRow, user.id)
            if row is not None:
                row.last_login_at = now
        return token

    def lookup(self, token: str | None) -> SignedIn | None:
        """The signed-in user behind a cookie, or None when unknown, idle too long or expired."""
        if not token:
            return None
        now = self.clock()
        with self.db.session() as session:
            found = session.execute(
                select(WebSessionRow, UserRow)
                .join(UserRow, UserRow.id == WebSessionRow.user_id)
                .where(WebSessionRow.token_sha256 == _digest(token))
            ).first()
            if found is None:
                return None
            row, user = found
            if now >= row.expires_at or now - row.last_seen_at > self.idle:
                session.delete(row)
                return None
            if now - row.last_seen_at > TOUCH_EVERY:
                row.last_seen_at = now
            return SignedIn(User(user.id, user.name, Role(user.role)), row.csrf_token)

    def end(self, token: str | None) -> None:
        if token:
            with self.db.session() as session:
                session.execute(
                    delete(WebSessionRow).where(WebSessionRow.token_sha256 == _digest(token))
                )

    def set_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(self.lifetime.total_seconds()),
            path="/",
            httponly=True,
            secure=self.settings.cookie_secure,
            samesite="strict",
        )


def tokens_match(expected: str, given: object) -> bool:
    return isinstance(given, str) and bool(given) and hmac.compare_digest(expected, given)


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (CSRF defence in
    depth beside the token); requests without these headers (scripts) pass to the token."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    source = request.headers.get("origin") or request.headers.get("referer")
    if source == "null":
        return False
    if not source:
        return True
    return urlsplit(source).netloc == request.headers.get("host", "")


class LoginThrottle:
    """After `limit` failures for one name (or from one address) within `window`, further
    attempts are refused until the oldest failure ages out: online guessing stays slow."""

    def __init__(self, limit: int = 5, window: timedelta = timedelta(minutes=15)) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[datetime]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: datetime) -> deque[datetime]:
        times = self._failures[key]
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def blocked(self, keys: tuple[str, ...], now: datetime) -> bool:
        with self._lock:
            return any(len(self._recent(k, now)) >= self.limit for k in keys)

    def failed(self, keys: tuple[str, ...], now: datetime) -> None:
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)

    def succeeded(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
