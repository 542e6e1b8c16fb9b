"""Real peers for system tests: Orthanc as the PACS, `scpnode serve` as a subprocess.

Every process is started on 127.0.0.1 with free ports and stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from scpnode.send import Outcome, Peer, echo

PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen[Any], timeout_s: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


STARTED: list[ServeProcess] = []  # stopped after each test, however it ended (conftest)


def stop_started_serves() -> None:
    """SIGTERM (then SIGKILL) every `serve` a test started and left running; its workers and
    receiving processes follow it (PR_SET_PDEATHSIG)."""
    while STARTED:
        serve = STARTED.pop()
        if serve.proc is not None and serve.proc.poll() is None:
            stop(serve.proc, timeout_s=20)


class Orthanc:
    """A throwaway Orthanc: its own storage, DICOM and HTTP ports, no authentication."""

    def __init__(self, root: Path, aet: str = "ORTHANC") -> None:
        self.root, self.aet = root, aet
        self.dicom_port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen[Any] | None = None

    def start(self, modalities: dict[str, list[Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "scpnode-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomModalities": modalities,
            "Plugins": [],
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.root / "orthanc.log").open("wb")
        self.proc = subprocess.Popen(
            ["Orthanc", str(path)], env=PEER_ENV, stdout=log, stderr=subprocess.STDOUT
        )
        wait_until(self._up, 60, "Orthanc to answer HTTP")

    def _up(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=10) as rsp:
            body = rsp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, payload: Any) -> Any:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        req = urllib.request.Request(self.url(path), data=data, method="POST")
        with urllib.request.urlopen(req, timeout=60) as rsp:
            return json.loads(rsp.read() or b"null")

    def find_instance(self, sop_uid: str) -> list[str]:
        return self.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class ServeProcess:
    """`scpnode serve --config node.toml` as a real subprocess."""

    def __init__(self, config: Path, port: int, ae_title: str = "SCPNODE") -> None:
        self.config, self.port, self.ae_title = config, port, ae_title
        self.proc: subprocess.Popen[Any] | None = None
        self.log = config.parent / "serve.log"

    def start(self, timeout_s: float = 600) -> None:
        STARTED.append(self)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scpnode", "serve", "--config", str(self.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        peer = Peer(self.ae_title, "127.0.0.1", self.port)
        wait_until(
            lambda: self._alive() and echo(peer, "PROBE", 2).outcome == Outcome.DELIVERED,
            timeout_s,
            "scpnode serve to answer C-ECHO",
        )

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"scpnode serve exited {self.proc.returncode}:\n" + self.log.read_text()[-4000:]
            )
        return True

    def cli(self, *args: str) -> Any:
        run = subprocess.run(
            [sys.executable, "-m", "scpnode", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    def studies(self) -> list[dict[str, Any]]:
        return json.loads(self.cli("audit", "studies", "--json"))

    def stop(self) -> int:
        return stop(self.proc) if self.proc is not None else 0

    def children(self) -> list[int]:
        """PIDs of the worker processes `serve` started."""
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def kill9(self, workers_too: bool = True) -> None:
        """The crash: SIGKILL, workers first when asked (a worker killed mid-job)."""
        assert self.proc is not None
        if workers_too:
            for pid in self.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(30)
