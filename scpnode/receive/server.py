"""The C-STORE SCP: one pynetdicom AE, configured from settings, handlers bound (not global).

Received data sets stream to a temporary file (pynetdicom's chunked receive) instead of being
held in memory; the temporary directory is pointed at the spool's `.incoming` folder so the
final placement is a rename on one filesystem. Both are process-wide pynetdicom/tempfile
settings, so only the SCP process (or a test that owns the process) calls `start`.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from typing import Any

from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.transport import ThreadedAssociationServer

from scpnode.config import NodeSettings
from scpnode.dicomnet import identify
from scpnode.receive.access import CallingAeBinding
from scpnode.receive.contexts import accepted_sop_classes, storage_contexts
from scpnode.receive.handlers import Sink, StoreHandlers
from scpnode.spool import Spool
from scpnode.tls import server_context

log = logging.getLogger(__name__)


class _SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's server with SO_REUSEPORT set before bind: several processes listen on
    one port and the kernel spreads incoming connections among them."""

    def server_bind(self) -> None:
        listening = self.socket
        if listening is None:  # TCPServer makes it before binding; pynetdicom types it Optional
            raise RuntimeError("the server has no socket to bind")
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _SharedPortAE(AE):
    """An AE whose non-blocking server shares its port (`node.receive_processes` > 1)."""

    def make_server(self, address: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_class"] = _SharedPortServer
        return super().make_server(address, *args, **kwargs)


class ReceiveServer:
    """Start, report the bound port, stop gracefully (finish in-flight associations).

    With `node.receive_processes` > 1 the port is bound with SO_REUSEPORT: `serve` runs one
    such server itself and the others as `scpnode receive` processes on the same port.
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

    def start(self, host: str | None = None, port: int | None = None) -> int:
        """Listen (non-blocking); returns the bound port (useful with port 0)."""
        self.spool.prepare()
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.spool.incoming)
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
