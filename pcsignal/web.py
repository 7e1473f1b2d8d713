"""
twisted.web resources for the signaling protocol.

Each resource parses its request, makes one IChannel call and writes the
answer when the Deferred fires.  Answers are byte-compatible with the
reference peerconnection_server: same status line, same headers in the same
order and spelling (the native client searches them case-sensitively), a
Content-Length on every answer, and the reference's CORS set.
"""

from __future__ import annotations

import io
import os
import re
import time
from typing import Optional
from urllib.parse import unquote_to_bytes

from twisted.internet import tcp, unix
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import resource, server, static
from twisted.web.http import HTTPChannel
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from zope.interface import implementer

from pcsignal.logs import clip
from pcsignal import ice, logs, __version__, protocol
from pcsignal.listeners import describe
from pcsignal.ratelimit import TokenBuckets, address_key, retry_after
from pcsignal.settle import OPEN, Deliveries, os_socket, socket_state
from pcsignal.channel import (
    ChannelError,
    IChannel,
    Item,
    MailboxFull,
    ServerBusy,
    ServerFull,
    ShuttingDown,
    StoreUnavailable,
    UnknownPeer,
    WaitReplaced,
)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

SERVER = b"pcsignal/" + __version__.encode("ascii")
CORS = [
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Credentials", b"true"),
    (b"Access-Control-Allow-Methods", b"POST, GET, OPTIONS"),
    (b"Access-Control-Allow-Headers", b"Content-Type, Content-Length, Connection, Cache-Control"),
    (b"Access-Control-Expose-Headers", b"Content-Length, X-Peer-Id"),
]
TEXT = b"text/plain"
JSON = b"application/json"
PROMETHEUS_TEXT = CONTENT_TYPE_LATEST.encode("ascii")
_access_log = logs.logger("pcsignal.access")
_web_log = logs.logger("pcsignal.web")

# Status and reason phrase for each refusal; the body is the error's text.
_STATUS = {
    UnknownPeer: (500, b"Error"),
    ServerFull: (503, b"Service Unavailable"),
    MailboxFull: (503, b"Service Unavailable"),
    ServerBusy: (503, b"Service Unavailable"),
    ShuttingDown: (503, b"Service Unavailable"),
    StoreUnavailable: (503, b"Service Unavailable"),
    WaitReplaced: (409, b"Conflict"),
}
_REJECTION_REASON = {
    UnknownPeer: "unknown_peer",
    ServerFull: "server_full",
    MailboxFull: "mailbox_full",
    ServerBusy: "queued_bytes_full",
    ShuttingDown: "shutting_down",
    StoreUnavailable: "store_unavailable",
    WaitReplaced: "wait_replaced",
}


_SERVER_LINE = b"Server: " + SERVER + b"\r\nCache-Control: no-cache\r\n"
_CORS_LINES = b"".join(name + b": " + value + b"\r\n" for name, value in CORS)

# Limits on a request's head (docs/server.rst, "Limits and errors").
MAX_REQUEST_LINE = 8192  # method, target and version: beyond it, 414
MAX_HEAD_BYTES = 16384  # request line and headers together: beyond it, 431
MAX_HEADERS = 100  # header lines: beyond it, 431
# A header name longer than this: 431.  twisted.web remembers up to 10,000
# distinct header names for good; short names keep that memory small.
MAX_HEADER_NAME = 256
# A Content-Length line longer than this announces more than 10^18 bytes.
_LONGEST_LENGTH_LINE = len(b"Content-Length: ") + 18 + 64  # spaces allowed around the value
# Connections send_now() may write to directly (not their subclasses).
_SEND_NOW = (tcp.Server, unix.Server)


