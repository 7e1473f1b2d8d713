"""
The peerconnection signaling protocol, as pure functions: no I/O.

Server, pcpeer, benchmark and tests all speak the wire format through this
module, so they agree on it by construction.  See PROTOCOL.md in the
repository's shared documentation; in short:

- a peer list entry is ``name,id,connected\\n``;
- a sign-in name is the query string after ``?``, percent-decoded, cleaned so
  that it can never break that line format, and at most 512 bytes;
- ids are parsed the way the reference server does (``atoi`` on the text
  after ``peer_id=`` / ``to=``);
- messages between peers are opaque to the server; peers send JSON session
  descriptions and ICE candidates, or the plain text ``BYE``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional, Union
from urllib.parse import unquote_to_bytes

MAX_NAME_BYTES = 512
MAX_PEER_ID = 2**31 - 1  # the native client keeps ids in a C int

SIGN_IN = b"/sign_in"
SIGN_OUT = b"/sign_out"
WAIT = b"/wait"
MESSAGE = b"/message"
# The WebSocket transport (docs/protocol.rst): its path and subprotocol.
WEBSOCKET = b"/ws"
WEBSOCKET_SUBPROTOCOL = "pcsignal.v1"

BYE = b"BYE"

# Characters that could split or forge a peer-list line: the separator, every
# C0/C1 control character (newline!), DEL, and the Unicode line and paragraph
# separators that str.splitlines() and some clients treat as line breaks.
_UNSAFE_NAME_CHARS = re.compile("[,\x00-\x1f\x7f-\x9f\u2028\u2029\u0085]")


# -- peer list entries --------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One line of a peer list: a peer and whether it is signed in."""

    name: str
    peer_id: int
    connected: bool


def format_entry(name: str, peer_id: int, connected: bool) -> bytes:
    return b"%s,%d,%d\n" % (name.encode("utf-8"), peer_id, 1 if connected else 0)


def parse_entry(line: Union[bytes, str]) -> Optional[Entry]:
    """
    Parse one ``name,id,connected`` line; None if it is not one.

    The name is everything before the last two commas, so a (non-pcsignal)
    server that lets commas through still parses.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.rstrip("\r\n")
    parts = line.rsplit(",", 2)
    if len(parts) != 3:
        return None
    name, peer_id, connected = parts
    pid = atoi(peer_id)
    if pid is None or connected not in ("0", "1"):
        return None
    return Entry(name, pid, connected == "1")


def parse_entries(body: Union[bytes, str]) -> list[Entry]:
    """Parse a sign-in answer or notification body into entries."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    entries = []
    for line in body.split("\n"):
        if line.strip():
            entry = parse_entry(line)
            if entry is not None:
                entries.append(entry)
    return entries


# -- names ---------------------------------------------------------------------


def clean_name(raw: Union[bytes, str], peer_id: int) -> str:
    """
    Turn the raw sign-in query string into a safe peer name.

    Percent-decoded (``+`` stays a plus, as in the reference); invalid UTF-8
    becomes U+FFFD; ``,`` and every control or line-breaking character
    becomes ``_``; cut to at most MAX_NAME_BYTES bytes of UTF-8 without
    splitting a character; empty becomes ``peer_<id>``.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    text = unquote_to_bytes(raw).decode("utf-8", "replace")
    text = _UNSAFE_NAME_CHARS.sub("_", text)
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES:
        text = encoded[:MAX_NAME_BYTES].decode("utf-8", "ignore")
    return text or "peer_%d" % (peer_id,)


# -- ids -----------------------------------------------------------------------


def websocket_url(server_url: str, path: str = WEBSOCKET.decode()) -> str:
    """The ws:// (or wss://) URL of path on the server at an http:// (https://) URL."""
    scheme, sep, rest = server_url.rstrip("/").partition("://")
    return {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme) + sep + rest + path


def atoi(text: Union[bytes, str]) -> Optional[int]:
    """
    The reference's id parsing: leading whitespace, optional sign, leading
    digits.  Returns None where the result cannot be a peer id (no digits,
    zero, negative, or too big for a C int).
    """
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    match = re.match(r"\s*([+-]?)(\d+)", text)
    if match is None or match.group(1) == "-":
        return None
    value = int(match.group(2)[:12])  # 12 digits already exceed MAX_PEER_ID
    if not 0 < value <= MAX_PEER_ID:
        return None
    return value


def query_peer_id(query: bytes) -> Optional[int]:
    """``peer_id=`` found anywhere in the query string, as the reference does."""
    found = query.find(b"peer_id=")
    if found < 0:
        return None
    return atoi(query[found + len(b"peer_id=") :])


def query_to(query: bytes) -> Optional[int]:
    """``to=`` as a parameter: at the start of the query or right after ``&``."""
    start = 0
    while True:
        found = query.find(b"to=", start)
        if found < 0:
            return None
        if found == 0 or query[found - 1 : found] == b"&":
            return atoi(query[found + 3 :])
        start = found + 3


# -- messages between peers ----------------------------------------------------


@dataclass(frozen=True)
class SessionDescription:
    """``{"type": "offer" | "answer" | "offer-loopback", "sdp": ...}``"""

    type: str
    sdp: str

    def encode(self) -> bytes:
        return _dumps({"type": self.type, "sdp": self.sdp})


@dataclass(frozen=True)
class IceCandidate:
    """``{"sdpMid": ..., "sdpMLineIndex": ..., "candidate": "candidate:..."}``"""

    sdpMid: Optional[str]
    sdpMLineIndex: Optional[int]
    candidate: str

    def encode(self) -> bytes:
        return _dumps(
            {
                "sdpMid": self.sdpMid,
                "sdpMLineIndex": self.sdpMLineIndex,
                "candidate": self.candidate,
            }
        )


@dataclass(frozen=True)
class Bye:
    """The plain text ``BYE``: hang up."""

    def encode(self) -> bytes:
        return BYE


@dataclass(frozen=True)
class Unrecognised:
    """Anything else: kept so that callers can log why they ignored it."""

    body: bytes
    reason: str


PeerMessage = Union[SessionDescription, IceCandidate, Bye, Unrecognised]


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(", ", ": ")).encode("utf-8")


def parse_message(body: bytes) -> PeerMessage:
    """Classify a message body sent by the native client or a browser page."""
    if body.strip() == BYE:
        return Bye()
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return Unrecognised(body, "not JSON: %s" % (e,))
    if not isinstance(obj, dict):
        return Unrecognised(body, "JSON but not an object")
    kind = obj.get("type")
    if isinstance(kind, str):
        sdp = obj.get("sdp")
        if not isinstance(sdp, str):
            return Unrecognised(body, "session description without sdp")
        return SessionDescription(kind, sdp)
    candidate = obj.get("candidate")
    if isinstance(candidate, str):
        mid = obj.get("sdpMid")
        index = obj.get("sdpMLineIndex")
        if mid is not None and not isinstance(mid, str):
            return Unrecognised(body, "sdpMid is not a string")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            return Unrecognised(body, "sdpMLineIndex is not an integer")
        return IceCandidate(mid, index, candidate)
    return Unrecognised(body, "neither a session description nor a candidate")
