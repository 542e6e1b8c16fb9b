"""Event handlers of the SCP: every outcome is a DICOM status, nothing ever raises.

The C-STORE handler runs on the association's thread, so it does only what acknowledgement
needs: check, parse the header (no pixels), rename the received file into the spool, and hand
a record to the recorder queue. The peer hears 0x0000 only once the file is in place.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.dimse_primitives import C_STORE

from scpnode.clock import utcnow
from scpnode.dicomnet import assoc_socket, disable_nagle, rejection_text
from scpnode.headers import InstanceHeader, UnreadableDataset, read_header
from scpnode.receive.access import (
    CALLING_AET_NOT_RECOGNISED,
    CallingAeBinding,
    reject,
    requested_calling_aet,
)
from scpnode.receive.fastpath import accelerate
from scpnode.receive.lifecycle import bound_reads, discard_partial_datasets
from scpnode.receive.ready_files import ReadyFiles, provide
from scpnode.receive.records import (
    AssociationClosed,
    AssociationOpened,
    AssociationRejected,
    ConnectionDropped,
    InstanceReceived,
    InstanceRefused,
    Record,
)
from scpnode.receive.store_response import answer_stores_directly
from scpnode.spool import BadUid, Spool, file_sha256
from scpnode.tls import finish_handshake

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # disk below min_free_mb or a write failed: the scanner may retry
SOP_CLASS_MISMATCH = 0xA900  # data set does not match the SOP class of the request
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_PARSE = 0xC001  # not a DICOM data set we can read
BAD_UID = 0xC002  # a study/series/instance UID is missing or violates the UID grammar
INSTANCE_MISMATCH = 0xC003  # data set SOP Instance UID differs from the request's
INTERNAL_ERROR = 0xC0FF  # unexpected failure; logged with a traceback
INVALID_REQUEST = 0xC004  # a C-STORE-RQ command pynetdicom cannot serve (a required field unusable)

Sink = Callable[[Record], None]


class StoreHandlers:
    """Handlers bound to one SCP; dependencies are passed in, not global."""

    def __init__(
        self,
        spool: Spool,
        sink: Sink,
        *,
        allowed_sop_classes: frozenset[str] | None = None,
        calling_aet_hosts: CallingAeBinding | None = None,
    ) -> None:
        self.spool = spool
        self.sink = sink
        self.allowed_sop_classes = allowed_sop_classes
        self.calling_aet_hosts = calling_aet_hosts
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        self._assoc_keys: dict[int, int] = {}
        self._reject_reasons: dict[int, str] = {}  # our own rejections, by id(assoc)
        self._unserved: dict[int, set[Path]] = {}  # streamed data sets on_store has not taken
        self.ready_files: ReadyFiles | None = None  # set while the server runs
        # hashes each received file while the association thread parses its header: hashlib
        # and file reads release the GIL, so the two run on two cores (`close` ends it)
        self._hashing = _hashing_threads()

    def close(self) -> None:
        """End the hashing threads (the server has stopped serving; a restart makes new)."""
        stopping, self._hashing = self._hashing, _hashing_threads()
        stopping.shutdown(wait=True)

    # --- association events -------------------------------------------------------------
    def on_conn_open(self, event: Any) -> None:
        sock = assoc_socket(event.assoc)
        if (failure := finish_handshake(sock)) is not None:  # TLS (node.tls): on this thread
            log.warning(
                "TLS handshake failed, connection closed",
                extra={"peer_host": str(event.assoc.requestor.address), "reason": failure},
            )
            event.assoc.acse_timeout = 0  # no A-ASSOCIATE-RQ can come: end the acceptor now
            return
        disable_nagle(sock)
        bound_reads(sock, event.assoc.network_timeout)
        # event-driven waits (fastpath.py); released in `_after_association`, or at collection
        event.assoc.scpnode_release = accelerate(event.assoc, sock)
        provide(event.assoc, self.ready_files)  # data set files created ahead (ready_files.py)
        answer_invalid_requests(event.assoc, self._invalid_request)
        answer_stores_directly(event.assoc)  # plain C-STORE-RSPs from a template
        drop_silent_log_handlers(event.assoc)

    def on_conn_close(self, event: Any) -> None:
        """End the wait of an acceptor whose connection closed before any A-ASSOCIATE-RQ.

        pynetdicom's acceptor thread waits `acse_timeout` (30 s) for the A-ASSOCIATE-RQ even
        after its connection is gone (random bytes, a truncated request, a port scan, a load
        balancer's TCP check), and counts against `node.max_associations` all that time: a
        handful of such connections locked real scanners out with (2, 3, 2) for 30 s (found
        by tests/hostile). An empty item on the queue it waits on ends the wait at once, the
        way its timeout would.
        """
        assoc = event.assoc
        if not assoc.is_acceptor or assoc.requestor.primitive is not None:
            return
        waiting = getattr(getattr(assoc, "dul", None), "to_user_queue", None)
        if waiting is not None and waiting.empty():  # never overtake a queued request
            waiting.put(None)
        self.sink(
            ConnectionDropped(
                peer_host=str(assoc.requestor.address),
                peer_port=int(assoc.requestor.port or 0),
                at=utcnow(),
            )
        )

    def on_requested(self, event: Any) -> None:
        """`node.calling_aet_hosts`: a bound calling AE title from another address gets (1, 1, 3).

        Fails closed: pynetdicom only logs a notification handler's exception and negotiates
        on, so a check that breaks rejects, and a reject that cannot be sent aborts.
        """
        if not self.calling_aet_hosts:
            return
        assoc = event.assoc
        try:
            reason = self.calling_aet_hosts.refusal(
                requested_calling_aet(assoc), str(assoc.requestor.address)
            )
        except Exception:
            log.exception("calling AE title check failed; rejecting")
            reason = "calling AE title check failed (see node log)"
        if reason is None:
            return
        with self._lock:
            self._reject_reasons[id(assoc)] = reason
        try:
            reject(assoc, *CALLING_AET_NOT_RECOGNISED)
        except Exception:
            log.exception("could not send A-ASSOCIATE-RJ; aborting")
            assoc.abort()

    def on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        key = next(self._keys)
        with self._lock:
            self._assoc_keys[id(assoc)] = key
        rejected = tuple(
            f"{cx.abstract_syntax}:{cx.result}" for cx in getattr(assoc, "rejected_contexts", [])
        )
        self.sink(
            AssociationOpened(
                key=key,
                calling_aet=_aet(assoc.requestor.ae_title),
                called_aet=_aet(assoc.acceptor.ae_title),
                peer_host=str(assoc.requestor.address),
                peer_port=int(assoc.requestor.port),
                at=utcnow(),
                rejected_contexts=rejected,
            )
        )
        threading.Thread(
            target=self._after_association, args=(assoc,), name=f"scp-watch-{key}", daemon=True
        ).start()

    def on_released(self, event: Any) -> None:
        self._closed(event.assoc, "released")

    def on_aborted(self, event: Any) -> None:
        self._closed(event.assoc, "aborted")

    def _closed(self, assoc: Any, outcome: str) -> None:
        with self._lock:
            key = self._assoc_keys.pop(id(assoc), None)
        if key is not None:
            self.sink(AssociationClosed(key=key, outcome=outcome, at=utcnow()))

    def _after_association(self, assoc: Any) -> None:
        """Runs once an accepted association's thread has ended, however it ended.

        Two gaps that tests/hostile found in pynetdicom's ending paths are closed here:
        - when its DUL thread dies of an exception (a C-STORE-RQ with an empty Affected SOP
          Instance UID makes building the temp file's meta raise inside the state machine),
          neither EVT_RELEASED nor EVT_ABORTED fires, and the association's audit row stayed
          `open` for ever; it is recorded as aborted here (a no-op when an event came);
        - an association that ends in the middle of a C-STORE (peer A-ABORT or dropped
          connection during the data set, a command pynetdicom refuses after the data set
          began) left the partial temp file in `.incoming` until the next start; it is
          deleted here. None of it was acknowledged.
        """
        assoc.join()
        with self._lock:
            unserved = self._unserved.pop(id(assoc), set())
        discard_partial_datasets(assoc, unserved)
        self._closed(assoc, "aborted")
        dul, release = getattr(assoc, "dul", None), getattr(assoc, "scpnode_release", None)
        if release is not None and dul is not None:
            dul.join(10.0)
            if not dul.is_alive():
                release()  # else it is closed when the DUL object is collected

    def on_dimse_recv(self, event: Any) -> None:
        """Note where pynetdicom streamed a complete data set, until `on_store` takes it.

        pynetdicom drops a decoded request it finds invalid (e.g. an Affected SOP Instance
        UID of a lone backslash) without answering and without deleting its temp file;
        `_after_association` deletes what is left here (found by tests/hostile).
        """
        path = getattr(event.message, "_data_set_path", None)
        if isinstance(path, Path):
            with self._lock:
                self._unserved.setdefault(id(event.assoc), set()).add(path)

    def on_rejected(self, event: Any) -> None:
        assoc = event.assoc
        result, source, diagnostic = _reject_reason(assoc)
        with self._lock:
            reason = self._reject_reasons.pop(id(assoc), None)
        reason = reason or rejection_text(result, source, diagnostic)
        request = assoc.requestor.primitive
        calling = requested_calling_aet(assoc) if request else _aet(assoc.requestor.ae_title)
        log.warning(
            "association rejected",
            extra={
                "calling_aet": calling,
                "reason": reason,
                "peer_host": str(assoc.requestor.address),
            },
        )
        self.sink(
            AssociationRejected(
                calling_aet=calling[:16],
                called_aet=_aet(request.called_ae_title) if request else "",
                peer_host=str(assoc.requestor.address),
                peer_port=int(assoc.requestor.port),
                reason=reason,
                result=result,
                source=source,
                diagnostic=diagnostic,
                at=utcnow(),
            )
        )

    # --- DIMSE services ----------------------------------------------------------------
    def on_echo(self, event: Any) -> int:
        return SUCCESS

    def on_store(self, event: Any) -> int:
        """Store one instance; never raises (a raised handler would answer 0xC211)."""
        with self._lock:
            self._unserved.get(id(event.assoc), set()).discard(
                getattr(event.request, "_dataset_path", None)
            )
        try:
            return self._store(event)
        except Exception:
            log.exception("unexpected failure in C-STORE handler")
            self._refuse(event, INTERNAL_ERROR, "internal error (see node log)")
            return INTERNAL_ERROR

    def _store(self, event: Any) -> int:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        if self.allowed_sop_classes is not None and sop_class not in self.allowed_sop_classes:
            return self._refuse(event, SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted here")
        if not self.spool.has_room():
            return self._refuse(event, OUT_OF_RESOURCES, "spool below min_free_mb")
        temp = self._received_file(event)
        try:
            return self._place(event, temp)
        finally:
            temp.unlink(missing_ok=True)

    def _place(self, event: Any, temp: Path) -> int:
        hashing = self._hash_meanwhile(temp)
        try:
            return self._check_and_place(event, temp, hashing)
        finally:
            hashing.cancel()  # a refused data set: no need to finish its hash

    def _hash_meanwhile(self, temp: Path) -> Future[tuple[str, int]]:
        try:
            return self._hashing.submit(file_sha256, temp)
        except RuntimeError:  # closed: a store after stop() still gets its answer
            done: Future[tuple[str, int]] = Future()
            done.set_result(file_sha256(temp))
            return done

    def _check_and_place(self, event: Any, temp: Path, hashing: Future[tuple[str, int]]) -> int:
        request = event.request
        try:
            header = read_header(temp)
        except UnreadableDataset as exc:
            return self._refuse(event, CANNOT_PARSE, f"unreadable data set: {exc}")
        except Exception as exc:
            # pydicom raises more than `read_header` names when an element's value cannot be
            # converted (e.g. BytesLengthException for a US value of 3 bytes): that is still
            # a data set we cannot understand, 0xC001, not an internal error 0xC0FF (found by
            # tests/hostile). Logged with its traceback in case it is our bug after all.
            log.warning("data set header failed to parse", exc_info=True)
            return self._refuse(
                event, CANNOT_PARSE, f"unreadable data set: {type(exc).__name__}: {exc}"
            )
        if not header.sop_class_uid and not header.sop_uid:
            return self._refuse(event, CANNOT_PARSE, "no SOP Class/Instance UID in the data set")
        if header.sop_class_uid != str(request.AffectedSOPClassUID):
            return self._refuse(event, SOP_CLASS_MISMATCH, "data set SOP Class UID differs")
        if header.sop_uid != str(request.AffectedSOPInstanceUID):
            return self._refuse(event, INSTANCE_MISMATCH, "data set SOP Instance UID differs")
        try:
            outcome = self.spool.place(
                temp, header.study_uid, header.series_uid, header.sop_uid, digest=hashing.result
            )
        except BadUid as exc:
            return self._refuse(event, BAD_UID, str(exc), header.study_uid)
        except OSError as exc:
            return self._refuse(event, OUT_OF_RESOURCES, f"write failed: {exc.strerror or exc}")
        self.sink(
            InstanceReceived(
                key=self._key(event),
                calling_aet=_aet(event.assoc.requestor.ae_title),
                header=_with_syntax(header, event),
                kind=outcome.kind,
                path=str(outcome.path),
                sha256=outcome.sha256,
                size=outcome.size,
                at=utcnow(),
                kept_aside=str(outcome.kept_aside) if outcome.kept_aside else None,
            )
        )
        return SUCCESS

    def _received_file(self, event: Any) -> Path:
        """The received bytes as a file in the spool's `.incoming` (same filesystem)."""
        temp = self.spool.new_incoming_path()
        if pynetdicom_config.STORE_RECV_CHUNKED_DATASET:
            source = Path(event.dataset_path)
            try:
                source.rename(temp)
            except OSError:  # another filesystem: copy once, then rename atomically later
                shutil.copyfile(source, temp)
        else:
            temp.write_bytes(event.encoded_dataset(include_meta=True))
        return temp

    def _refuse(self, event: Any, status: int, reason: str, study_uid: str | None = None) -> int:
        request = event.request
        log.warning(
            "C-STORE refused",
            extra={
                "status": f"0x{status:04X}",
                "reason": reason,
                "calling_aet": _aet(event.assoc.requestor.ae_title),
            },
        )
        self.sink(
            InstanceRefused(
                key=self._key(event),
                calling_aet=_aet(event.assoc.requestor.ae_title),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or "")[:64],
                sop_class_uid=str(request.AffectedSOPClassUID or "")[:64],
                status=status,
                reason=reason,
                at=utcnow(),
                study_uid=study_uid,
            )
        )
        return status

    def _invalid_request(self, assoc: Any, msg: Any, context_id: int) -> None:
        """A request pynetdicom would drop unanswered (it found a required field missing or
        unusable, e.g. an Affected SOP Instance UID of a lone backslash): the sender would
        wait for its DIMSE timeout and never learn why. A C-STORE with a Message ID is
        answered 0xC004 and audited; anything else ends the association at once."""
        keywords = getattr(type(msg), "REQUEST_KEYWORDS", ())
        unusable = [k for k in keywords if getattr(msg, k, None) is None]
        kind = str(getattr(msg, "msg_type", type(msg).__name__))
        reason = f"invalid {kind} request: no usable {', '.join(unusable) or 'fields'}"
        calling_aet = _aet(assoc.requestor.ae_title)
        log.warning("DIMSE request refused",
                    extra={"reason": reason, "calling_aet": calling_aet})  # fmt: skip
        dataset_path = getattr(msg, "_dataset_path", None)
        if isinstance(dataset_path, Path):  # streamed by pynetdicom; nobody will take it
            dataset_path.unlink(missing_ok=True)
        message_id = getattr(msg, "MessageID", None)
        if kind != "C-STORE" or message_id is None:
            assoc.abort()
            return
        response = C_STORE()
        try:
            response.MessageIDBeingRespondedTo = message_id
            response.AffectedSOPClassUID = msg.AffectedSOPClassUID
            response.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
            response.Status = INVALID_REQUEST
            assoc.dimse.send_msg(response, context_id)
        except Exception:  # the reactor thread must not die: end the association instead
            log.exception("could not answer an invalid C-STORE request; aborting")
            assoc.abort()
            return
        self.sink(
            InstanceRefused(
                key=self._key_of(assoc),
                calling_aet=calling_aet,
                sop_instance_uid=str(msg.AffectedSOPInstanceUID or "")[:64],
                sop_class_uid=str(msg.AffectedSOPClassUID or "")[:64],
                status=INVALID_REQUEST,
                reason=reason,
                at=utcnow(),
            )
        )

    def _key(self, event: Any) -> int:
        return self._key_of(event.assoc)

    def _key_of(self, assoc: Any) -> int:
        with self._lock:
            return self._assoc_keys.get(id(assoc), 0)


_PYNETDICOM_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def drop_silent_log_handlers(assoc: Any) -> None:
    """Unbind pynetdicom's own logging handlers while its logger drops what they log.

    They format every request and PDU for INFO and DEBUG lines, and `scpnode.logs` sets the
    "pynetdicom" logger to WARNING: on the receive path that was work for nothing, per
    instance, on both association threads. With pynetdicom's logger opened up for a
    debugging session, they stay bound.
    """
    if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        return
    for event, handler in _PYNETDICOM_LOG_HANDLERS:
        assoc.unbind(event, handler)


def _hashing_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="scpnode-sha256")


