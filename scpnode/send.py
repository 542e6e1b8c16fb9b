"""C-STORE SCU: send stored objects to a peer and classify what happened.

Delivery retries only what may succeed later (a PACS that is down, busy or out of resources);
a permanent refusal (wrong AE title, a status that says the object itself is unacceptable)
goes to `failed` with its reason instead of being hammered until it expires.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from scpnode.config import ConfigError
from scpnode.dicomnet import assoc_socket, disable_nagle, identify, rejection_text
from scpnode.tls import ClientTls, ConnectContext, client_context, describe, is_permanent

log = logging.getLogger(__name__)

SR_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
DEFAULT_MAX_PDU = 262144


class Outcome(StrEnum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # retry with backoff
    PERMANENT = "permanent"  # do not retry blindly


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int
    tls: ClientTls | None = None  # None: plain TCP


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    status: int | None
    detail: str
    sop_class_uid: str | None = None  # what was sent (a fallback may differ from the file)


class AssociationFailed(Exception):
    def __init__(self, result: SendResult) -> None:
        super().__init__(result.detail)
        self.result = result


def classify_status(status: int) -> Outcome:
    """PS3.4 B.2.3: success and warnings are delivered; 0xA7xx is worth retrying."""
    if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
        return Outcome.DELIVERED
    if 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0213, 0x0212):
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


@contextmanager
def association(
    peer: Peer,
    calling_aet: str,
    sop_classes: Iterable[str],
    *,
    transfer_syntaxes: list[str] | None = None,
    timeout_s: float = 30.0,
) -> Iterator[Any]:
    """An established association (Nagle off), released on exit; raises AssociationFailed.

    With `peer.tls` the association runs over TLS: a fresh context per association (renewed
    certificates need no restart), the peer's certificate checked against the configured CA
    and its server name (the host unless `server_hostname` is set).
    """
    ae = identify(AE(ae_title=calling_aet))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for sop_class in sorted(set(sop_classes)):
        ae.add_requested_context(sop_class, transfer_syntaxes or SR_TRANSFER_SYNTAXES)
    connected: list[bool] = []

    def on_open(event: Any) -> None:
        connected.append(True)
        disable_nagle(assoc_socket(event.assoc))

    tls_context = _tls_context(peer)
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        max_pdu=DEFAULT_MAX_PDU,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open)],
        tls_args=None if tls_context is None else (tls_context, _server_hostname(peer)),
    )
    if not assoc.is_established:
        tls_error = None if tls_context is None else tls_context.error
        raise AssociationFailed(_association_failure(assoc, bool(connected), tls_error))
    keep_responses_for_the_caller(assoc)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def keep_responses_for_the_caller(assoc: Any) -> None:
    """Give a response the requestor's reactor took back to the send_* call waiting for it.

    pynetdicom's send_* methods pause the reactor by clearing a checkpoint and then polling
    `_is_paused`, which the reactor sets just before it waits; when the reactor has passed
    the wait but not yet cleared the flag, the send goes ahead, the reactor takes the
    response off the queue and drops it ("Received unexpected C-STORE service message"),
    and the sender waits out its DIMSE timeout: a lost store in the simulator, a delivery
    retried 30 s later. Put back, the waiting `get_msg` takes it; the reactor itself stops
    at its checkpoint on its next turn, so it does not take it again.
    """
    serve = getattr(assoc, "_serve_request", None)
    queue = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if serve is None or queue is None:  # a pynetdicom whose internals moved
        return

    def serve_or_put_back(msg: Any, context_id: int) -> None:
        is_response = not getattr(msg, "is_valid_request", True) and getattr(
            msg, "is_valid_response", False
        )
        if msg is not None and is_response:
            queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_put_back


def _tls_context(peer: Peer) -> ConnectContext | None:
    """The ConnectContext for `peer.tls` (None for plain TCP); a bad local file is permanent."""
    if peer.tls is None:
        return None
    try:
        return client_context(peer.tls)
    except ConfigError as exc:
        raise AssociationFailed(SendResult(Outcome.PERMANENT, None, str(exc))) from None


def _server_hostname(peer: Peer) -> str:
    return (peer.tls.server_hostname if peer.tls else "") or peer.host


def _association_failure(
    assoc: Any, connected: bool, tls_error: ssl.SSLError | None = None
) -> SendResult:
    if tls_error is not None and not assoc.is_rejected:
        # an untrusted certificate or a refused handshake will fail the same way next time,
        # like a permanent A-ASSOCIATE-RJ: failed with the reason, re-queued once fixed
        outcome = Outcome.PERMANENT if is_permanent(tls_error) else Outcome.TRANSIENT
        return SendResult(outcome, None, describe(tls_error))
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result, source, diag = primitive.result, primitive.result_source, primitive.diagnostic
        outcome = Outcome.PERMANENT if result == 0x01 else Outcome.TRANSIENT
        text = rejection_text(int(result), int(source), int(diag))
        return SendResult(outcome, None, f"association rejected: {text}")
    if connected and assoc.rejected_contexts and not assoc.accepted_contexts:
        offered = ", ".join(sorted(str(cx.abstract_syntax) for cx in assoc.rejected_contexts))
        return SendResult(
            Outcome.PERMANENT, None, f"peer accepts none of the SOP classes {offered}"
        )
    if assoc.is_aborted and connected:
        return SendResult(Outcome.TRANSIENT, None, "association aborted by peer")
    return SendResult(
        Outcome.TRANSIENT, None, "peer not reachable (connection failed or timed out)"
    )


Fallback = Callable[[Dataset], Dataset | None]
SOP_CLASS_NOT_SUPPORTED = 0x0122


def store_file(
    path: Path,
    peer: Peer,
    calling_aet: str,
    timeout_s: float = 30.0,
    fallback: Fallback | None = None,
) -> SendResult:
    """Send one stored Part-10 file (its stored bytes, re-framed as received) and classify.

    `fallback` converts the object for a peer that does not take its SOP class (no accepted
    presentation context, or 0x0122): the same content under another SOP class, offered on
    the same association.
    """
    dataset = pydicom.dcmread(path)
    alternative = fallback(dataset) if fallback is not None else None
    classes = [dataset.SOPClassUID] + ([alternative.SOPClassUID] if alternative else [])
    try:
        with association(peer, calling_aet, classes, timeout_s=timeout_s) as assoc:
            result = _send_one(assoc, dataset)
            if alternative is not None and _unsupported(result):
                second = _send_one(assoc, alternative)
                return replace(second, detail=f"{second.detail} (as fallback "
                               f"{alternative.SOPClassUID.name} {alternative.SOPInstanceUID}, "
                               f"after: {result.detail})")  # fmt: skip
            return result
    except AssociationFailed as exc:
        return exc.result
    except (OSError, RuntimeError) as exc:
        return SendResult(Outcome.TRANSIENT, None, f"network error: {exc}")


def _unsupported(result: SendResult) -> bool:
    return result.status == SOP_CLASS_NOT_SUPPORTED or (
        result.status is None and result.detail.startswith("peer does not accept")
    )


def _send_one(assoc: Any, dataset: Dataset) -> SendResult:
    sop_class = str(dataset.SOPClassUID)
    try:
        status = assoc.send_c_store(dataset)
    except ValueError as exc:  # no accepted presentation context for this SOP class
        return SendResult(Outcome.PERMANENT, None, f"peer does not accept the SOP class: {exc}",
                          sop_class)  # fmt: skip
    if not status or "Status" not in status:
        return SendResult(Outcome.TRANSIENT, None, "no response (timeout or abort)", sop_class)
    code = int(status.Status)
    outcome = classify_status(code)
    comment = str(status.get("ErrorComment", "") or "")
    detail = f"status 0x{code:04X}" + (f": {comment}" if comment else "")
    return SendResult(outcome, code, detail, sop_class)


def store_datasets(
    datasets: Iterable[Dataset],
    peer: Peer,
    calling_aet: str,
    *,
    transfer_syntaxes: list[str] | None = None,
    timeout_s: float = 30.0,
) -> list[int | None]:
    """One association for a batch of datasets (a scanner sends a series like this).

    A store with no response (timeout, abort) is None; once the association is gone the
    rest are None too, unsent, instead of an exception that loses the statuses so far.
    """
    items = list(datasets)
    statuses: list[int | None] = []
    classes = {str(ds.SOPClassUID) for ds in items}
    with association(
        peer, calling_aet, classes, transfer_syntaxes=transfer_syntaxes, timeout_s=timeout_s
    ) as assoc:
        for ds in items:
            if not assoc.is_established:
                statuses.append(None)
                continue
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status and "Status" in status else None)
    return statuses


def echo(peer: Peer, calling_aet: str, timeout_s: float = 10.0) -> SendResult:
    verification = "1.2.840.10008.1.1"
    try:
        with association(peer, calling_aet, [verification], timeout_s=timeout_s) as assoc:
            status = assoc.send_c_echo()
    except AssociationFailed as exc:
        return exc.result
    except (OSError, RuntimeError) as exc:
        return SendResult(Outcome.TRANSIENT, None, f"network error: {exc}")
    if not status or "Status" not in status:
        return SendResult(Outcome.TRANSIENT, None, "no response")
    code = int(status.Status)
    return SendResult(classify_status(code), code, f"status 0x{code:04X}")