def head(
    code: int,
    reason: bytes,
    length: int,
    close: bool,
    content_type: Optional[bytes] = TEXT,
    pragma: Optional[int] = None,
    extra: bytes = b"",
) -> list:
    """An answer's status line and headers, in the reference's order."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (code, reason), _SERVER_LINE]
    if close:
        lines.append(b"Connection: close\r\n")
    if content_type:
        # A header value from a client could carry a bare LF; never echo one.
        lines.append(b"Content-Type: %s\r\n"
                     % content_type.replace(b"\r", b" ").replace(b"\n", b" "))
    lines.append(b"Content-Length: %d\r\n" % (length,))
    if pragma is not None:
        lines.append(b"Pragma: %d\r\n" % (pragma,))
    if extra:
        lines.append(extra)
    lines.append(_CORS_LINES)
    lines.append(b"\r\n")
    return lines


def send_now(transport, data: list) -> None:
    """
    Write data to a plain TCP or unix connection at once when nothing waits
    to go before it, as asyncio's transports do; Twisted's would buffer it,
    ask the reactor to watch the socket for writing, send it on the next
    turn and stop watching: two epoll_ctl calls and a turn per answer.
    Whatever the kernel does not take now, and every other transport (TLS,
    the PROXY protocol's wrapper), goes the usual way.
    """
    if (type(transport) in _SEND_NOW and transport.connected and not transport.disconnecting
            and not transport.TLS and not getattr(transport, "_writeDisconnected", True)
            and getattr(transport, "_tempDataLen", 1) == 0
            and len(transport.dataBuffer) == transport.offset):
        payload = b"".join(data)
        try:
            sent = transport.socket.send(payload)
        except OSError:
            sent = 0  # the transport's own write meets the error and reports it
        if sent < len(payload):
            transport.write(payload[sent:])
        return
    transport.writeSequence(data)


def respond(
    request: "SignalingRequest",
    code: int,
    reason: bytes,
    body: bytes = b"",
    content_type: Optional[bytes] = TEXT,
    pragma: Optional[int] = None,
    extra: bytes = b"",
) -> None:
    """
    Write a complete answer with the reference's headers, in its order;
    ``extra`` is more header lines, each ending in CRLF.

    The head is joined from constant byte strings rather than built through
    twisted.web's Headers: this is the hot path of every relayed message.
    """
    if request.gone:
        return
    if request.site.stopping:
        request.channel.persistent = False
    data = head(code, reason, len(body), not request.channel.persistent, content_type,
                pragma, extra)
    if request.method != b"HEAD":
        data.append(body)
    request.setResponseCode(code, reason)
    request.write_raw(data, len(body))
    request.finish()


def respond_error(request: "SignalingRequest", code: int, reason: bytes, text: str, why: str,
                  extra: bytes = b""):
    request.site.count_rejection(why, "%s %s" % (clip(request.method), clip(request.path)))
    respond(request, code, reason, text.encode("utf-8"), extra=extra)


def refusal(error: ChannelError) -> tuple[int, bytes, str]:
    """A channel refusal's HTTP status, reason phrase and metrics label (both transports)."""
    code, reason = _STATUS[type(error)]
    return code, reason, _REJECTION_REASON[type(error)]


def respond_failure(request: "SignalingRequest", failure: Failure) -> None:
    """Answer a failed channel call; anything unexpected is a logged 500."""
    if failure.check(CancelledError):
        return  # the client left first; nothing to answer
    error = failure.value
    if isinstance(error, ChannelError):
        code, reason, why = refusal(error)
        respond_error(request, code, reason, str(error), why)
    else:
        request.site.log_failure(failure)
        respond(request, 500, b"Internal Server Error", b"Internal server error.")


def respond_item(request: "SignalingRequest", item: Item, receiver: int) -> None:
    respond(request, 200, b"OK", item.body, item.content_type, item.pragma_for(receiver))


def query(request) -> bytes:
    return request.uri.partition(b"?")[2]


_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def decode_strictly(raw: bytes, what: str) -> tuple[Optional[str], Optional[str]]:
    """
    Percent-decode raw (a path or a sign-in name) and read it as UTF-8:
    (text, None), or (None, why not) as the short text of a 400.
    """
    if _BAD_PERCENT.search(raw):
        return None, "Invalid percent-encoding in %s." % (what,)
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None, "Invalid UTF-8 in %s." % (what,)
    return text, None


def path_error(path: bytes) -> Optional[str]:
    """Why a path outside the protocol's own cannot be looked up, or None."""
    text, error = decode_strictly(path, "path")
    if error is None and "\x00" in text:
        error = "NUL byte in path."
    return error


class _Discard:
    """A request body sink for bodies that are refused: nothing is kept."""

    def write(self, data):
        pass

    def seek(self, *args):
        return 0

    def tell(self):
        return 0

    def read(self, *args):
        return b""

    def close(self):
        pass


class SignalingRequest(server.Request):
    """
    A Request that refuses oversized bodies before buffering them, answers
    OPTIONS (CORS preflight) for any path, and knows when its client left.
    """

    defaultContentType = None  # a message keeps its sender's Content-Type, or none
    gone = False
    too_large = False

    def gotLength(self, length):
        limit = self.channel.site.max_message_bytes
        if length is not None and length > limit:
            self.too_large = True
            self.content = _Discard()
        else:
            # Bounded by the limit, so always in memory (never a temp file).
            self.content = io.BytesIO()

    def handleContentChunk(self, data):
        if not self.too_large:
            # Chunked bodies announce no length: count as they come.
            if self.content.tell() + len(data) > self.channel.site.max_message_bytes:
                self.too_large = True
                self.content = _Discard()
                return
            self.content.write(data)

    def process(self):
        self.site = self.channel.site
        self.started = time.monotonic()
        if self.method == b"OPTIONS":
            respond(self, 200, b"OK", content_type=None)
            return
        handler = self.site.routes.get(self.path)
        if handler is None:
            # Static files and metrics: full traversal, of a path that can
            # name a file (twisted.web and the file system fail on others).
            error = path_error(self.path)
            if error is not None:
                respond_error(self, 400, b"Bad Request", error, "bad_path")
                return
            # The client's files are small: whole files only, and no parsing
            # (and logging) of a client's Range header by twisted.web.
            self.requestHeaders.removeHeader(b"Range")
            server.Request.process(self)
            return
        # The protocol paths are matched exactly, as the reference does, so
        # skip twisted.web's traversal and default headers on the hot path.
        self.prepath, self.postpath = [self.path[1:]], []
        try:
            handler.render(self)
        except BaseException:
            self.processingFailed(Failure())

    def write_raw(self, data: list, length: int) -> None:
        """Write a whole answer, head included, prepared by respond()."""
        self.startedWriting = 1
        self.sentLength = length
        send_now(self.channel.transport, data)

    def write(self, data):
        if not self.startedWriting and not self.responseHeaders.hasHeader(b"Access-Control-Allow-Origin"):
            # Answers from twisted.web's own resources (static files, its
            # error pages): the same Server and CORS headers as every answer.
            for name, value in CORS:
                self.responseHeaders.setRawHeaders(name, [value])
            self.responseHeaders.removeHeader(b"Date")
            self.responseHeaders.setRawHeaders(b"Server", [SERVER])
        server.Request.write(self, data)

    def finish(self):
        self.site.observe_request(self)
        return server.Request.finish(self)

    def connectionLost(self, reason):
        self.gone = True
        server.Request.connectionLost(self, reason)


@implementer(IHalfCloseableProtocol)
class SignalingHTTPChannel(HTTPChannel):
    """
    HTTPChannel that writes the reference's ``HTTP/1.1`` status line to
    every client (RFC 9110 too: a server sends its own highest version),
    answers an over-long request line with 414 and an over-large head with
    431, and closes connections that take longer than the site's
    request_timeout to send one request's head and body (slowloris), or
    send nothing at all.  Parked waits are not affected: the deadline ends
    once a request has been read.

    While a /wait answer on it is unsettled (``answer``, see
    pcsignal.settle), it reports what the client does next, and after a
    ``Connection: close`` answer it only half-closes, so that the client's
    FIN or reset still arrives.
    """

    # LineReceiver's longest line, lowered to what is left of the head's
    # budget as its lines arrive: a head too large is refused as soon as it
    # is, with or without line ends.
    MAX_LENGTH = MAX_REQUEST_LINE
    # twisted.web's own limits (answered 400) stay as a backstop: ours answer first.
    totalHeadersSize = MAX_HEAD_BYTES
    maxHeaders = MAX_HEADERS

    _deadline = None
    _head_bytes = None  # bytes of the request head read so far; None between requests
    _header_lines = 0
    answer = None  # a settle.Answer written here and not yet settled
    client_closed = False  # the client sent FIN: all it will send
    _write_closed = False  # we sent FIN after everything written
    fresh = True  # nothing received yet

    def writeHeaders(self, version, code, reason, headers):
        HTTPChannel.writeHeaders(self, b"HTTP/1.1", code, reason, headers)

    def connectionMade(self):
        HTTPChannel.connectionMade(self)
        self.site.connections.add(self)
        # Every Request asks; without this, one getsockname() call each.
        self._host = HTTPChannel.getHost(self)
        # A connection that never sends a byte is as slow as can be.
        self._deadline = self.callLater(self.site.request_timeout, self._too_slow)

    def getHost(self):
        return self._host

    def dataReceived(self, data):
        self.fresh = False
        if self.answer is not None:
            self.answer.next_request()
        if self._deadline is None and not self._handlingRequest:
            self._deadline = self.callLater(self.site.request_timeout, self._too_slow)
        HTTPChannel.dataReceived(self, data)

    def lineReceived(self, line):
        if self._head_bytes is None:
            if line:  # the request line (an empty line before it is allowed)
                self._head_bytes = len(line)
                self._header_lines = 0
                self.MAX_LENGTH = MAX_HEAD_BYTES - self._head_bytes
        elif line:
            self._head_bytes += len(line)
            self.MAX_LENGTH = MAX_HEAD_BYTES - self._head_bytes
            if line[0] not in b" \t":  # not a folded continuation
                self._header_lines += 1
                if self._header_lines > MAX_HEADERS or (
                        len(line) > MAX_HEADER_NAME
                        and line.find(b":", 0, MAX_HEADER_NAME + 1) < 0):
                    self._headers_too_large(line)
                    return
                if len(line) > _LONGEST_LENGTH_LINE and line[:15].lower() == b"content-length:":
                    # More digits than int() takes (twisted.web would raise): too large anyway.
                    self._refuse_head(413, b"Payload Too Large",
                                      "Message body larger than %d bytes; not delivered."
                                      % (self.site.max_message_bytes,), "too_large", line)
                    return
        else:  # the end of the head
            self._head_bytes = None
            self.MAX_LENGTH = MAX_REQUEST_LINE
        HTTPChannel.lineReceived(self, line)

    def lineLengthExceeded(self, line):
        if self._head_bytes is None:
            self._refuse_head(414, b"URI Too Long", "Request line longer than %d bytes."
                              % (MAX_REQUEST_LINE,), "uri_too_long", line)
        else:
            self._headers_too_large(line)

    def _headers_too_large(self, line):
        self._refuse_head(431, b"Request Header Fields Too Large",
                          "Request head over %d bytes, %d header lines or a %d-byte header name."
                          % (MAX_HEAD_BYTES, MAX_HEADERS, MAX_HEADER_NAME), "headers_too_large",
                          line)

    def _refuse_head(self, code, reason, text, why, line):
        # The request line up to its query (names, ids) or, for a header, nothing:
        # it may be a credential.
        shown = clip(line.partition(b"?")[0]) if why == "uri_too_long" else "request head"
        self.site.count_rejection(why, "%s from %s" % (shown, describe(self.transport.getPeer())))
        body = text.encode("ascii")
        self.transport.writeSequence(head(code, reason, len(body), True) + [body])
        self.loseConnection()

    def allContentReceived(self):
        self._cancel_deadline()
        HTTPChannel.allContentReceived(self)

    def loseConnection(self):
        """
        HTTPChannel's close after a ``Connection: close`` answer.  With an
        answer unsettled, send FIN but keep reading (a half-close), unless
        TLS, which has no half-close; TLS's close waits for the client's
        close_notify.
        """
        if self.answer is not None and not self.isSecure():
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()
        else:
            HTTPChannel.loseConnection(self)

    def readConnectionLost(self):
        """
        The client sent FIN: all it will send (a shutdown after its
        request).  With an answer unsettled, that FIN is evidence to weigh
        (settle.Answer.closed_by_client) once the whole answer has gone out;
        otherwise the answers already written still reach the client, then
        the connection closes.
        """
        self.client_closed = True
        if self.answer is None:
            self.loseConnection()
        elif self._write_closed:
            self.answer.closed_by_client()
        else:
            # Send the rest of the answer first; writeConnectionLost follows.
            self.transport.loseWriteConnection()

    def writeConnectionLost(self):
        """Everything written went to the kernel, then our FIN."""
        self._write_closed = True
        if self.answer is None:
            self.loseConnection()
        elif self.client_closed:
            self.answer.closed_by_client()

    def answer_settled(self):
        if self.client_closed or self._write_closed:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.answer is not None:
            self.answer.lost(reason, self.isSecure())
        self._cancel_deadline()
        HTTPChannel.connectionLost(self, reason)
        self.site.connection_lost(self)

    def _cancel_deadline(self):
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self):
        self._deadline = None
        self.site.count_rejection(
            "request_timeout", "connection from %s, request not received within %gs"
            % (describe(self.transport.getPeer()), self.site.request_timeout))
        self.transport.abortConnection()


