"""Engine and sessions: one `Database` per process, built by the CLI and passed down.

SQLite runs in WAL mode with a generous busy timeout: the SCP process, the scheduler and the
worker processes write to the same file, one writer at a time. PostgreSQL (scale-out: several
nodes and workers on one database) gets the same discipline from `writer_lock`: every writing
transaction takes one advisory lock at its first write, so the audit hash chain never forks
and no two writers can deadlock on each other's row locks. On SQLite `writer_lock` takes the
write lock early (`BEGIN IMMEDIATE`) for a read that decides a write. Each session is one short
transaction; `snapshot()` is the read-only one whose queries all see the same commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock keys (any 64-bit numbers, fixed forever): "scpn" + purpose
WRITER_LOCK_KEY = 0x7363706E_0001
UPGRADE_LOCK_KEY = 0x7363706E_0002
_LOCKED = "scpnode_writer_locked"


def rowcount(result: Any) -> int:
    """Rows matched by an UPDATE: how every conditional transition checks that it won."""
    return int(result.rowcount)


class Database:
    """An engine plus a session factory; `session()` commits on success, rolls back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        if self.is_postgres:
            _serialise_writers(self._factory)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._factory() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A read-only session whose every query sees one committed state of the database.

        Why: outside a transaction each SELECT sees the latest commit (SQLite's driver opens
        none for reads; PostgreSQL's default is READ COMMITTED), so a view built from several
        queries can pair a study's old status with its new deliveries, or a chain check can
        find a head newer than the events it read and report tampering that never happened.
        A write in it is refused by the database; readers never block the node's writers.
        """
        with self._factory() as session:
            raw = None
            if self.is_sqlite:
                raw = session.connection().connection.dbapi_connection
                assert raw is not None
                raw.execute("PRAGMA query_only = ON")  # a write is an error
                raw.execute("BEGIN")  # WAL: the snapshot is taken at the first read
            elif self.is_postgres:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                session.execute(text("SET TRANSACTION READ ONLY"))
            try:
                yield session
            finally:
                if raw is not None:  # still ours: it goes back to the pool writable
                    raw.execute("PRAGMA query_only = OFF")
                session.rollback()

    def upgrade(self) -> None:
        """Create or migrate the schema to the current revision; safe to run twice."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.engine.begin() as connection:
            # processes starting together migrate one at a time; the others then find the
            # schema current (SQLite: the write lock, and the DDL inside that transaction)
            if self.is_postgres:
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({UPGRADE_LOCK_KEY})")
            elif self.is_sqlite:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def writer_lock(session: Session) -> None:
    """Take this transaction's writer lock now: PostgreSQL's advisory lock, SQLite's write
    lock (`BEGIN IMMEDIATE`, which otherwise comes only with the first write).

    Called before reads whose result decides a write, so that the read sees the last commit
    and nobody commits between it and the write.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql" and not session.info.get(_LOCKED):
        connection = session.connection()  # begins the transaction (and resets the flag)
        session.info[_LOCKED] = True
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})")
    elif dialect == "sqlite":
        raw = session.connection().connection.dbapi_connection
        # in a transaction already: the driver began it for a write, so the lock is held
        if raw is not None and not raw.in_transaction:
            raw.execute("BEGIN IMMEDIATE")  # waits out other writers (the busy timeout)


def _serialise_writers(factory: sessionmaker[Session]) -> None:
    """Every writing transaction takes the writer lock before its first row lock: INSERT,
    UPDATE, DELETE, SELECT ... FOR UPDATE, or a flush with pending changes."""

    @event.listens_for(factory, "after_begin")
    def _reset(session: Session, _tx: SessionTransaction, _conn: Connection) -> None:
        session.info[_LOCKED] = False

    @event.listens_for(factory, "do_orm_execute")
    def _on_execute(state: ORMExecuteState) -> None:
        locking = state.is_select and getattr(state.statement, "_for_update_arg", None) is not None
        if state.is_insert or state.is_update or state.is_delete or locking:
            writer_lock(state.session)

    @event.listens_for(factory, "before_flush")
    def _on_flush(session: Session, _ctx: Any, _instances: Any) -> None:
        if session.new or session.dirty or session.deleted:
            writer_lock(session)


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    _ensure_sqlite_dir(url)
    engine = create_engine(url, connect_args={"timeout": 60})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _ensure_sqlite_dir(url: str) -> None:
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:" and not url.startswith("sqlite:///:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
