"""
ICE servers for a call, as pure functions: no I/O, no clock of its own.

``GET /ice-servers?peer_id=ID`` answers a signed-in peer with an
RTCConfiguration-shaped body that a page hands straight to
``RTCPeerConnection``::

    {"iceServers": [{"urls": [TURN URIs], "username": "EXPIRY:ID",
                     "credential": "base64(HMAC-SHA1(secret, username))"},
                    {"urls": [STUN URIs]}],
     "ttl": SECONDS}

The TURN credentials follow the TURN REST API scheme that coturn checks
with ``use-auth-secret`` / ``static-auth-secret``: the username is the
expiry time in Unix seconds and the peer id, the credential the base64
HMAC-SHA1 of that username keyed with the shared secret.  coturn refuses
them once the expiry has passed, so nothing has to be revoked.

Server, pcpeer and tests share the URI checks and the credential formula
here, so they agree on them by construction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Optional

PATH = b"/ice-servers"
DEFAULT_TTL = 86400

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_URI = re.compile(
    r"(?P<scheme>[a-z]+):(?P<host>\[[^\]]*\]|[^:?\[\]]*)(:(?P<port>[^?]*))?(\?(?P<query>.*))?",
    re.IGNORECASE | re.DOTALL,
)
_DEFAULT_PORT = {"stun": 3478, "turn": 3478, "stuns": 5349, "turns": 5349}


class BadUri(ValueError):
    """A STUN or TURN URI that clients could not use; str() says why."""


@dataclass(frozen=True)
class ServerUri:
    """A checked STUN or TURN URI (RFC 7064, RFC 7065)."""

    text: str
    scheme: str
    host: str
    port: int
    transport: Optional[str]  # TURN only: "udp" or "tcp"


def parse_uri(text: str) -> ServerUri:
    """Check a ``stun:``, ``stuns:``, ``turn:`` or ``turns:`` URI; raises BadUri."""
    m = _URI.fullmatch(text)
    if m is None:
        raise BadUri("not a STUN or TURN URI: %r" % (text,))
    scheme = m.group("scheme").lower()
    if scheme not in _DEFAULT_PORT:
        raise BadUri("%r: the scheme must be stun:, stuns:, turn: or turns:" % (text,))
    host = m.group("host")
    if not _valid_host(host):
        raise BadUri("%r: %r is not a host name or IP address" % (text, host))
    port = _DEFAULT_PORT[scheme]
    if m.group("port") is not None:
        if not m.group("port").isdigit() or not 0 < int(m.group("port")) < 65536:
            raise BadUri("%r: the port must be a number from 1 to 65535" % (text,))
        port = int(m.group("port"))
    query = m.group("query")
    transport = None
    if scheme.startswith("stun"):
        if query is not None:
            raise BadUri("%r: a STUN URI takes no ?transport= or other query" % (text,))
    else:
        transport = "tcp" if scheme == "turns" else "udp"
        if query is not None:
            name, _, value = query.partition("=")
            if name != "transport" or value not in ("udp", "tcp"):
                raise BadUri("%r: the only query a TURN URI takes is ?transport=udp or "
                             "?transport=tcp" % (text,))
            transport = value
        if scheme == "turns" and transport != "tcp":
            raise BadUri("%r: turns: runs over TLS, so its transport is tcp" % (text,))
    return ServerUri(text, scheme, host.strip("[]"), port, transport)


def parse_turn_uri(text: str) -> ServerUri:
    uri = parse_uri(text)
    if not uri.scheme.startswith("turn"):
        raise BadUri("%r is not a turn: or turns: URI" % (text,))
    return uri


def parse_stun_uri(text: str) -> ServerUri:
    uri = parse_uri(text)
    if not uri.scheme.startswith("stun"):
        raise BadUri("%r is not a stun: or stuns: URI" % (text,))
    return uri


def _valid_host(host: str) -> bool:
    try:
        if host.startswith("["):
            return ipaddress.ip_address(host[1:-1]).version == 6
        if re.fullmatch(r"[0-9.]+", host):
            return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False
    return _HOSTNAME.fullmatch(host) is not None


def turn_credentials(secret: bytes, peer_id: int, now: float, ttl: int) -> tuple[str, str]:
    """The TURN REST API username ``EXPIRY:ID`` and its credential."""
    username = "%d:%d" % (int(now) + ttl, peer_id)
    digest = hmac.new(secret, username.encode("ascii"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class IceSettings:
    """What ``/ice-servers`` hands out: TURN URIs (with the secret), STUN URIs."""

    turn_uris: tuple[str, ...] = ()
    stun_uris: tuple[str, ...] = ()
    ttl: int = DEFAULT_TTL

    def configuration(self, secret: Optional[bytes], peer_id: int, now: float) -> dict:
        """The RTCConfiguration-shaped answer for one peer at time ``now``."""
        servers = []
        if self.turn_uris and secret is not None:
            username, credential = turn_credentials(secret, peer_id, now, self.ttl)
            servers.append({"urls": list(self.turn_uris), "username": username,
                            "credential": credential})
        if self.stun_uris:
            servers.append({"urls": list(self.stun_uris)})
        return {"iceServers": servers, "ttl": self.ttl}

    def body(self, secret: Optional[bytes], peer_id: int, now: float) -> bytes:
        return json.dumps(self.configuration(secret, peer_id, now)).encode("ascii")
