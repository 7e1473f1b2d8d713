"""
ICE configuration: which servers to ask and which local addresses to offer.

The servers come from pcpeer's own options (``--ice-server``) or, without
them, from the signaling server's ``/ice-servers`` for each call
(``configuration_from_server``: the body's RTCConfiguration shape, TURN
credentials included).  ``--relay-only`` is aiortc's relay transport
policy: only TURN relay candidates are gathered, offered and used.

When a TURN server is configured but a call gathered no relay candidate,
``why_no_relay`` asks the TURN server once more itself, so that the log can
say why (refused credentials, no answer, quota) in one line: aioice drops
the reason.

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

import asyncio
import ipaddress
from typing import Any, Iterable, Optional, Sequence

import aioice.ice
import aioice.turn
from aioice import stun
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy
from aiortc.rtcicetransport import connection_kwargs, parse_stun_turn_uri

#: Seconds ``why_no_relay`` waits for the TURN server.
TURN_CHECK_TIMEOUT = 5.0

_original_get_host_addresses = aioice.ice.get_host_addresses


def ice_configuration(
    urls: Sequence[str] = (),
    username: Optional[str] = None,
    credential: Optional[str] = None,
    relay_only: bool = False,
) -> RTCConfiguration:
    """An RTCConfiguration with exactly these STUN/TURN servers (none by default)."""
    servers = [RTCIceServer(urls=url, username=username, credential=credential) for url in urls]
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=_policy(relay_only))


def _policy(relay_only: bool) -> RTCIceTransportPolicy:
    return RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL


def configuration_from_server(body: Any, relay_only: bool = False) -> RTCConfiguration:
    """
    An RTCConfiguration from the JSON of ``/ice-servers``.  URLs that aiortc
    cannot use (it reads no IPv6 literals, for one) are left out, so that
    one of them cannot make every call fail; raises ValueError if the body
    is not RTCConfiguration-shaped at all.
    """
    entries = body.get("iceServers") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ValueError("no iceServers list")
    servers = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        urls = entry.get("urls")
        urls = [urls] if isinstance(urls, str) else urls if isinstance(urls, list) else []
        usable = [url for url in urls if isinstance(url, str) and _aiortc_reads(url)]
        username, credential = entry.get("username"), entry.get("credential")
        if usable:
            servers.append(RTCIceServer(
                urls=usable,
                username=username if isinstance(username, str) else None,
                credential=credential if isinstance(credential, str) else None,
            ))
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=_policy(relay_only))


def _aiortc_reads(url: str) -> bool:
    try:
        parse_stun_turn_uri(url)
    except ValueError:
        return False
    return True


def describe_servers(config: RTCConfiguration) -> str:
    """The servers' URLs for a log line (never their credentials)."""
    urls = []
    for server in config.iceServers or ():
        urls.extend([server.urls] if isinstance(server.urls, str) else server.urls)
    return ", ".join(urls) or "none"


def turn_server_used(config: RTCConfiguration) -> Optional[dict]:
    """aioice's settings for the one TURN server aiortc uses (the first usable), or None."""
    settings = connection_kwargs(config.iceServers or [])
    return settings if "turn_server" in settings else None


async def why_no_relay(turn: dict) -> str:
    """Ask the TURN server for an allocation, as aioice does, and say how that went."""
    where = "TURN server %s:%d (%s)" % (turn["turn_server"][0], turn["turn_server"][1], turn["turn_transport"])
    try:
        transport, _ = await asyncio.wait_for(
            aioice.turn.create_turn_endpoint(
                asyncio.DatagramProtocol,
                server_addr=turn["turn_server"],
                username=turn["turn_username"],
                password=turn["turn_password"],
                ssl=turn["turn_ssl"],
                transport=turn["turn_transport"],
            ),
            TURN_CHECK_TIMEOUT,
        )
    except stun.TransactionFailed as e:
        code, reason = e.response.attributes.get("ERROR-CODE", (0, "no error code"))
        if code == 401:
            return ("%s refused our credentials (401 %s): the signaling server's TURN secret is not "
                    "the TURN server's static-auth-secret, or the credentials expired" % (where, reason))
        return "%s refused the allocation (%d %s)" % (where, code, reason)
    except (stun.TransactionTimeout, asyncio.TimeoutError):
        return "%s did not answer" % (where,)
    except OSError as e:
        return "%s cannot be reached: %s" % (where, e.strerror or e)
    transport.close()
    return "%s gave none, but granted a second allocation: a passing failure" % (where,)


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
