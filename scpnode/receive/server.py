"""The C-STORE SCP: one pynetdicom AE, configured from settings, handlers bound (not global).

Received data sets stream to a temporary file (pynetdicom's chunked receive) instead of being
held in memory; the temporary directory is pointed at the spool's `.incoming` folder, and the
files are created ahead in the spool's `.ready` folder (ready_files.py), so the final
placement is a rename on one filesystem. Both are process-wide pynetdicom/tempfile
settings, so only the SCP process (or a test that owns the process) calls `start`.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import tempfile
import time
from typing import Any

from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.transport import ThreadedAssociationServer

from scpnode.config import NodeSettings
from scpnode.dicomnet import identify
from scpnode.receive import file_meta
from scpnode.receive.access import CallingAeBinding
from scpnode.receive.contexts import accepted_sop_classes, storage_contexts
from scpnode.receive.handlers import Sink, StoreHandlers
from scpnode.receive.ready_files import ReadyFiles
from scpnode.spool import Spool
from scpnode.tls import server_context

log = logging.getLogger(__name__)


class _SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's server for several receiving processes on one port.

    `serve` binds the port (SO_REUSEPORT set, so a hand-started `scpnode receive --port` can
    still join) and hands the listening socket itself to its `scpnode receive` children
    (``listen_fd``): one accept queue for all. Each process takes a waiting connection at
    once while it has no association and only after :data:`DEFER_PER_ASSOCIATION_S` per
    association it is serving otherwise, so a new scanner goes to an idle process (one GIL to
    itself: two associations in one process ran at half speed each) and, with every process
    busy, to the least busy one. The kernel's SO_REUSEPORT hash did neither: it queued a
    connection to a busy process while another sat idle.
    """

    #: the accept queue: many scanners may connect in the same instant
    request_queue_size = 64

    def __init__(self, *args: Any, listen_fd: int | None = None, **kwargs: Any) -> None:
        self._listen_fd = listen_fd
        self._waiting_since: float | None = None
        self._last_deferral = 0.0
        self._accepted_at: collections.deque[float] = collections.deque(maxlen=64)
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        made = self.socket
        if made is None:  # TCPServer makes it before binding; pynetdicom types it Optional
            raise RuntimeError("the server has no socket to bind")
        if self._listen_fd is None:
            made.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()
            listening = made
        else:  # serve's listening socket, inherited: nothing to bind
            made.close()
            listening = self.socket = socket.socket(fileno=os.dup(self._listen_fd))
            self.server_address = listening.getsockname()
        # another process may take the connection `select` announced: accept must then fail
        # at once (socketserver ignores the OSError), not wait for the next one
        listening.setblocking(False)

    def server_activate(self) -> None:
        if self._listen_fd is None:
            super().server_activate()

    def server_close(self) -> None:
        """Close our descriptor only: shutting the shared socket down would stop every
        process's listening."""
        if self.socket is not None:
            self.socket.close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        serving = self._serving()
        if serving:
            now = time.monotonic()
            if self._waiting_since is None or now - self._last_deferral > _STALE_S:
                self._waiting_since = now  # a connection waiting that we have not seen yet
            if now - self._waiting_since < DEFER_PER_ASSOCIATION_S * serving:
                self._last_deferral = now
                time.sleep(_RECHECK_S)  # leave it to a less busy process
                raise BlockingIOError("deferred to a less busy receiving process")
        self._waiting_since = None
        request = super().get_request()
        self._accepted_at.append(time.monotonic())
        return request

    def _serving(self) -> int:
        """Associations this process serves; a connection accepted in the last moments
        counts already (its association thread may not run yet), or a burst of scanners
        connecting at once would all land on the first idle process."""
        now = time.monotonic()
        recent = sum(1 for t in self._accepted_at if now - t < _STARTING_S)
        return max(recent, sum(1 for a in self.ae.active_associations if a.is_acceptor))


#: how long a receiving process leaves a waiting connection to others, per association it
#: serves: an idle process takes it within a millisecond; with all busy it waits this long
DEFER_PER_ASSOCIATION_S = 0.01
#: how often a deferring process looks again (its select loop would otherwise spin)
_RECHECK_S = 0.002
#: a gap longer than this between deferrals means the queue emptied in between
_STALE_S = 0.02
#: how long an accepted connection may take to show as a running association
_STARTING_S = 0.2


class _SharedPortAE(AE):
    """An AE whose non-blocking server shares its port (`node.receive_processes` > 1)."""

    listen_fd: int | None = None

    def make_server(self, address: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_class"] = _SharedPortServer
        kwargs["listen_fd"] = self.listen_fd
        return super().make_server(address, *args, **kwargs)


class ReceiveServer:
    """Start, report the bound port, stop gracefully (finish in-flight associations).

    With `node.receive_processes` > 1 `serve` runs one such server itself and the others as
    `scpnode receive` processes sharing its listening socket (`listening_fd`).
    """

    def __init__(self, node: NodeSettings, spool: Spool, sink: Sink) -> None:
        self.node = node
        self.spool = spool
        self.handlers = StoreHandlers(
            spool,
            sink,
            allowed_sop_classes=accepted_sop_classes(node.accept_all_storage),
            calling_aet_hosts=CallingAeBinding(node.calling_aet_hosts),
        )
        self.ae = self._make_ae()
        # node.tls: built now, so a bad certificate or key stops start-up (exit 2, names the key)
        self.ssl_context = (
            server_context(node.tls, handshake_timeout_s=float(self.ae.acse_timeout or 30))
            if node.tls.enabled
            else None
        )
        self._server: Any = None
        self._ready_files: ReadyFiles | None = None

    def _make_ae(self) -> AE:
        shared = self.node.receive_processes > 1
        ae = identify((_SharedPortAE if shared else AE)(ae_title=self.node.ae_title))
        ae.maximum_associations = self.node.max_associations
        ae.maximum_pdu_size = self.node.max_pdu
        ae.network_timeout = self.node.network_timeout_s
        ae.require_calling_aet = list(self.node.allowed_calling_aets)
        ae.require_called_aet = self.node.require_called_aet
        ae.supported_contexts = storage_contexts(self.node.accept_all_storage)
        return ae

    def _evt_handlers(self) -> list[Any]:
        h = self.handlers
        return [
            (evt.EVT_CONN_OPEN, h.on_conn_open),
            (evt.EVT_CONN_CLOSE, h.on_conn_close),
            (evt.EVT_REQUESTED, h.on_requested),
            (evt.EVT_ACCEPTED, h.on_accepted),
            (evt.EVT_REJECTED, h.on_rejected),
            (evt.EVT_RELEASED, h.on_released),
            (evt.EVT_ABORTED, h.on_aborted),
            (evt.EVT_C_ECHO, h.on_echo),
            (evt.EVT_C_STORE, h.on_store),
            (evt.EVT_DIMSE_RECV, h.on_dimse_recv),
        ]

    def start(
        self, host: str | None = None, port: int | None = None, listen_fd: int | None = None
    ) -> int:
        """Listen (non-blocking); returns the bound port (useful with port 0). `listen_fd`:
        accept on this inherited listening socket (serve's) instead of binding one."""
        if listen_fd is not None:
            if not isinstance(self.ae, _SharedPortAE):
                raise ValueError("a shared listening socket needs node.receive_processes > 1")
            self.ae.listen_fd = listen_fd
        self.spool.prepare()
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.spool.incoming)
        file_meta.install()  # each data set file's meta written directly (file_meta.py)
        self._ready_files = self.handlers.ready_files = ReadyFiles(self.spool.ready)
        self._ready_files.start()
        address = (
            host if host is not None else self.node.host,
            port if port is not None else self.node.port,
        )
        self._server = self.ae.start_server(
            address, block=False, ssl_context=self.ssl_context, evt_handlers=self._evt_handlers()
        )
        bound = int(self._server.server_address[1])
        log.info(
            "SCP listening",
            extra={"ae_title": self.node.ae_title, "port": bound, "tls": bool(self.ssl_context)},
        )
        return bound

    @property
    def listening_fd(self) -> int:
        """The listening socket's descriptor, for `scpnode receive --listen-fd` children."""
        if self._server is None or self._server.socket is None:
            raise RuntimeError("the SCP is not listening")
        return int(self._server.socket.fileno())

    @property
    def active_associations(self) -> int:
        return len([a for a in self.ae.active_associations if a.is_acceptor])

    def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting, let in-flight associations finish (bounded), then abort the rest."""
        if self._server is None:
            return
        self._server.shutdown()
        deadline = time.monotonic() + drain_timeout_s
        while self.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in list(self.ae.active_associations):
            assoc.abort()
        self._server = None
        if self._ready_files is not None:
            self._ready_files.stop()
            self._ready_files = self.handlers.ready_files = None
        self.handlers.close()