class RefusedConnection(Protocol):
    """A connection over the site's limit: closed at once, nothing read or written."""

    def connectionMade(self):
        self.transport.abortConnection()


class RefusalLog:
    """
    Refusals, logged by bursts so that a flood cannot flood the log: the
    first refusal for a reason is logged as it happens; more for that reason
    are only counted until ``quiet`` seconds pass without one, when one line
    tells how many there were.
    """

    def __init__(self, logger, clock, quiet: float = 10.0):
        self.logger = logger
        self.clock = clock
        self.quiet = quiet
        self._bursts: dict[str, list] = {}  # reason -> [more, first, last, timer]

    def refused(self, why: str, what: str) -> None:
        burst = self._bursts.get(why)
        now = self.clock.seconds()
        if burst is None:
            self.logger.info("refused {what}: {why}", what=what, why=why)
            self._bursts[why] = [0, now, now, self.clock.callLater(self.quiet, self._end, why)]
        else:
            burst[0] += 1
            burst[2] = now

    def _end(self, why: str) -> None:
        burst = self._bursts[why]
        more, first, last, _ = burst
        idle = self.clock.seconds() - last
        if idle < self.quiet:
            burst[3] = self.clock.callLater(self.quiet - idle, self._end, why)
            return
        del self._bursts[why]
        if more:
            self.logger.info("refused {more} more ({why}) in {seconds:.1f}s after the first",
                             more=more, why=why, seconds=last - first)

    def stop(self) -> None:
        """Log every burst still open, now."""
        for why, burst in list(self._bursts.items()):
            if burst[3].active():
                burst[3].cancel()
            burst[2] = -self.quiet  # long quiet: ends at once
            self._end(why)


