"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, a free port on 127.0.0.1.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster belongs to the
`postgres` system user (its directory chowned, the binaries run through `runuser`). The server
is stopped by the PID in its `postmaster.pid`, with a bounded wait.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "scpnode"


class PgUnavailable(RuntimeError):
    """No PostgreSQL binaries, or the cluster would not start (the message says why)."""


def find_bin(name: str) -> str | None:
    """`initdb`/`pg_ctl` on PATH, else the newest Debian install (/usr/lib/postgresql/N/bin)."""
    found = shutil.which(name)
    if found:
        return found
    versions = [Path(p) for p in glob.glob(f"/usr/lib/postgresql/*/bin/{name}")]
    versions.sort(key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return str(versions[-1]) if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One cluster; `url(db)` for SQLAlchemy, `create_database()` for an empty database."""

    def __init__(self) -> None:
        # not tempfile.tempdir: a receiving SCP points that at its spool, which the
        # postgres user may not enter
        system_tmp = os.environ.get("TMPDIR") or "/tmp"
        self.root = Path(tempfile.mkdtemp(prefix="scpnode-pg-", dir=system_tmp))
        self.data = self.root / "data"
        self.port = _free_port()
        self.pid: int | None = None
        self._run_as: list[str] = []
        self._count = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout_s: float = 60) -> None:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise PgUnavailable("initdb/pg_ctl not found (apt-get install postgresql)")
        if os.geteuid() == 0:
            self._as_postgres_user()
        self._run([initdb, "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                   "--no-sync", "-E", "UTF8", "--locale=C"], timeout_s)  # fmt: skip
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")  # fmt: skip
        self._run([pg_ctl, "start", "-D", str(self.data), "-l", str(self.root / "server.log"),
                   "-w", "-t", str(int(timeout_s)), "-o", options], timeout_s + 10)  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def _as_postgres_user(self) -> None:
        runuser = shutil.which("runuser")
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise PgUnavailable("running as root and no `postgres` user for the server") from None
        if runuser is None:
            raise PgUnavailable("running as root and no `runuser` to drop privileges")
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run_as = [runuser, "-u", "postgres", "--"]

    def _run(self, command: list[str], timeout_s: float) -> None:
        done = subprocess.run([*self._run_as, *command], capture_output=True, text=True,
                              timeout=timeout_s, cwd=self.root)  # fmt: skip
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PgUnavailable(f"{Path(command[0]).name} failed: {done.stderr[-2000:]}\n{tail}")

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        conninfo = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, timeout_s: float = 30) -> None:
        """Fast shutdown (SIGINT to the postmaster by PID), SIGKILL if it overstays."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline and _running(self.pid):
                    time.sleep(0.1)
                if _running(self.pid):
                    os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)


def _running(pid: int) -> bool:
    """Alive and not a zombie (the postmaster is not our child: nobody here reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
