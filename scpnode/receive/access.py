"""Who may associate: calling AE titles bound to the IP addresses they may call from.

pynetdicom checks the calling AE title against a plain list (``AE.require_calling_aet``) and
offers no per-association hook that also sees the peer address. Its documented intervention
point is the ``EVT_REQUESTED`` notification: it fires on the association's own thread once the
A-ASSOCIATE-RQ has arrived and before negotiation, and negotiation is skipped when a handler
has already rejected (``Association.run_reactor``). `reject` does there exactly what
pynetdicom's own reject path in ``ACSE._negotiate_as_acceptor`` does (send A-ASSOCIATE-RJ,
emit ``EVT_REJECTED``, stop the association), so the peer, the audit and the thread clean-up
see a rejection indistinguishable from pynetdicom's own (1, 1, 3). No pynetdicom class is
subclassed or patched; the plain allow-list, the called-AE check and the association limit
stay pynetdicom's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from pynetdicom import evt

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CALLING_AET_NOT_RECOGNISED = (0x01, 0x01, 0x03)  # permanent, service user


class CallingAeBinding:
    """AE title → networks it may associate from; AE titles not listed are not restricted."""

    def __init__(self, hosts: Mapping[str, Sequence[str]]) -> None:
        self._networks: dict[str, tuple[IpNetwork, ...]] = {
            aet.strip(): tuple(ipaddress.ip_network(n, strict=True) for n in networks)
            for aet, networks in hosts.items()
        }

    def __bool__(self) -> bool:
        return bool(self._networks)

    def refusal(self, calling_aet: str, peer_address: str) -> str | None:
        """None when allowed, else the reason for the audit (names the peer address)."""
        networks = self._networks.get(calling_aet.strip())
        if networks is None:
            return None
        address = _address(peer_address)
        if address is not None and any(
            address.version == net.version and address in net for net in networks
        ):
            return None
        return f"calling AE title not allowed from {peer_address}"


def _address(text: str) -> IpAddress | None:
    """The peer's address; an IPv4-mapped IPv6 address (dual-stack listener) as IPv4."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def requested_calling_aet(assoc: Any) -> str:
    """The calling AE title of the A-ASSOCIATE-RQ (``requestor.ae_title`` is set only later)."""
    value = getattr(assoc.requestor.primitive, "calling_ae_title", "") or ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


def reject(assoc: Any, result: int, source: int, diagnostic: int) -> None:
    """From an ``EVT_REQUESTED`` handler: what pynetdicom does for its own rejections."""
    assoc.acse.send_reject(result, source, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