# -- resources ------------------------------------------------------------------


class Endpoint(resource.Resource):
    """
    A resource at one exact path, answered with respond(): the protocol's
    four, /healthz and /metrics.  Wrong methods get 405 with ``Allow``.
    """

    isLeaf = True
    methods = (b"GET",)

    def __init__(self, channel: IChannel):
        resource.Resource.__init__(self)
        self.channel = channel

    def render(self, request):
        if request.method not in self.methods:
            refuse_method(request, self.methods)
            return server.NOT_DONE_YET
        self.handle(request)
        return server.NOT_DONE_YET

    def peer_id(self, request) -> Optional[int]:
        peer_id = protocol.query_peer_id(query(request))
        if peer_id is None:
            respond_failure(request, Failure(UnknownPeer()))
        return peer_id


def refuse_method(request: SignalingRequest, methods: tuple) -> None:
    """405, with the methods the resource takes (and OPTIONS, which every path takes)."""
    respond_error(request, 405, b"Method Not Allowed",
                  "%s not allowed here." % (clip(request.method),), "method_not_allowed",
                  b"Allow: " + b", ".join(methods + (b"OPTIONS",)) + b"\r\n")


def sign_in_limited(limit: Optional[TokenBuckets], address) -> Optional[tuple[int, str]]:
    """
    None if a sign-in from this address is within the rate limit (and takes
    its token), else (seconds to wait, the refusal's text); both transports.
    """
    if limit is None:
        return None
    wait = limit.take(address_key(address))
    if not wait:
        return None
    seconds = retry_after(wait)
    return seconds, "Too many sign-ins from your address; retry in %d s." % (seconds,)


