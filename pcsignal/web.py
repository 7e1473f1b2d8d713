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
import time
from typing import Optional

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure
from twisted.web import resource, server, static
from twisted.web.http import HTTPChannel
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pcsignal import ice, logs, __version__, protocol
from pcsignal.channel import (
    ChannelError,
    IChannel,
    Item,
    MailboxFull,
    ServerBusy,
    ServerFull,
    ShuttingDown,
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

# Status and reason phrase for each refusal; the body is the error's text.
_STATUS = {
    UnknownPeer: (500, b"Error"),
    ServerFull: (503, b"Service Unavailable"),
    MailboxFull: (503, b"Service Unavailable"),
    ServerBusy: (503, b"Service Unavailable"),
    ShuttingDown: (503, b"Service Unavailable"),
    WaitReplaced: (409, b"Conflict"),
}
_REJECTION_REASON = {
    UnknownPeer: "unknown_peer",
    ServerFull: "server_full",
    MailboxFull: "mailbox_full",
    ServerBusy: "queued_bytes_full",
    ShuttingDown: "shutting_down",
    WaitReplaced: "wait_replaced",
}


_SERVER_LINE = b"Server: " + SERVER + b"\r\nCache-Control: no-cache\r\n"
_CORS_LINES = b"".join(name + b": " + value + b"\r\n" for name, value in CORS)


def respond(
    request: "SignalingRequest",
    code: int,
    reason: bytes,
    body: bytes = b"",
    content_type: Optional[bytes] = TEXT,
    pragma: Optional[int] = None,
) -> None:
    """
    Write a complete answer with the reference's headers, in its order.

    The head is joined from constant byte strings rather than built through
    twisted.web's Headers: this is the hot path of every relayed message.
    """
    if request.gone:
        return
    if request.site.stopping:
        request.channel.persistent = False
    head = [b"HTTP/1.1 %d %s\r\n" % (code, reason), _SERVER_LINE]
    if not request.channel.persistent:
        head.append(b"Connection: close\r\n")
    if content_type:
        # A header value from a client could carry a bare LF; never echo one.
        head.append(b"Content-Type: %s\r\n"
                    % content_type.replace(b"\r", b" ").replace(b"\n", b" "))
    head.append(b"Content-Length: %d\r\n" % (len(body),))
    if pragma is not None:
        head.append(b"Pragma: %d\r\n" % (pragma,))
    head.append(_CORS_LINES)
    head.append(b"\r\n")
    if request.method != b"HEAD":
        head.append(body)
    request.setResponseCode(code, reason)
    request.write_raw(head, len(body))
    request.finish()


def respond_error(request: "SignalingRequest", code: int, reason: bytes, text: str, why: str):
    request.site.count_rejection(why, "%s %s" % (request.method.decode("latin-1"),
                                                 request.path.decode("latin-1")))
    respond(request, code, reason, text.encode("utf-8"))


def respond_failure(request: "SignalingRequest", failure: Failure) -> None:
    """Answer a failed channel call; anything unexpected is a logged 500."""
    if failure.check(CancelledError):
        return  # the client left first; nothing to answer
    error = failure.value
    if isinstance(error, ChannelError):
        code, reason = _STATUS[type(error)]
        respond_error(request, code, reason, str(error), _REJECTION_REASON[type(error)])
    else:
        request.site.log_failure(failure)
        respond(request, 500, b"Internal Server Error", b"Internal server error.")


def respond_item(request: "SignalingRequest", item: Item, receiver: int) -> None:
    respond(request, 200, b"OK", item.body, item.content_type, item.pragma_for(receiver))


def query(request) -> bytes:
    return request.uri.partition(b"?")[2]


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
            server.Request.process(self)  # static files, metrics: full traversal
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
        self.channel.writeSequence(data)

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


class SignalingHTTPChannel(HTTPChannel):
    """
    HTTPChannel that writes the reference's ``HTTP/1.1`` status line to
    every client (RFC 9110 too: a server sends its own highest version), and
    closes connections that take longer than the site's request_timeout to
    send one request's head and body (slowloris).  Parked waits are not
    affected: the deadline ends once a request has been read.
    """

    _deadline = None

    def writeHeaders(self, version, code, reason, headers):
        HTTPChannel.writeHeaders(self, b"HTTP/1.1", code, reason, headers)

    def connectionMade(self):
        HTTPChannel.connectionMade(self)
        self.site.connections.add(self)
        # Every Request asks; without this, one getsockname() call each.
        self._host = HTTPChannel.getHost(self)

    def getHost(self):
        return self._host

    def dataReceived(self, data):
        if self._deadline is None and not self._handlingRequest:
            self._deadline = self.callLater(self.site.request_timeout, self._too_slow)
        HTTPChannel.dataReceived(self, data)

    def allContentReceived(self):
        self._cancel_deadline()
        HTTPChannel.allContentReceived(self)

    def connectionLost(self, reason):
        self._cancel_deadline()
        HTTPChannel.connectionLost(self, reason)
        self.site.connections.discard(self)
        if not self.site.connections and self.site._drained is not None:
            d, self.site._drained = self.site._drained, None
            d.callback(None)

    def _cancel_deadline(self):
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self):
        self._deadline = None
        self.site.count_rejection(
            "request_timeout", "connection from %s, request not received within %gs"
            % (self.transport.getPeer(), self.site.request_timeout))
        self.transport.abortConnection()


# -- resources ------------------------------------------------------------------


