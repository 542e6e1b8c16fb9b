"""Console users: names, roles and argon2 password hashes, managed by `scpnode users`.

Only the hash is stored (argon2id, the library's current parameters), never the password; a
hash made with older parameters is upgraded at the next successful login. Every change is an
audit event naming who made it (`actor`), so "who could see what, when" is in the same
hash-chained log as the studies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from scpnode import audit
from scpnode.db.models import UserRow, WebSessionRow
from scpnode.domain import AuditKind

NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
MIN_PASSWORD = 10
_hasher = PasswordHasher()
# verified against when the name is unknown, so a wrong name costs as long as a wrong password
_DUMMY_HASH = _hasher.hash("not a password of anybody")


class Role(StrEnum):
    ADMIN = "admin"  # may act: re-queue deliveries, verify the audit chain
    VIEWER = "viewer"  # read-only


class UserError(ValueError):
    """A user command that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")


def add_user(
    session: Session, name: str, role: Role, password: str, *, now: datetime, actor: str
) -> User:
    """Create a user (the name must be new); audited as `user_added`."""
    if not re.match(NAME_PATTERN, name):
        raise UserError(f"name: {name!r} must be 1-64 letters, digits or _ . @ -")
    check_password(password)
    if session.scalar(select(UserRow.id).where(UserRow.name == name)) is not None:
        raise UserError(f"user {name!r} exists (scpnode users passwd {name} changes the password)")
    row = UserRow(name=name, role=str(role), password_hash=_hasher.hash(password), created_at=now)
    session.add(row)
    session.flush()
    audit.append(session, AuditKind.USER_ADDED, now=now, user=name, role=str(role), actor=actor)
    return User(row.id, row.name, Role(row.role))


def set_password(session: Session, name: str, password: str, *, now: datetime, actor: str) -> None:
    """New password; every session of the user ends (a leaked session dies with the old one)."""
    check_password(password)
    row = _row(session, name)
    row.password_hash = _hasher.hash(password)
    session.execute(delete(WebSessionRow).where(WebSessionRow.user_id == row.id))
    audit.append(session, AuditKind.USER_PASSWORD_SET, now=now, user=name, actor=actor)


def remove_user(session: Session, name: str, *, now: datetime, actor: str) -> None:
    row = _row(session, name)
    session.execute(delete(WebSessionRow).where(WebSessionRow.user_id == row.id))
    session.delete(row)
    audit.append(session, AuditKind.USER_REMOVED, now=now, user=name, actor=actor)


def list_users(session: Session) -> list[dict[str, object]]:
    return [
        {
            "name": u.name,
            "role": u.role,
            "created_at": u.created_at.isoformat(),
            "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None,
        }
        for u in session.scalars(select(UserRow).order_by(UserRow.name))
    ]


def count_users(session: Session) -> int:
    return len(session.scalars(select(UserRow.id)).all())


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The user if the password is right; None otherwise, in about the same time either way."""
    row = session.scalar(select(UserRow).where(UserRow.name == name))
    try:
        _hasher.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        row.password_hash = _hasher.hash(password)
    return User(row.id, row.name, Role(row.role))


def _row(session: Session, name: str) -> UserRow:
    row = session.scalar(select(UserRow).where(UserRow.name == name))
    if row is None:
        raise UserError(f"no user {name!r}")
    return row
