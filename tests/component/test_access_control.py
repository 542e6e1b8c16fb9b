"""Access control and DICOM TLS over real associations on 127.0.0.1.

The tests make their own PKI with `cryptography` (a CA, a server certificate for 127.0.0.1, a
client certificate, and a second, untrusted CA with its own client) once per session.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from sqlalchemy import select

from scpnode.app import destination_tls
from scpnode.cli import main
from scpnode.config import ConfigError, Destination, NodeTls, Settings
from scpnode.db.models import AssociationRow, AuditEventRow
from scpnode.send import AssociationFailed, Outcome, Peer, echo, store_datasets, store_file
from scpnode.tls import ClientTls, server_context
from tests.conftest import PEER_ENV, ct_small, need

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

VERIFICATION = "1.2.840.10008.1.1"
KEY_PASSWORD = "correct horse battery staple"  # a throwaway test key's password


# --- a throwaway PKI ---------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    server_key_encrypted: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA nobody here trusts
    other_client_cert: Path  # a client certificate issued by it
    other_client_key: Path


def _rsa() -> rsa.RSAPrivateKey:
    # RSA: dcmtk's default BCP 195 profile negotiates ECDHE-RSA suites only
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    key: rsa.RSAPrivateKey,
    subject: str,
    issuer_key: rsa.RSAPrivateKey,
    issuer: str,
    *,
    ca: bool = False,
    usage: Any = None,
    san: list[Any] | None = None,
) -> Any:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: Any, key: Any = None, password: str = "") -> Path:
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        encryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        (folder / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
        )
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _rsa(), _rsa()
    ca = _issue(ca_key, "scpnode test CA", ca_key, "scpnode test CA", ca=True)
    other = _issue(other_key, "someone else's CA", other_key, "someone else's CA", ca=True)
    server_key, client_key, stranger_key = _rsa(), _rsa(), _rsa()
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server = _issue(server_key, "scpnode", ca_key, "scpnode test CA",
                    usage=ExtendedKeyUsageOID.SERVER_AUTH, san=san)  # fmt: skip
    client = _issue(client_key, "CT01", ca_key, "scpnode test CA",
                    usage=ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    stranger = _issue(stranger_key, "CT99", other_key, "someone else's CA",
                      usage=ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    _write(folder, "server", server, server_key)
    _write(folder, "server-encrypted", server, server_key, password=KEY_PASSWORD)
    _write(folder, "client", client, client_key)
    _write(folder, "stranger", stranger, stranger_key)
    return Pki(
        ca=_write(folder, "ca", ca),
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        server_key_encrypted=folder / "server-encrypted.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=_write(folder, "other-ca", other),
        other_client_cert=folder / "stranger.pem",
        other_client_key=folder / "stranger.key",
    )


def node_tls(pki: Pki, **kw: Any) -> NodeTls:
    values: dict[str, Any] = {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca}
    return NodeTls(enabled=True, **{**values, **kw})


def client(pki: Pki, **kw: Any) -> ClientTls:
    values: dict[str, Any] = {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key}
    return ClientTls(**{**values, **kw})


# --- helpers -----------------------------------------------------------------------------
def events(scp: Any, kind: str) -> list[AuditEventRow]:
    with scp.db.session() as s:
        return list(s.scalars(select(AuditEventRow).where(AuditEventRow.kind == kind)))


def associate(scp: Any, calling: str = "CT01", called: str | None = None) -> Any:
    """A Verification association; returns pynetdicom's association (released if up)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=called or scp.ae_title)
    if assoc.is_established:
        assoc.release()
    return assoc


def accepted(scp: Any, calling: str = "CT01", called: str | None = None) -> bool:
    return bool(associate(scp, calling, called).is_released)


def rejection(assoc: Any) -> tuple[int, int, int]:
    assert assoc.is_rejected, "expected an A-ASSOCIATE-RJ"
    rj = assoc.acceptor.primitive
    return (int(rj.result), int(rj.result_source), int(rj.diagnostic))


