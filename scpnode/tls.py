"""DICOM TLS (PS3.15 Annex B): SSL contexts for our SCP and for each destination.

Certificates, keys and CA bundles are files named in configuration; the password of an
encrypted key comes from an environment variable whose *name* is configured, never from the
TOML. Nothing here logs or returns file contents or passwords: errors name the configuration
key and the path only.

Both sides require TLS 1.2 or later; TLS 1.2 cipher suites are restricted to AEAD suites with
forward secrecy (ECDHE/DHE with AES-GCM or ChaCha20, as BCP 195 recommends); TLS 1.3 suites are
OpenSSL's defaults, which are all AEAD.

pynetdicom performs the server-side handshake inside its accept loop (``wrap_socket`` in
``AssociationServer.get_request``) with no timeout, so one client that connects and never
speaks TLS would stall every other connection. `AcceptContext` defers the handshake: the
accept loop only wraps the socket, and `finish_handshake` runs it (bounded by a timeout) on the
connection's own thread, from the SCP's ``EVT_CONN_OPEN`` handler.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scpnode.config import ConfigError, Destination, NodeTls

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!DSS"


@dataclass(frozen=True)
class ClientTls:
    """How we speak TLS to one destination (paths resolved; `where` names its config keys)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_hostname: str = ""
    key_password_env: str = ""
    where: str = "destinations"


def client_tls(dest: Destination) -> ClientTls | None:
    """The destination's TLS settings, or None when it is plain TCP."""
    if not dest.tls:
        return None
    return ClientTls(
        ca=dest.ca,
        cert=dest.cert,
        key=dest.key,
        server_hostname=dest.server_hostname,
        key_password_env=dest.key_password_env,
        where=f"destinations[{dest.name}]",
    )


class AcceptContext(ssl.SSLContext):
    """Server context whose `wrap_socket` leaves the handshake to `finish_handshake`.

    The accepted socket gets `handshake_timeout_s` as its timeout, which bounds the handshake
    (the SCP's connection handler then sets its read timeout).
    """

    handshake_timeout_s: float = 30.0

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        if server_side:
            sock.settimeout(self.handshake_timeout_s)
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=not server_side and do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def server_context(
    tls: NodeTls,
    *,
    handshake_timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> AcceptContext:
    """The SCP's context from ``[node.tls]``; raises ConfigError naming the key at fault."""
    ctx = AcceptContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.handshake_timeout_s = handshake_timeout_s
    _harden(ctx)
    if tls.cert is None or tls.key is None:
        raise ConfigError("node.tls: cert and key are required when enabled = true")
    _load_chain(ctx, tls.cert, tls.key, tls.key_password_env, "node.tls", env)
    if tls.ca is not None:
        _load_ca(ctx, tls.ca, "node.tls.ca")
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    elif tls.require_client_cert:
        raise ConfigError("node.tls.ca: required when require_client_cert = true")
    return ctx


def finish_handshake(sock: Any) -> str | None:
    """Complete a deferred server-side handshake; None when done, else why it failed.

    On failure the socket is closed. Not an SSL socket, or already done: nothing to do.
    """
    if not isinstance(sock, ssl.SSLSocket) or sock.version() is not None:
        return None
    try:
        sock.do_handshake()
    except (OSError, ValueError) as exc:
        _close(sock)
        return describe(exc)
    return None


class ConnectContext(ssl.SSLContext):
    """Client context that remembers the TLS error which ended its connection.

    pynetdicom catches (and only logs) the exception of a failed handshake, and a server that
    refuses our certificate under TLS 1.3 says so only on the first read; the error kept
    here lets the sender say *why* the association failed and classify it.
    """

    error: ssl.SSLError | None = None


class _WatchedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except ssl.SSLError as exc:
            _remember(self.context, exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            _remember(self.context, exc)
            raise


def _remember(ctx: ssl.SSLContext, exc: ssl.SSLError) -> None:
    if isinstance(ctx, ConnectContext) and ctx.error is None:
        ctx.error = exc


def client_context(tls: ClientTls, env: Mapping[str, str] | None = None) -> ConnectContext:
    """A fresh context for one association (so a renewed certificate needs no restart).

    The peer's certificate must chain to `ca` (the system store without one) and match
    ``server_hostname`` (an IP address is matched against IP subject alternative names).
    Raises ConfigError naming the key at fault.
    """
    ctx = ConnectContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.sslsocket_class = _WatchedSocket
    _harden(ctx)
    if tls.ca is not None:
        _load_ca(ctx, tls.ca, f"{tls.where}.ca")
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert is not None and tls.key is not None:
        _load_chain(ctx, tls.cert, tls.key, tls.key_password_env, tls.where, env)
    return ctx


def is_permanent(exc: ssl.SSLError) -> bool:
    """A TLS failure that retrying cannot cure: the two sides' security settings disagree.

    Untrusted or mismatched certificates, a refused client certificate, no common protocol
    version or cipher, a peer that does not speak TLS at all. A connection cut during the
    handshake (EOF, reset) is not in this class: the peer may just be restarting.
    """
    return not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError)


def describe(exc: BaseException) -> str:
    """Words for an admin; never includes key material."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate not trusted ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: handshake failed ({exc.reason or exc.__class__.__name__})"
    if isinstance(exc, TimeoutError):
        return "TLS: handshake timed out"
    return f"TLS: connection failed ({exc.__class__.__name__}: {exc})"


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _load_ca(ctx: ssl.SSLContext, ca: Path, key: str) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}: cannot load CA certificates from {ca}: {_reason(exc)}") from None


def _load_chain(
    ctx: ssl.SSLContext,
    cert: Path,
    key: Path,
    password_env: str,
    where: str,
    env: Mapping[str, str] | None,
) -> None:
    env = os.environ if env is None else env
    password: str | None = None
    if password_env:
        password = env.get(password_env)
        if password is None:
            raise ConfigError(
                f"{where}.key_password_env: environment variable {password_env} is not set"
            )
    try:
        # without a configured password, an encrypted key fails instead of prompting on a tty
        ctx.load_cert_chain(str(cert), str(key), password=password if password_env else "")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{where}.cert/key: cannot load certificate {cert} with key {key} "
            f"({_reason(exc)}; an encrypted key needs key_password_env)"
        ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__)
    if isinstance(exc, OSError):
        return exc.strerror or exc.__class__.__name__
    return exc.__class__.__name__


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