# GET or POST, as the reference accepts; never HEAD, which must not change state.
class SignIn(Endpoint):
    methods = (b"GET", b"POST")

    def __init__(self, channel: IChannel, limit: Optional[TokenBuckets] = None):
        Endpoint.__init__(self, channel)
        self.limit = limit

    def handle(self, request):
        limited = sign_in_limited(self.limit, request.getClientAddress())
        if limited is not None:
            seconds, text = limited
            respond_error(request, 429, b"Too Many Requests", text, "sign_in_rate",
                          b"Retry-After: %d\r\n" % (seconds,))
            return
        raw_name = query(request)
        _, error = decode_strictly(raw_name, "name")
        if error is not None:
            respond_error(request, 400, b"Bad Request", error, "bad_name")
            return
        d = self.channel.sign_in(raw_name)
        d.addCallbacks(
            lambda signed_in: respond(request, 200, b"Added", signed_in.body, TEXT,
                                      signed_in.peer_id),
            lambda f: respond_failure(request, f),
        )


class SignOut(Endpoint):
    methods = (b"GET", b"POST")

    def handle(self, request):
        peer_id = self.peer_id(request)
        if peer_id is not None:
            d = self.channel.sign_out(peer_id)
            d.addCallbacks(lambda _: respond(request, 200, b"OK"),
                           lambda f: respond_failure(request, f))


