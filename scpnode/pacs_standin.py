"""A minimal PACS for the demo: a storage SCP that files what it receives on disk.

Real integration tests use Orthanc; this stand-in lets `scpnode demo` run with nothing but
this repository.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts, evt

from scpnode.dicomnet import assoc_socket, disable_nagle


class PacsStandIn:
    """`answer` and `unsupported` let tests play a PACS that refuses or lacks a SOP class."""

    def __init__(
        self, root: Path, ae_title: str = "DEMOPACS", *, require_called_aet: bool = False,
        without: Iterable[str] = (),
    ) -> None:  # fmt: skip
        self.root = root
        self.ae_title = ae_title
        self.received: list[Path] = []
        self.answer = 0x0000  # the status to answer with (a test can make it refuse)
        self.unsupported: set[str] = set()  # SOP classes answered 0x0122 after negotiation
        self.delay_s = 0.0  # store, then wait this long before answering (a slow PACS)
        self._ae = AE(ae_title=ae_title)
        self._ae.require_called_aet = require_called_aet
        skip = set(without)  # SOP classes not even negotiated
        self._ae.supported_contexts = [  # a PACS answers C-ECHO too (`scpnode echo`)
            cx
            for cx in [*AllStoragePresentationContexts, *VerificationPresentationContexts]
            if cx.abstract_syntax not in skip
        ]
        self._server: Any = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_CONN_OPEN, lambda e: disable_nagle(assoc_socket(e.assoc))),
        ]
        self._server = self._ae.start_server((host, port), block=False, evt_handlers=handlers)
        return int(self._server.server_address[1])

    def _store(self, event: Any) -> int:
        if event.request.AffectedSOPClassUID in self.unsupported:
            return 0x0122
        if self.answer != 0x0000:
            return self.answer
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.root / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        self.received.append(path)
        time.sleep(self.delay_s)
        return 0x0000

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
