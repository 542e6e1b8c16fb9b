"""Component rig: a real SCP, recorder and SQLite file, a worker in burst mode with a randomly
initialised CTnet-10 (decisions are meaningless here; the system tests and the demo check them
with the trained weights), and the PACS stand-in on loopback, which tests can take down, make
refuse, or reject."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from model_zoo.card import save_card, sha256_file
from model_zoo.ctnet10 import CTNet10
from model_zoo.train import save_weights
from scpnode.app import open_database
from scpnode.audit_views import list_studies, show_study
from scpnode.clock import utcnow
from scpnode.config import Settings, load_settings
from scpnode.ingest import Recorder
from scpnode.pacs_standin import PacsStandIn
from scpnode.queue import sweep_completions
from scpnode.receive.server import ReceiveServer
from scpnode.send import Peer, store_datasets
from scpnode.spool import Spool
from scpnode.worker import Worker, build_worker
from tests.system.peers import free_port
from tests.unit.test_engine import make_card


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "ctnet10-random.pt"
    save_weights(CTNet10(), path)
    save_card(make_card(sha256_file(path)), path)
    return path


@dataclass
class Rig:
    settings: Settings
    scp: ReceiveServer
    recorder: Recorder
    worker: Worker
    pacs: PacsStandIn
    pacs_port: int
    port: int

    def send(self, datasets: list[Any], calling: str = "CT01") -> list[int | None]:
        return store_datasets(datasets, Peer("SCPNODE", "127.0.0.1", self.port), calling)

    def complete_and_process(self, after_s: float = 5) -> None:
        """Flush records, let the completion sweep fire as if `after_s` had passed (the grace;
        61 for the idle timer), run a burst."""
        self.recorder.flush()
        sweep_completions(
            self.worker.ctx.db, utcnow() + timedelta(seconds=after_s), grace_s=1, idle_timeout_s=60
        )
        self.worker.run_burst()

    def studies(self) -> dict[str, dict[str, Any]]:
        with self.worker.ctx.db.snapshot() as s:
            return {r["study_instance_uid"]: r for r in list_studies(s)}

    def show(self, uid: str) -> dict[str, Any]:
        with self.worker.ctx.db.snapshot() as s:
            study = show_study(s, uid)
        assert study is not None
        return study


def config_text(tmp: Path, weights: Path, pacs_port: int, extra: str = "") -> str:
    return f"""
[node]
host = "127.0.0.1"
[storage]
spool_dir = "{tmp}/spool"
min_free_mb = 1
[database]
url = "sqlite:///{tmp}/node.db"
[study]
min_slices = 5
[model]
weights = "{weights}"
allow_synthetic = true
[delivery]
retry_initial_s = 0.2
retry_max_s = 0.5
timeout_s = 5
{extra}
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
"""


@pytest.fixture
def make_rig(tmp_path: Path, random_weights: Path) -> Iterator[Any]:
    rigs: list[Rig] = []
    saved_tempdir = tempfile.tempdir

    def build(*, start_pacs: bool = True, extra: str = "", pacs_aet: str = "PACS",
              pacs_without: tuple[str, ...] = (), name: str = "node") -> Rig:  # fmt: skip
        pacs_port = free_port()
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        pacs = PacsStandIn(home / "pacs", pacs_aet, require_called_aet=True,
                           without=pacs_without)  # fmt: skip
        if start_pacs:
            pacs.start(port=pacs_port)
        path = home / "node.toml"
        path.write_text(config_text(home, random_weights, pacs_port, extra))
        settings = load_settings(path, env={})
        db = open_database(settings)
        spool = Spool(settings.storage.spool_dir, min_free_mb=1)
        recorder = Recorder(db)
        recorder.start()
        scp = ReceiveServer(settings.node, spool, recorder.submit)
        port = scp.start(port=0)
        rig = Rig(settings, scp, recorder, build_worker(settings), pacs, pacs_port, port)
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        rig.scp.stop(5)
        rig.recorder.stop()
        rig.pacs.stop()
    tempfile.tempdir = saved_tempdir