class Wait(Endpoint):
    """The hanging GET: answered at once from the mailbox, or parked."""

    methods = (b"GET", b"POST")

    def __init__(self, channel: IChannel):
        Endpoint.__init__(self, channel)
        self.parked: dict[int, SignalingRequest] = {}  # by peer id

    def handle(self, request):
        peer_id = self.peer_id(request)
        if peer_id is None:
            return
        if peer_id in self.parked and socket_state(os_socket(request.channel.transport)) != OPEN:
            # Read after its client had reset or closed the connection (the
            # bytes were in before): it must not replace the live one.
            return
        request.site.deliveries.new_wait(peer_id)
        d = self.channel.wait(peer_id)
        if not d.called:
            self.parked[peer_id] = request
            # If the client leaves first, un-park without consuming an item.
            request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(lambda delivery: self.deliver(request, delivery, peer_id),
                       lambda f: self.refuse(request, f, peer_id))

    def unpark(self, request, peer_id):
        if self.parked.get(peer_id) is request:
            del self.parked[peer_id]

    def refuse(self, request, failure, peer_id):
        self.unpark(request, peer_id)
        respond_failure(request, failure)

    def deliver(self, request, delivery, peer_id):
        self.unpark(request, peer_id)
        deliveries = request.site.deliveries
        if request.gone or request.channel.client_closed:
            # It left (or said it was done) before the answer: nobody to read it.
            deliveries.settle(peer_id, delivery.n, False, "gone")
            return
        # In flight until the connection shows whether it was read.
        deliveries.handed(request.channel, peer_id, delivery.n)
        respond_item(request, delivery.item, peer_id)


class Message(Endpoint):
    methods = (b"POST",)

    def handle(self, request):
        if request.too_large:
            respond_error(request, 413, b"Payload Too Large",
                          "Message body larger than %d bytes; not delivered."
                          % (request.site.max_message_bytes,), "too_large")
            return
        q = query(request)
        from_id = protocol.query_peer_id(q)
        to_id = protocol.query_to(q)
        body = request.content.getvalue()
        if not body:
            respond_error(request, 400, b"Bad Request", "Message body required.", "empty_body")
            return
        if from_id is None or to_id is None:
            respond_failure(request, Failure(UnknownPeer()))
            return
        content_type = request.getHeader(b"Content-Type")
        if from_id == to_id:
            # The reference echoes a message to oneself straight back.
            d = self.channel.check(from_id)
            d.addCallback(lambda _: respond(request, 200, b"OK", body, content_type, from_id))
        else:
            d = self.channel.post(from_id, to_id, content_type, body)
            d.addCallback(lambda _: respond(request, 200, b"OK"))
        d.addErrback(lambda f: respond_failure(request, f))


class IceServers(Endpoint):
    """
    ``/ice-servers?peer_id=ID``: STUN and TURN servers, with TURN credentials,
    for a signed-in peer only; an unknown id gets what ``/wait`` gets.  The
    secret (a TurnSecret, or None) is read at each answer, so a reload of it
    counts at once.  Credentials are never logged.
    """

    def __init__(self, channel: IChannel, servers: ice.IceSettings, secret=None):
        Endpoint.__init__(self, channel)
        self.servers = servers
        self.secret = secret

    def handle(self, request):
        peer_id = self.peer_id(request)
        if peer_id is not None:
            d = self.channel.check(peer_id)
            d.addCallbacks(lambda _: self.answer(request, peer_id),
                           lambda f: respond_failure(request, f))

    def answer(self, request, peer_id: int) -> None:
        secret = None if self.secret is None else self.secret.value
        body = self.servers.body(secret, peer_id, request.site.reactor.seconds())
        respond(request, 200, b"OK", body, JSON)