class Endpoint(resource.Resource):
    """
    A resource at one exact path, answered with respond(): the protocol's
    four, /healthz and /metrics.  Wrong methods get 405.
    """

    isLeaf = True
    methods = (b"GET",)

    def __init__(self, channel: IChannel):
        resource.Resource.__init__(self)
        self.channel = channel

    def render(self, request):
        if request.method not in self.methods:
            respond_error(request, 405, b"Method Not Allowed",
                          "%s not allowed here." % (request.method.decode("latin-1"),),
                          "method_not_allowed")
            return server.NOT_DONE_YET
        self.handle(request)
        return server.NOT_DONE_YET

    def peer_id(self, request) -> Optional[int]:
        peer_id = protocol.query_peer_id(query(request))
        if peer_id is None:
            respond_failure(request, Failure(UnknownPeer()))
        return peer_id


# GET or POST, as the reference accepts; never HEAD, which must not change state.
class SignIn(Endpoint):
    methods = (b"GET", b"POST")

    def handle(self, request):
        d = self.channel.sign_in(query(request))
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

    def handle(self, request):
        peer_id = self.peer_id(request)
        if peer_id is None:
            return
        d = self.channel.wait(peer_id)
        if not d.called:
            # If the client leaves first, un-park without consuming an item.
            request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(lambda delivery: self.deliver(request, delivery, peer_id),
                       lambda f: respond_failure(request, f))

    def deliver(self, request, delivery, peer_id):
        if request.gone:
            self.channel.requeue(peer_id)  # nobody to read it
            return
        respond_item(request, delivery.item, peer_id)
        self.channel.ack(peer_id, delivery.n)


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
        respond(request, 200, b"OK", b"ok %d peers\n" % (self.channel.peer_count,))


class Metrics(Endpoint):
    """/metrics in Prometheus text format."""

    def __init__(self, registry):
        resource.Resource.__init__(self)
        self.registry = registry

    def handle(self, request):
        respond(request, 200, b"OK", generate_latest(self.registry), PROMETHEUS_TEXT)


class StaticRoot(resource.Resource):
    """The browser client (a flat directory, index.html at /); anything else is 404."""

    def __init__(self, static_dir=STATIC_DIR):
        resource.Resource.__init__(self)
        self._static = static.File(static_dir, defaultType="application/octet-stream")
        self._static.indexNames = ["index.html"]
        self._not_found = NotFound()

    def getChildWithDefault(self, name, request):
        if request.path == b"/":
            request.postpath = []
            return self._static.getChild(b"", request)
        child = self._static.getChildWithDefault(name, request)
        if isinstance(child, static.File) and child.exists() and not child.isdir():
            return child
        return self._not_found


class SignalingSite(server.Site):
    """
    The Site: protocol root, limits, and the hooks for metrics and logs.

    Access logging is off unless asked for: request lines carry peer names
    and ids.
    """

    protocol = SignalingHTTPChannel
    requestFactory = SignalingRequest
    noisy = False
    logger = logs.logger('pcsignal.web')

    def __init__(
        self,
        channel: IChannel,
        max_message_bytes: int = 64 * 1024,
        request_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        access_log: bool = False,
        metrics=None,
        reactor=None,
        ice_settings: ice.IceSettings = ice.IceSettings(),
        turn_secret=None,
    ):
        # Exact paths, dispatched by SignalingRequest.process without traversal.
        self.routes = {
            protocol.SIGN_IN: SignIn(channel),
            protocol.SIGN_OUT: SignOut(channel),
            protocol.WAIT: Wait(channel),
            protocol.MESSAGE: Message(channel),
            b"/healthz": Healthz(channel),
            ice.PATH: IceServers(channel, ice_settings, turn_secret),
        }
        if metrics is not None:
            self.routes[b"/metrics"] = Metrics(metrics.registry)
        kwargs = {"timeout": idle_timeout}
        if reactor is not None:
            kwargs["reactor"] = reactor
        # Bodies are opaque messages, never forms: no form parsing (it is
        # slow, and would turn a multipart-typed message into a 400).
        server.Site.__init__(self, StaticRoot(), parsePOSTFormSubmission=False, **kwargs)
        self.channel = channel
        self.max_message_bytes = max_message_bytes
        self.request_timeout = request_timeout
        self.access_log = access_log
        self.metrics = metrics
        self.connections: set[SignalingHTTPChannel] = set()
        self.stopping = False
        self._drained: Optional[Deferred] = None

    def drain(self, grace: float = 5.0) -> Deferred:
        """
        Fire once every connection has closed: idle ones are closed now,
        answered ones close after their answer is flushed; whatever is left
        after ``grace`` seconds is aborted.
        """
        self.stopping = True
        if not self.connections:
            return succeed(None)
        for conn in list(self.connections):
            if not conn.requests:
                conn.transport.loseConnection()
        self._drained = Deferred()
        timer = self.reactor.callLater(grace, self._abort_all)
        self._drained.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return self._drained

    def _abort_all(self):
        for conn in list(self.connections):
            conn.transport.abortConnection()

    def count_rejection(self, why: str, what: str) -> None:
        """Count and log a refusal; ``what`` is the method and path only (the
        query holds names and ids; bodies are never logged)."""
        if why != "not_found" or logs.debug:  # a missing favicon is no news
            self.logger.info("refused {what}: {why}", what=what, why=why)
        if self.metrics is not None:
            self.metrics.rejections.labels(why).inc()

    def log_failure(self, failure: Failure) -> None:
        self.logger.failure("request failed", failure)

    def observe_request(self, request: SignalingRequest) -> None:
        if self.metrics is not None:
            self.metrics.observe_request(request.path, time.monotonic() - request.started)

    def log(self, request):
        """twisted.web's access-log hook, through twisted.logger when enabled."""
        if self.access_log:
            _access_log.info(
                '{client} "{method} {uri} {proto}" {code} {length}',
                client=getattr(request.getClientAddress(), "host", "-"),
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1"),
                proto=request.clientproto.decode("latin-1"),
                code=request.code,
                length=request.sentLength,
            )
