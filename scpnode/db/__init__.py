"""Audit database: SQLAlchemy models, sessions and Alembic migrations."""

from scpnode.db.session import Database

__all__ = ["Database"]