class NotFound(resource.Resource):
    isLeaf = True

    def render(self, request):
        respond_error(request, 404, b"Not Found", "No such resource.", "not_found")
        return server.NOT_DONE_YET


class Healthz(Endpoint):
    methods = (b"GET", b"HEAD")

    def handle(self, request):
        problem = self.channel.problem  # e.g. its Redis cannot be reached
        if problem is not None:
            respond(request, 503, b"Service Unavailable", b"unavailable: %s\n"
                    % (problem.encode("utf-8"),))
        else:
            respond(request, 200, b"OK", b"ok %d peers\n" % (self.channel.peer_count,))


class Metrics(Endpoint):
    """/metrics in Prometheus text format."""

    def __init__(self, registry):
        resource.Resource.__init__(self)
        self.registry = registry

    def handle(self, request):
        respond(request, 200, b"OK", generate_latest(self.registry), PROMETHEUS_TEXT)


class NotAllowed(resource.Resource):
    isLeaf = True

    def __init__(self, methods: tuple):
        resource.Resource.__init__(self)
        self.methods = methods

    def render(self, request):
        refuse_method(request, self.methods)
        return server.NOT_DONE_YET


class StaticRoot(resource.Resource):
    """
    The browser client (a flat directory, index.html at /), read-only;
    anything else is 404.
    """

    methods = (b"GET", b"HEAD")

    def __init__(self, static_dir=STATIC_DIR):
        resource.Resource.__init__(self)
        self._static = static.File(static_dir, defaultType="application/octet-stream")
        self._static.indexNames = ["index.html"]
        self._not_found = NotFound()
        self._not_allowed = NotAllowed(self.methods)

    def getChildWithDefault(self, name, request):
        if request.postpath:  # a segment after this one: not in a flat directory
            return self._not_found
        if request.path == b"/":
            child = self._static.getChild(b"", request)
        else:
            child = self._static.getChildWithDefault(name, request)
            if not (isinstance(child, static.File) and child.exists() and not child.isdir()):
                return self._not_found
        if request.method not in self.methods:
            return self._not_allowed
        return child


def health_and_metrics(channel: IChannel, metrics=None) -> dict:
    """The routes of /healthz and (with metrics) /metrics."""
    routes = {b"/healthz": Healthz(channel)}
    if metrics is not None:
        routes[b"/metrics"] = Metrics(metrics.registry)
    return routes