def answer_invalid_requests(assoc: Any, answer: Callable[[Any, Any, int], None]) -> None:
    """Route the requests pynetdicom's acceptor would drop as invalid to `answer`.

    pynetdicom's reactor only logs "Received unexpected ... service message" for them; the
    peer then waits out its DIMSE timeout. Requests during release keep pynetdicom's path.
    """
    serve = getattr(assoc, "_serve_request", None)
    if serve is None:  # a pynetdicom whose internals moved: its own behaviour stays
        return

    def serve_or_answer(msg: Any, context_id: int) -> None:
        releasing = getattr(assoc, "_sent_release", False)
        if msg is not None and not releasing and not getattr(msg, "is_valid_request", True):
            answer(assoc, msg, context_id)
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_answer


def _with_syntax(header: InstanceHeader, event: Any) -> InstanceHeader:
    """The negotiated transfer syntax is the truth about how the bytes are encoded."""
    syntax = str(event.context.transfer_syntax)
    if header.transfer_syntax_uid == syntax:
        return header
    return InstanceHeader(**{**header.__dict__, "transfer_syntax_uid": syntax})


def _aet(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip()[:16]


def _reject_reason(assoc: Any) -> tuple[int, int, int]:
    primitive: Any = getattr(assoc.acceptor, "primitive", None)
    try:
        return (int(primitive.result), int(primitive.result_source), int(primitive.diagnostic))
    except (AttributeError, TypeError, ValueError):
        return (0, 0, 0)