def idle(scp: Any, timeout_s: float = 5.0) -> bool:
    """True once the SCP holds no association (failed handshakes must not linger)."""
    deadline = time.monotonic() + timeout_s
    while scp.server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    return scp.server.active_associations == 0


def cli(*args: str) -> int:
    """`scpnode …` in-process; main() points logging at this test's stderr: put it back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        return main(list(args))
    finally:
        root.handlers[:], root.level = saved


def stored_ct(scp: Any) -> Path:
    ds = ct_small()
    return scp.spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


# --- called AE title ---------------------------------------------------------------------
def test_called_ae_title_not_checked_by_default(make_scp) -> None:
    scp = make_scp()
    assert accepted(scp, called="ANYTHING")


def test_wrong_called_ae_title_rejected_1_1_7_when_checked(make_scp) -> None:
    scp = make_scp(require_called_aet=True)
    assert rejection(associate(scp, calling="CT01", called="NOTUS")) == (1, 1, 7)
    assert accepted(scp, called=scp.ae_title)
    scp.finish()
    (event,) = events(scp, "association_rejected")
    assert '"called_aet": "NOTUS"' in event.detail and '"calling_aet": "CT01"' in event.detail
    assert '"reason": "called AE title not recognised (permanent)"' in event.detail
    assert '"diagnostic": 7' in event.detail


# --- calling AE title bound to addresses -------------------------------------------------
def test_calling_ae_bound_to_loopback_is_accepted(make_scp) -> None:
    scp = make_scp(allowed_calling_aets=("CT01",), calling_aet_hosts={"CT01": ["127.0.0.1"]})
    assert accepted(scp, calling="CT01")
    assert store_datasets([ct_small()], Peer(scp.ae_title, "127.0.0.1", scp.port), "CT01") == [0]
    scp.finish()
    assert stored_ct(scp).exists()
    assert events(scp, "association_rejected") == []


def test_calling_ae_bound_elsewhere_is_rejected_1_1_3_naming_the_address(make_scp) -> None:
    scp = make_scp(calling_aet_hosts={"CT01": ["10.9.9.9"]})
    assert rejection(associate(scp, calling="CT01")) == (1, 1, 3)
    assert accepted(scp, calling="CT02")  # unlisted: not restricted
    scp.finish()
    (event,) = events(scp, "association_rejected")
    assert '"reason": "calling AE title not allowed from 127.0.0.1"' in event.detail
    assert '"calling_aet": "CT01"' in event.detail and '"diagnostic": 3' in event.detail
    with scp.db.session() as s:
        row = s.scalars(select(AssociationRow).where(AssociationRow.outcome == "rejected")).one()
    assert row.peer_host == "127.0.0.1" and row.calling_aet == "CT01"
    assert idle(scp)


def test_cidr_bindings_and_the_plain_allow_list_together(make_scp) -> None:
    scp = make_scp(
        allowed_calling_aets=("CT01", "CT02", "CT03"),
        calling_aet_hosts={"CT01": ["10.0.0.0/8", "127.0.0.0/8"], "CT02": ["10.0.0.0/8"]},
    )
    assert accepted(scp, calling="CT01")  # 127.0.0.1 in 127.0.0.0/8
    assert rejection(associate(scp, calling="CT02")) == (1, 1, 3)  # not from 10/8
    assert accepted(scp, calling="CT03")  # allowed, not bound
    assert rejection(associate(scp, calling="INTRUDER")) == (1, 1, 3)  # not allowed at all
    scp.finish()
    reasons = sorted(e.detail for e in events(scp, "association_rejected"))
    assert "calling AE title not allowed from 127.0.0.1" in reasons[0]  # CT02
    assert "calling AE title not recognised (permanent)" in reasons[1]  # INTRUDER


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('calling_aet_hosts = { CT01 = ["10.0.0.300"] }', "node.calling_aet_hosts"),
        ('calling_aet_hosts = { CT01 = ["10.0.0.1/24"] }', "node.calling_aet_hosts"),
        ("calling_aet_hosts = { CT01 = [] }", "node.calling_aet_hosts"),
        ('allowed_calling_aets = ["CT02"]\ncalling_aet_hosts = { CT01 = ["10.0.0.1"] }',
         "calling_aet_hosts"),
        ("[node.tls]\nenabled = true", "node.tls"),
        ('[node.tls]\nkey_password_env = "not a name"', "node.tls.key_password_env"),
    ],
)  # fmt: skip
def test_bad_access_settings_exit_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f"[node]\n{text}\n")
    assert cli("audit", "studies", "--config", str(path)) == 2
    assert key in capsys.readouterr().err


def test_tls_keys_from_toml_and_environment(tmp_path: Path) -> None:
    from scpnode.config import load_settings

    path = tmp_path / "node.toml"
    path.write_text(
        '[node.tls]\ncert = "pki/node.pem"\nkey = "pki/node.key"\nca = "pki/ca.pem"\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 2762\n'
        'tls = true\nca = "pki/ca.pem"\nserver_hostname = "pacs.example"\n'
    )
    settings = load_settings(path, env={"SCPNODE_NODE__TLS__ENABLED": "true"})
    assert settings.node.tls.enabled and settings.node.tls.ca == tmp_path / "pki" / "ca.pem"
    assert settings.destinations[0].ca == tmp_path / "pki" / "ca.pem"  # relative to the file
    assert not load_settings(path, env={}).node.tls.enabled


def test_destination_tls_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="only with tls = true"):
        Destination(name="p", ae_title="P", host="h", port=1, ca=Path("ca.pem"))
    with pytest.raises(ValueError, match="cert and key go together"):
        Destination(name="p", ae_title="P", host="h", port=1, tls=True, cert=Path("c.pem"))


# --- TLS: the SCP --------------------------------------------------------------------------
# receive_processes = 2: the server class that shares its listening socket (non-blocking)
@pytest.mark.parametrize("processes", [1, 2])
def test_tls_client_with_our_ca_and_a_client_cert_stores(make_scp, pki: Pki, processes) -> None:
    scp = make_scp(tls=node_tls(pki), receive_processes=processes)
    peer = Peer(scp.ae_title, "127.0.0.1", scp.port, tls=client(pki))
    assert store_datasets([ct_small()], peer, "CT01") == [0x0000]
    assert echo(peer, "CT01").outcome == Outcome.DELIVERED
    scp.finish()
    assert pydicom.dcmread(stored_ct(scp)).SOPInstanceUID == ct_small().SOPInstanceUID


def test_plain_tcp_client_cannot_associate_with_a_tls_scp(make_scp, pki: Pki) -> None:
    scp = make_scp(tls=node_tls(pki))
    started = time.monotonic()
    assoc = associate(scp)
    assert not assoc.is_established
    assert time.monotonic() - started < 10  # the SCP hangs up; nobody waits for a timeout
    with pytest.raises(AssociationFailed):
        store_datasets([ct_small()], Peer(scp.ae_title, "127.0.0.1", scp.port), "CT01")
    assert idle(scp)
    scp.finish()
    assert not stored_ct(scp).exists()


@pytest.mark.parametrize("processes", [1, 2])
def test_a_silent_connection_does_not_hold_up_others(make_scp, pki: Pki, processes) -> None:
    import socket

    scp = make_scp(tls=node_tls(pki), receive_processes=processes)
    with socket.create_connection(("127.0.0.1", scp.port), timeout=5):  # never says hello
        started = time.monotonic()
        peer = Peer(scp.ae_title, "127.0.0.1", scp.port, tls=client(pki))
        assert echo(peer, "CT01", timeout_s=5).outcome == Outcome.DELIVERED
        assert time.monotonic() - started < 5  # the handshake is not done in the accept loop
    assert idle(scp)


def test_client_without_a_certificate_is_refused_when_required(make_scp, pki: Pki) -> None:
    scp = make_scp(tls=node_tls(pki))
    result = echo(Peer(scp.ae_title, "127.0.0.1", scp.port, tls=client(pki, cert=None, key=None)),
                  "CT01")  # fmt: skip
    assert result.outcome == Outcome.PERMANENT
    assert result.detail.startswith("TLS: handshake failed"), result.detail
    assert idle(scp)


def test_client_certificate_optional_when_not_required(make_scp, pki: Pki) -> None:
    scp = make_scp(tls=node_tls(pki, require_client_cert=False))
    anonymous = Peer(scp.ae_title, "127.0.0.1", scp.port, tls=client(pki, cert=None, key=None))
    assert echo(anonymous, "CT01").outcome == Outcome.DELIVERED
    stranger = client(pki, cert=pki.other_client_cert, key=pki.other_client_key)
    # a certificate that is presented must still chain to our CA
    refused = echo(Peer(scp.ae_title, "127.0.0.1", scp.port, tls=stranger), "CT01")
    assert refused.outcome == Outcome.PERMANENT, refused.detail


def test_client_certificate_from_another_ca_is_refused(make_scp, pki: Pki) -> None:
    scp = make_scp(tls=node_tls(pki))
    stranger = client(pki, cert=pki.other_client_cert, key=pki.other_client_key)
    result = echo(Peer(scp.ae_title, "127.0.0.1", scp.port, tls=stranger), "CT01")
    assert result.outcome == Outcome.PERMANENT and "TLS" in result.detail
    assert idle(scp)


def test_client_that_does_not_trust_our_ca_refuses_us(make_scp, pki: Pki) -> None:
    scp = make_scp(tls=node_tls(pki))
    result = echo(Peer(scp.ae_title, "127.0.0.1", scp.port, tls=client(pki, ca=pki.other_ca)),
                  "CT01")  # fmt: skip
    assert result.outcome == Outcome.PERMANENT
    assert result.detail.startswith("TLS: certificate not trusted"), result.detail
    assert idle(scp)


def test_server_name_must_match_the_certificate(make_scp, pki: Pki) -> None:
    scp = make_scp(tls=node_tls(pki))
    ok = Peer(scp.ae_title, "127.0.0.1", scp.port, tls=client(pki, server_hostname="localhost"))
    assert echo(ok, "CT01").outcome == Outcome.DELIVERED
    wrong = Peer(scp.ae_title, "127.0.0.1", scp.port, tls=client(pki, server_hostname="pacs.x"))
    result = echo(wrong, "CT01")
    assert result.outcome == Outcome.PERMANENT and "not trusted" in result.detail


def test_access_rules_also_apply_over_tls(make_scp, pki: Pki) -> None:
    scp = make_scp(tls=node_tls(pki), require_called_aet=True,
                   calling_aet_hosts={"CT01": ["10.9.9.9"]})  # fmt: skip
    bound = echo(Peer(scp.ae_title, "127.0.0.1", scp.port, tls=client(pki)), "CT01")
    assert bound.outcome == Outcome.PERMANENT
    assert "calling AE title not recognised" in bound.detail
    miscalled = echo(Peer("NOTUS", "127.0.0.1", scp.port, tls=client(pki)), "CT02")
    assert miscalled.outcome == Outcome.PERMANENT
    assert "called AE title not recognised" in miscalled.detail


# --- TLS: keys and secrets -----------------------------------------------------------------
def test_encrypted_key_takes_its_password_from_the_named_variable(pki: Pki) -> None:
    tls = node_tls(pki, key=pki.server_key_encrypted, key_password_env="SCPNODE_TEST_KEY_PW")
    assert server_context(tls, handshake_timeout_s=5, env={"SCPNODE_TEST_KEY_PW": KEY_PASSWORD})
    with pytest.raises(ConfigError, match=r"node\.tls\.key_password_env: .* is not set"):
        server_context(tls, handshake_timeout_s=5, env={})
    with pytest.raises(ConfigError, match=r"node\.tls\.cert/key") as wrong:
        server_context(tls, handshake_timeout_s=5, env={"SCPNODE_TEST_KEY_PW": "guess"})
    assert "guess" not in str(wrong.value) and "PRIVATE KEY" not in str(wrong.value)
    no_password = node_tls(pki, key=pki.server_key_encrypted)  # never prompts on a terminal
    with pytest.raises(ConfigError, match="key_password_env"):
        server_context(no_password, handshake_timeout_s=5, env={})


def test_missing_certificate_file_names_the_key(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.tls\.ca"):
        server_context(node_tls(pki, ca=tmp_path / "nope.pem"), handshake_timeout_s=5)
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104, tls=True,
                       ca=tmp_path / "nope.pem")  # fmt: skip
    with pytest.raises(ConfigError, match=r"destinations\[pacs\]\.ca"):
        destination_tls(Settings(destinations=(dest,)))


# --- TLS: delivery --------------------------------------------------------------------------
def test_sr_scu_delivers_over_tls_and_a_wrong_ca_is_permanent(make_scp, pki: Pki,
                                                              tmp_path: Path) -> None:  # fmt: skip
    pacs = make_scp(ae_title="PACS", tls=node_tls(pki))  # our own SCP, TLS only, as the PACS
    sr = tmp_path / "ct.dcm"  # any stored object: the SCU sends what the outbox holds
    ct_small().save_as(sr, enforce_file_format=True)
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port, tls=True,
                       ca=pki.ca, cert=pki.client_cert, key=pki.client_key)  # fmt: skip
    attach = destination_tls(Settings(destinations=(dest,)))
    peer = attach(Peer("PACS", "127.0.0.1", pacs.port))  # what a delivery row holds
    assert peer.tls is not None and peer.tls.ca == pki.ca
    assert attach(Peer("PACS", "127.0.0.1", pacs.port + 1)).tls is None  # not a destination
    assert echo(peer, "SCPNODE").outcome == Outcome.DELIVERED
    delivered = store_file(sr, peer, "SCPNODE", timeout_s=10)
    assert (delivered.outcome, delivered.status) == (Outcome.DELIVERED, 0x0000)

    untrusting = Peer("PACS", "127.0.0.1", pacs.port, tls=client(pki, ca=pki.other_ca))
    failed = store_file(sr, untrusting, "SCPNODE", timeout_s=10)
    assert failed.outcome == Outcome.PERMANENT and "not trusted" in failed.detail
    plain = store_file(sr, Peer("PACS", "127.0.0.1", pacs.port), "SCPNODE", timeout_s=10)
    assert plain.outcome != Outcome.DELIVERED
    pacs.finish()
    assert stored_ct(pacs).exists()


def test_cli_echo_uses_the_destination_tls_settings(
    make_scp, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pacs = make_scp(ae_title="PACS", tls=node_tls(pki))
    config = tmp_path / "node.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/echo.db"\n'
        f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
        f'port = {pacs.port}\ntls = true\nca = "{pki.ca}"\ncert = "{pki.client_cert}"\n'
        f'key = "{pki.client_key}"\n'
    )
    assert cli("echo", "--config", str(config)) == 0
    assert "over TLS): status 0x0000" in capsys.readouterr().out


def test_tls_peer_that_is_down_is_transient(pki: Pki, tmp_path: Path) -> None:
    from tests.system.peers import free_port

    sr = tmp_path / "ct.dcm"
    ct_small().save_as(sr, enforce_file_format=True)
    result = store_file(sr, Peer("PACS", "127.0.0.1", free_port(), tls=client(pki)), "SCPNODE",
                        timeout_s=5)  # fmt: skip
    assert result.outcome == Outcome.TRANSIENT


def test_tls_destination_that_only_speaks_plain_dicom_is_permanent(make_scp, pki: Pki) -> None:
    plain_pacs = make_scp(ae_title="PACS")
    result = echo(Peer("PACS", "127.0.0.1", plain_pacs.port, tls=client(pki)), "SCPNODE")
    assert result.outcome == Outcome.PERMANENT and result.detail.startswith("TLS:")
    assert idle(plain_pacs)


# --- dcmtk interoperability ---------------------------------------------------------------
def _storescu(pki: Pki, port: int, src: Path, *tls: str) -> subprocess.CompletedProcess[str]:
    storescu = need("storescu")
    return subprocess.run(
        [storescu, *tls, "-aet", "CT01", "-aec", "SCPNODE", "127.0.0.1", str(port), str(src)],
        env=PEER_ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_dcmtk_storescu_stores_over_tls(make_scp, pki: Pki, tmp_path: Path) -> None:
    need("storescu")
    scp = make_scp(tls=node_tls(pki))
    src = tmp_path / "ct.dcm"
    ct_small().save_as(src, enforce_file_format=True)
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
    run = _storescu(pki, scp.port, src, *tls)
    assert run.returncode == 0, run.stdout + run.stderr
    assert _storescu(pki, scp.port, src).returncode != 0  # plain TCP
    untrusting = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.other_ca)]
    assert _storescu(pki, scp.port, src, *untrusting).returncode != 0
    assert idle(scp)
    scp.finish()
    assert pydicom.dcmread(stored_ct(scp)).SOPInstanceUID == ct_small().SOPInstanceUID
    with scp.db.session() as s:
        assoc = s.scalars(select(AssociationRow).where(AssociationRow.outcome == "released"))
        assert [a.calling_aet for a in assoc] == ["CT01"]


def test_sr_scu_delivers_to_dcmtk_storescp_over_tls(pki: Pki, tmp_path: Path) -> None:
    from tests.system.peers import free_port, stop, wait_until

    storescp = need("storescp")
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [storescp, "+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca),
         "-aet", "PACS", "-od", str(out), str(port)],
        env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        peer = Peer("PACS", "127.0.0.1", port, tls=client(pki))
        wait_until(lambda: echo(peer, "SCPNODE", timeout_s=2).outcome == Outcome.DELIVERED,
                   20, "storescp over TLS")  # fmt: skip
        sr = tmp_path / "ct.dcm"
        ct_small().save_as(sr, enforce_file_format=True)
        assert store_file(sr, peer, "SCPNODE", timeout_s=10).outcome == Outcome.DELIVERED
        assert len(list(out.iterdir())) == 1
    finally:
        stop(proc, timeout_s=10)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_versions_below_1_2_are_refused_by_the_scp(make_scp, pki: Pki) -> None:
    import socket

    scp = make_scp(tls=node_tls(pki))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    try:  # a client that insists on TLS 1.1 (OpenSSL allows it only at security level 0)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    with (
        socket.create_connection(("127.0.0.1", scp.port), timeout=5) as raw,
        pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version"),
        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass  # the SCP answers with a protocol_version alert
    assert idle(scp)


def test_no_secret_in_the_log(
    make_scp, pki: Pki, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCPNODE_TEST_KEY_PW", KEY_PASSWORD)
    tls = node_tls(pki, key=pki.server_key_encrypted, key_password_env="SCPNODE_TEST_KEY_PW")
    with caplog.at_level("DEBUG"):
        scp = make_scp(tls=tls)
        anonymous = client(pki, cert=None, key=None)
        echo(Peer(scp.ae_title, "127.0.0.1", scp.port, tls=anonymous), "CT01")
        assert echo(Peer(scp.ae_title, "127.0.0.1", scp.port, tls=client(pki)), "CT01").status == 0
        scp.finish()
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "TLS handshake failed" in text  # the refusal is logged ...
    assert KEY_PASSWORD not in text and "PRIVATE KEY" not in text  # ... and no secret