class SignalingSite(server.Site):
    """
    The Site: protocol root, limits, and the hooks for metrics and logs.
    ``internal_routes=False`` leaves /healthz and /metrics to an InternalSite.

    Access logging is off unless asked for: request lines carry peer names
    and ids.
    """

    protocol = SignalingHTTPChannel
    requestFactory = SignalingRequest
    noisy = False

    def __init__(
        self,
        channel: IChannel,
        max_message_bytes: int = 64 * 1024,
        request_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        access_log: bool = False,
        metrics=None,
        reactor=None,
        sign_in_rate: float = 0.0,
        sign_in_burst: int = 1,
        max_connections: Optional[int] = None,
        ice_settings: ice.IceSettings = ice.IceSettings(),
        turn_secret=None,
        internal_routes: bool = True,
    ):
        """
        ``sign_in_rate`` sign-ins a second per client address, after a burst
        of ``sign_in_burst`` (0: no limit); ``max_connections`` open
        connections at most (None: no limit).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.sign_in_limit = (TokenBuckets(reactor, sign_in_rate, sign_in_burst)
                              if sign_in_rate > 0 else None)
        # Exact paths, dispatched by SignalingRequest.process without traversal.
        self.routes = {
            protocol.SIGN_IN: SignIn(channel, self.sign_in_limit),
            protocol.SIGN_OUT: SignOut(channel),
            protocol.WAIT: Wait(channel),
            protocol.MESSAGE: Message(channel),
            ice.PATH: IceServers(channel, ice_settings, turn_secret),
        }
        if internal_routes:
            self.routes.update(health_and_metrics(channel, metrics))
        # Bodies are opaque messages, never forms: no form parsing (it is
        # slow, and would turn a multipart-typed message into a 400).
        server.Site.__init__(self, StaticRoot(), parsePOSTFormSubmission=False,
                             timeout=idle_timeout, reactor=reactor)
        self.channel = channel
        self.max_message_bytes = max_message_bytes
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.access_log = access_log
        self.metrics = metrics
        self.deliveries = Deliveries(channel, self.reactor, metrics)
        if metrics is not None:
            metrics.unsettled.set_function(lambda: len(self.deliveries))
        self.connections: set[SignalingHTTPChannel] = set()
        self.refusals = RefusalLog(_web_log, reactor)
        self.stopping = False
        self._drained: Optional[Deferred] = None
        if metrics is not None:
            metrics.watch_site(self)

    def buildProtocol(self, addr):
        if self.max_connections is not None and len(self.connections) >= self.max_connections:
            # Cheap: no HTTP parsing, no answer; the client sees a reset.
            self.count_rejection("max_connections", "connection from %s: %d open"
                                 % (describe(addr), len(self.connections)))
            return RefusedConnection()
        return server.Site.buildProtocol(self, addr)

    def drain(self, grace: float = 5.0, fresh_grace: float = 1.0) -> Deferred:
        """
        Fire once every connection has closed: idle keep-alive ones are
        closed now, answered ones close after their answer is flushed.  A
        connection accepted just before the stop whose request has not been
        read yet gets ``fresh_grace`` seconds to send it (closing it would
        fail a request the client already sent).  Whatever is left after
        ``grace`` seconds is aborted.
        """
        self.stopping = True
        self.refusals.stop()
        if not self.connections:
            return succeed(None)
        for conn in list(self.connections):
            # One with an answer unsettled closes once it is settled.
            if not conn.requests and not conn.fresh and conn.answer is None:
                conn.transport.loseConnection()
        self._drained = Deferred()
        timers = [self.reactor.callLater(min(fresh_grace, grace), self._close_fresh),
                  self.reactor.callLater(grace, self._abort_all)]
        self._drained.addBoth(lambda r: ([t.cancel() for t in timers if t.active()], r)[1])
        return self._drained

    def _close_fresh(self):
        for conn in list(self.connections):
            if not conn.requests and conn.answer is None:
                conn.transport.loseConnection()

    def hang_up(self) -> None:
        """
        Close every connection whose requests are parked waits, without an
        answer: a stop that keeps the peers (``--state-file``).  The native
        client re-issues a /wait whose connection closed, and reaches the
        next process; a 503 would make it give up.
        """
        self.stopping = True
        for conn in list(self.connections):
            if conn.requests and all(getattr(r, "path", None) == protocol.WAIT
                                     for r in conn.requests):
                for request in conn.requests:
                    request.gone = True
                conn.transport.loseConnection()

    def connection_lost(self, conn) -> None:
        """A connection (HTTP, or WebSocket since its upgrade) closed."""
        self.connections.discard(conn)
        if not self.connections and self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def _abort_all(self):
        for conn in list(self.connections):
            conn.transport.abortConnection()

    def count_rejection(self, why: str, what: str) -> None:
        """Count and log a refusal; ``what`` is the method and path only (the
        query holds names and ids; bodies are never logged), clipped."""
        if why != "not_found" or logs.debug:  # a missing favicon is no news
            self.refusals.refused(why, what)
        if self.metrics is not None:
            self.metrics.rejections.labels(why).inc()

    def log_failure(self, failure: Failure) -> None:
        _web_log.failure("request failed", failure)

    def observe_request(self, request: SignalingRequest) -> None:
        if self.metrics is not None:
            self.metrics.observe_request(request.path, time.monotonic() - request.started)

    def log(self, request):
        """twisted.web's access-log hook, through twisted.logger when enabled."""
        if self.access_log:
            _access_log.info(
                '{client} "{method} {uri} {proto}" {code} {length}',
                client=getattr(request.getClientAddress(), "host", "-"),
                method=clip(request.method),
                uri=clip(request.uri),
                proto=clip(request.clientproto),
                code=request.code,
                length=request.sentLength,
            )


class InternalSite(SignalingSite):
    """/healthz and /metrics alone, for ``--internal-listen``; anything else is 404."""

    def __init__(self, channel: IChannel, metrics, reactor=None):
        # Its own requests and connections are not counted with the clients'.
        SignalingSite.__init__(self, channel, reactor=reactor)
        self.routes = health_and_metrics(channel, metrics)
        self.resource = NotFound()
