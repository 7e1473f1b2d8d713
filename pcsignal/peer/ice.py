"""
ICE configuration: which servers to ask and which local addresses to offer.

aiortc falls back to a public Google STUN server when given no
configuration; pcpeer never does: an unreachable STUN server must not slow
call set-up, and tests run without internet.  So the configuration is always
explicit, empty by default.

aioice offers every local interface address except loopback and has no
option to choose.  ``restrict_host_addresses`` replaces its address lookup
(process-wide: it is a property of the host, like a firewall rule) so that a
peer on a multi-homed server, or a test confined to 127.0.0.1, offers only
the addresses it is told to.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_original_get_host_addresses = aioice.ice.get_host_addresses


def ice_configuration(
    urls: Sequence[str] = (), username: Optional[str] = None, credential: Optional[str] = None
) -> RTCConfiguration:
    """An RTCConfiguration with exactly these STUN/TURN servers (none by default)."""
    servers = [RTCIceServer(urls=url, username=username, credential=credential) for url in urls]
    return RTCConfiguration(iceServers=servers)


def restrict_host_addresses(addresses: Optional[Iterable[str]]) -> None:
    """
    Offer only these local addresses as host candidates (None: aioice's
    default, every non-loopback address).  Loopback addresses are allowed
    here, which is what confines a peer to 127.0.0.1.
    """
    if addresses is None:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    chosen = [str(ipaddress.ip_address(a)) for a in addresses]

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            a
            for a in chosen
            if (use_ipv4 and ipaddress.ip_address(a).version == 4)
            or (use_ipv6 and ipaddress.ip_address(a).version == 6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses
