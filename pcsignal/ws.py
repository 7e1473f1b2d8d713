"""
The WebSocket transport: ``GET /ws`` upgrades (subprotocol ``pcsignal.v1``)
on the same Site and listeners as the hanging GETs, and the same channel
serves both transports (PROTOCOL.md, "WebSocket transport";
docs/protocol.rst has the frames, resume, settlement and close codes).

One socket serves one peer at a time.  It keeps one ``channel.wait(peer,
window=WINDOW)`` parked and re-parks it after each delivery, so up to
WINDOW items are written ahead of any evidence that the client read them.
The evidence is a pong: a ping carries the number ``n`` of the last item
written before it, so its pong proves the client read everything up to n
(``channel.ack``).  One ping is out at a time; it goes once WINDOW/2 items
are unproven, or SETTLE_DELAY after the first unproven one, so acks flow
with a ping per many frames under load and within a moment when quiet.  A
socket that drops is a missed wait: what it held unproven goes back to the
head of the mailbox (``channel.requeue``) and the peer stays for the peer
timeout, within which ``resume`` picks up where the client's ``last`` says.

The hot path (a whole masked text frame of at most the size limit, the
only kind our clients send) is parsed here; everything else -- the
opening handshake, fragments, control frames, closing, oversize frames --
is autobahn's.  Its general path costs about twice as much CPU per frame
(docs/benchmarks.rst).
"""

from __future__ import annotations

import base64
import binascii
import json
from json.encoder import encode_basestring_ascii
from typing import Optional
from urllib.parse import quote

import txaio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from prometheus_client import Gauge
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure
from twisted.web import server

from pcsignal import logs, protocol
from pcsignal.channel import (
    ChannelError,
    IChannel,
    ShuttingDown,
    UnknownPeer,
    WaitReplaced,
)
from pcsignal.web import (
    TEXT,
    SignalingSite,
    refusal,
    refuse_method,
    respond_error,
    send_now,
    sign_in_limited,
)


# Items written to a socket ahead of proof that its client read them.
WINDOW = 64
ACK_EVERY = WINDOW // 2
# Seconds from the first unproven item to the ping that settles it.
SETTLE_DELAY = 0.5

OCTETS = b"application/octet-stream"

# Close codes (docs/protocol.rst, "Close codes").
CLOSE_SIGNED_OUT = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_NOT_UTF8 = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_REPLACED = 4409
CLOSE_PEER_GONE = 4500

_OPEN = WebSocketServerProtocol.STATE_OPEN

log = logs.logger("pcsignal.ws")


class BadFrame(Exception):
    """A frame we cannot act on; str() is the error frame's text (status 400)."""


def _field(frame: dict, name: str, kind, what: str):
    value = frame.get(name)
    if value is None:
        raise BadFrame("Missing field %r." % (name,))
    # bool is an int to Python, never a number here.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadFrame("Field %r must be %s." % (name, what))
    return value


def _whole_number(frame: dict, name: str, default: Optional[int] = None) -> Optional[int]:
    """
    A field that must be a whole number if given (``seq``, ``last``);
    without a default, absent or null is None.
    """
    value = frame.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadFrame("Field %r must be a whole number." % (name,))
    return value


def _body(frame: dict) -> tuple[bytes, bytes]:
    """A message frame's body and the Content-Type an HTTP receiver gets."""
    if "data_base64" in frame:
        text = _field(frame, "data_base64", str, "base64 text")
        try:
            return base64.b64decode(text, validate=True), OCTETS
        except (binascii.Error, ValueError):
            raise BadFrame("Field 'data_base64' is not base64.")
    text = _field(frame, "data", str, "text")
    try:
        return text.encode("utf-8"), TEXT
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
        raise BadFrame("Field 'data' is not valid Unicode.")


def _unheeded(d, what: str, peer_id: int) -> None:
    """
    A channel call nobody waits for: a refusal (the store is away, the
    server stops; the channel logs its state once) is no news, anything
    else is logged.
    """
    d.addErrback(_unexpected, what, peer_id)


def _unexpected(failure: Failure, what: str, peer_id: int) -> None:
    if not failure.check(ChannelError):
        log.failure("{what} for peer {peer_id} failed", failure, what=what, peer_id=peer_id)


def _unmask(mask: bytes, payload: bytes) -> bytes:
    """XOR with the repeated 4-byte mask, as one big integer: 4x cheaper than
    autobahn's masker object for a frame of a few hundred bytes."""
    length = len(payload)
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little")


def _text_frame(payload: bytes) -> bytes:
    """A whole, unmasked text frame (server to client), RFC 6455 section 5.2."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return bytes((0x81, 126)) + length.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + payload


_json_text = encode_basestring_ascii
_decode = json.JSONDecoder().decode


class SignalingSocket(WebSocketServerProtocol):
    """One client's socket; serves at most one peer at a time."""

    # What site.drain() reads from every connection: no HTTP request in
    # progress, not fresh (upgraded from a request), no answer to settle
    # (a socket settles its own by pings).
    requests = ()
    fresh = False
    answer = None
    # autobahn logs every failed handshake and failed connection at warn: a
    # client could flood the log.  pcsignal counts and logs those refusals
    # itself (site.count_rejection); autobahn keeps its errors.
    log = txaio.make_logger(level="error")

    peer_id: Optional[int] = None
    _busy = False  # a sign_in or resume is under way
    _gone = False  # the TCP connection is closed
    _wait = None  # the parked channel.wait Deferred
    _written = 0  # n of the last item written
    _acked = 0  # n up to which the client proved it read
    _ping_n: Optional[int] = None  # n carried by the ping awaiting its pong
    _ping_at = 0.0
    _settle = None  # IDelayedCall of the ping for a quiet tail
    _tick = None  # IDelayedCall of the next liveness check
    _deadline = None  # IDelayedCall: sign in or resume by then
    _parking = False
    _again = False
    _opened = False  # counted in factory.open_count

    # -- autobahn's hooks ----------------------------------------------------------

    def connectionMade(self):
        WebSocketServerProtocol.connectionMade(self)
        f = self.factory
        f.site.connections.add(self)  # counted like any connection (cap, drain)
        self._channel = f.channel
        self._clock = f.clock
        # The limit in force when the socket opened (a reload applies to new sockets).
        self._max = self.maxFramePayloadSize = self.maxMessagePayloadSize = \
            f.site.max_message_bytes
        self._handlers = {
            "message": self._on_message,
            "sign_in": self._on_sign_in,
            "resume": self._on_resume,
            "sign_out": self._on_sign_out,
        }

    def connectionLost(self, reason):
        self._gone = True
        WebSocketServerProtocol.connectionLost(self, reason)
        self.factory.site.connection_lost(self)

    def dataReceived(self, data):
        # Straight to the parser: autobahn's dataReceived formats a debug
        # event's arguments for every read, even with debug logging off.
        self._dataReceived(data)

    def onConnect(self, request):
        subprotocol = protocol.WEBSOCKET_SUBPROTOCOL
        return subprotocol if subprotocol in request.protocols else None

    def onOpen(self):
        self._opened = True
        self.factory.open_count += 1
        self._tick = self._clock.callLater(self.factory.ping_interval, self._liveness)
        # As a silent HTTP connection is cut, so is a socket that serves no peer.
        self._deadline = self._clock.callLater(self.factory.site.request_timeout, self._too_slow)

    def processData(self):
        """
        The hot path: a whole masked text frame (FIN, no RSV, no extension
        is ever negotiated) within the size limit is handed to _frame at
        once; anything else goes to autobahn's general parser.
        """
        data = self.data
        if (self.current_frame is None and len(data) >= 6 and data[0] == 0x81
                and not self.inside_message and self.state == _OPEN):
            length = data[1] ^ 0x80  # the mask bit set: 0..127, else > 127
            start = 6
            if length == 126:
                length = int.from_bytes(data[2:4], "big")
                # Not the minimal encoding: autobahn's to fail.
                start = 8 if length >= 126 else 0
            elif length > 125:  # 64-bit length, or unmasked
                start = 0
            if start and length <= self._max:
                end = start + length
                if len(data) >= end:
                    payload = _unmask(data[start - 4:start], data[start:end])
                    self.data = data[end:]
                    self._frame(payload)
                    return len(self.data) > 0
        return WebSocketServerProtocol.processData(self)

    def onMessage(self, payload, isBinary):
        # Frames that took autobahn's general path (fragmented, binary).
        if isBinary:
            self._refuse(None, "Binary frames are not accepted; send JSON text.")
        else:
            self._frame(payload)

    def onPong(self, payload):
        if self._ping_n is None or payload != b"%d" % (self._ping_n,):
            return  # unsolicited or stale: proves nothing we can use
        n, self._ping_n = self._ping_n, None
        if self.peer_id is not None and n > self._acked:
            self._acked = n
            _unheeded(self._channel.ack(self.peer_id, n), "ack", self.peer_id)
        if self._written > self._acked:
            self._after_write()

    def onClose(self, wasClean, code, reason):
        if self._opened:
            self._opened = False
            self.factory.open_count -= 1
        for timer in (self._tick, self._settle, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        self._tick = self._settle = self._deadline = None
        peer_id = self._release()
        if peer_id is not None:
            if wasClean and self.closedByMe:
                # The client answered our close: it read all we wrote before it.
                _unheeded(self._channel.ack(peer_id, self._written), "ack", peer_id)
            else:
                log.info("socket of peer {peer_id} closed ({code}); it may resume "
                         "within the peer timeout", peer_id=peer_id, code=code)
            # A missed wait: what the client may not have read (or was never
            # written) goes back to the head of the mailbox.
            _unheeded(self._channel.requeue(peer_id), "requeue", peer_id)
        self.factory.socket_closed()

    def failHandshake(self, reason, code=400, responseHeaders=None):
        self.factory.site.count_rejection("bad_handshake", "WebSocket handshake: %s" % (reason,))
        WebSocketServerProtocol.failHandshake(self, reason, code, responseHeaders)

    def _max_message_size_exceeded(self, msg_size, max_msg_size, reason):
        self.factory.site.count_rejection("too_large", "WebSocket frame of %d bytes" % (msg_size,))
        WebSocketServerProtocol._max_message_size_exceeded(self, msg_size, max_msg_size, reason)

    # -- frames in -------------------------------------------------------------------

    def _frame(self, payload: bytes) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._close(CLOSE_NOT_UTF8, "Text frame is not UTF-8.")
            return
        seq = None
        try:
            try:
                frame = _decode(text)
            except ValueError:
                raise BadFrame("Frame is not JSON.")
            if type(frame) is not dict:
                raise BadFrame("A frame is a JSON object.")
            seq = _whole_number(frame, "seq")
            handler = self._handlers.get(frame.get("type"))
            if handler is None:
                raise BadFrame("Unknown frame type %s." % (json.dumps(frame.get("type"))[:40],))
            handler(frame, seq)
        except BadFrame as e:
            self._refuse(seq, str(e))

    def _on_message(self, frame: dict, seq: Optional[int]) -> None:
        to_id = frame.get("to")
        data = frame.get("data")
        if type(to_id) is int and type(data) is str and data and data.isascii():
            body, content_type = data.encode("ascii"), TEXT  # the common case, checked at once
        else:
            to_id = _field(frame, "to", int, "a peer id")
            body, content_type = _body(frame)
            if not body:
                raise BadFrame("Message body required.")
        if self.peer_id is None:
            raise BadFrame("Sign in first.")
        d = self._channel.post(self.peer_id, to_id, content_type, body)
        if seq is None:
            d.addErrback(self._refused, None)
        else:
            d.addCallbacks(self._posted, self._refused, (seq,), None, (seq,))

    def _posted(self, _, seq: int) -> None:
        self._send(b'{"type":"ack","seq":%d}' % (seq,))

    def _on_sign_in(self, frame: dict, seq: Optional[int]) -> None:
        name = _field(frame, "name", str, "text")
        if self.peer_id is not None or self._busy:
            raise BadFrame("Already signed in.")
        try:
            raw_name = quote(name, safe="").encode("ascii")
        except UnicodeEncodeError:
            raise BadFrame("Field 'name' is not valid Unicode.")
        limited = sign_in_limited(self.factory.site.sign_in_limit, self.transport.getPeer())
        if limited is not None:
            seconds, text = limited
            self._refuse(seq, text, 429, "sign_in_rate", retry_after=seconds)
            return
        self._busy = True
        d = self._channel.sign_in(raw_name)
        d.addCallbacks(self._signed_in, self._sign_in_failed, errbackArgs=(seq,))

    def _signed_in(self, signed_in) -> None:
        self._busy = False
        if self._gone:
            # Nobody got the token: nobody can ever resume this peer.
            _unheeded(self._channel.sign_out(signed_in.peer_id), "sign_out", signed_in.peer_id)
            return
        me, *others = protocol.parse_entries(signed_in.body)
        self._serve(signed_in.peer_id, 0)
        peers = ",".join('{"id":%d,"name":%s}' % (e.peer_id, _json_text(e.name))
                         for e in others if e.connected)
        self._send(('{"type":"signed_in","id":%d,"name":%s,"token":%s,"peers":[%s]}'
                    % (signed_in.peer_id, _json_text(me.name), _json_text(signed_in.token),
                       peers)).encode("ascii"))
        self._park()

    def _sign_in_failed(self, failure: Failure, seq: Optional[int]) -> None:
        self._busy = False
        self._refused(failure, seq)

    def _on_resume(self, frame: dict, seq: Optional[int]) -> None:
        peer_id = _field(frame, "id", int, "a peer id")
        token = _field(frame, "token", str, "text")
        last = _whole_number(frame, "last", 0)
        if self.peer_id is not None or self._busy:
            raise BadFrame("Already signed in.")
        self._busy = True
        d = self._channel.check_token(peer_id, token)
        d.addCallback(lambda _: self._resume(peer_id, last))
        d.addErrback(self._sign_in_failed, seq)

    def _resume(self, peer_id: int, last: int):
        if self._gone:
            self._busy = False
            return None
        older = self.factory.sockets.get(peer_id)
        if older is not None:
            older._replaced()
        self._serve(peer_id, last)
        # What the client handled is done; what else it was written comes again.
        d = self._channel.ack(peer_id, last)
        d.addCallback(lambda _: self._channel.requeue(peer_id))
        d.addCallback(self._resumed, peer_id)
        return d

    def _resumed(self, _, peer_id: int) -> None:
        self._busy = False
        if self.peer_id == peer_id:
            log.info("peer {peer_id} resumed after message {last}", peer_id=peer_id,
                     last=self._acked)
            self._send(b'{"type":"resumed","id":%d}' % (peer_id,))
            self._park()

    def _on_sign_out(self, frame: dict, seq: Optional[int]) -> None:
        peer_id = self._release()
        if peer_id is None:
            raise BadFrame("Not signed in.")
        d = self._channel.sign_out(peer_id)
        d.addCallbacks(lambda _: self._close(CLOSE_SIGNED_OUT, "Signed out."),
                       self._refused, errbackArgs=(seq,))

    # -- refusals --------------------------------------------------------------------

    def _refuse(self, seq: Optional[int], text: str, status: int = 400,
                why: str = "bad_frame", retry_after: Optional[int] = None) -> None:
        self.factory.site.count_rejection(why, "WebSocket frame")
        error = '{"type":"error",%s"status":%d,"text":%s%s}' % (
            "" if seq is None else '"seq":%d,' % (seq,), status, _json_text(text),
            "" if retry_after is None else ',"retry_after":%d' % (retry_after,))
        self._send(error.encode("ascii"))

    def _refused(self, failure: Failure, seq: Optional[int]) -> None:
        error = failure.value
        if isinstance(error, ChannelError):
            status, _, why = refusal(error)
            self._refuse(seq, str(error), status, why)
        else:
            log.failure("WebSocket frame failed", failure)
            self._refuse(seq, "Internal server error.", 500, "internal")

    # -- frames out ------------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        if self.state == _OPEN:
            send_now(self.transport, [_text_frame(payload)])

    def _serve(self, peer_id: int, last: int) -> None:
        self.peer_id = peer_id
        self._written = self._acked = last
        self._ping_n = None  # a pong to an earlier ping proves nothing for this peer
        self.factory.sockets[peer_id] = self

    def _park(self) -> None:
        """Keep one wait parked; a wait answered at once is looped, not recursed."""
        if self._parking:
            self._again = True
            return
        self._parking = True
        try:
            self._again = True
            while self._again and self.peer_id is not None:
                self._again = False
                peer_id = self.peer_id
                self._wait = d = self._channel.wait(peer_id, WINDOW)
                d.addCallbacks(self._delivered, self._wait_failed, (peer_id,), None, (peer_id,))
        finally:
            self._parking = False

    def _delivered(self, delivery, peer_id: int) -> None:
        self._wait = None
        if peer_id != self.peer_id:
            # Not ours to write any more.
            _unheeded(self._channel.requeue(peer_id), "requeue", peer_id)
            return
        if self.state != _OPEN:
            return  # closing: onClose hands it back
        item, n = delivery
        if item.sender is None:
            frame = self.factory.presence_frame(item) + b"%d}" % (n,)
        else:
            body = item.body
            try:
                data = '"data":' + _json_text(body.decode("utf-8"))
            except UnicodeDecodeError:
                data = '"data_base64":"' + base64.b64encode(body).decode("ascii") + '"'
            frame = ('{"type":"message","from":%d,%s,"n":%d}'
                     % (item.sender, data, n)).encode("ascii")
        send_now(self.transport, [_text_frame(frame)])
        self._written = n
        if self._ping_n is None:
            self._after_write()
        self._park()

    def _after_write(self) -> None:
        """Unproven items are written and no ping is out: ping now or soon."""
        if self._written - self._acked >= ACK_EVERY:
            self._ping()
        elif self._settle is None:
            self._settle = self._clock.callLater(SETTLE_DELAY, self._settle_tail)

    def _settle_tail(self) -> None:
        self._settle = None
        if self._ping_n is None and self._written > self._acked:
            self._ping()

    def _ping(self) -> None:
        if self._settle is not None:
            if self._settle.active():
                self._settle.cancel()
            self._settle = None
        if self.state == _OPEN:
            self._ping_n = self._written
            self._ping_at = self._clock.seconds()
            self.sendPing(b"%d" % (self._ping_n,))

    def _liveness(self) -> None:
        interval = self.factory.ping_interval
        self._tick = self._clock.callLater(interval, self._liveness)
        if self._ping_n is None:
            self._ping()
        elif self._clock.seconds() - self._ping_at >= interval:
            log.info("no pong from {peer} within {interval}s: dropping its socket",
                     peer="peer %d" % (self.peer_id,) if self.peer_id else self.peer,
                     interval=interval)
            self._tick.cancel()
            self._tick = None
            self.dropConnection(abort=True)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.peer_id is None and not self._busy:
            timeout = self.factory.site.request_timeout
            self.factory.site.count_rejection(
                "request_timeout", "WebSocket without sign_in or resume within %gs" % (timeout,))
            self._close(CLOSE_POLICY, "No sign_in or resume within %g s." % (timeout,))

    def _wait_failed(self, failure: Failure, peer_id: int) -> None:
        self._wait = None
        if failure.check(CancelledError) or peer_id != self.peer_id:
            return
        if failure.check(WaitReplaced):
            # Served elsewhere now (a resume on another instance, an HTTP
            # /wait): hand back what we hold and step aside.
            self._release()
            _unheeded(self._channel.requeue(peer_id), "requeue", peer_id)
            self._close(CLOSE_REPLACED, str(failure.value))
        elif failure.check(UnknownPeer):
            self._release()
            self._close(CLOSE_PEER_GONE, str(failure.value))
        elif failure.check(ShuttingDown):
            # Keep the peer: the clean close handshake acks what we wrote.
            self._close(CLOSE_GOING_AWAY, str(failure.value))
        else:
            log.failure("wait for peer {peer_id} failed", failure, peer_id=peer_id)
            self._release()
            self._close(CLOSE_INTERNAL, "Internal server error.")

    def _close(self, code: int, reason: str) -> None:
        if self.state == _OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123],
                                isReply=False)

    def _release(self) -> Optional[int]:
        """Stop serving our peer (if any); returns its id."""
        peer_id, self.peer_id = self.peer_id, None
        if peer_id is not None and self.factory.sockets.get(peer_id) is self:
            del self.factory.sockets[peer_id]
        if self._wait is not None:
            d, self._wait = self._wait, None
            d.cancel()  # un-parks without consuming anything
        return peer_id

    def _replaced(self) -> None:
        """The client resumed its peer on a newer socket of this process."""
        self._release()
        self._close(CLOSE_REPLACED, "Resumed on a newer connection.")


class SignalingSocketFactory(WebSocketServerFactory):
    """Shared by every socket of one Site: the channel, limits and clock."""

    protocol = SignalingSocket

    def __init__(self, channel: IChannel, site: SignalingSite, ping_interval: float,
                 clock):
        WebSocketServerFactory.__init__(self, protocols=[protocol.WEBSOCKET_SUBPROTOCOL],
                                        server=None, reactor=clock)
        self.channel = channel
        self.site = site
        self.clock = clock
        self.ping_interval = ping_interval  # read at each check: a reload applies at once
        self.sockets: dict[int, SignalingSocket] = {}  # peer id -> the socket serving it
        self.open_count = 0
        self._presence = (None, b"")
        self._all_closed: Optional[Deferred] = None
        self.setProtocolOptions(
            webStatus=False,
            # Checked where it is cheaper: strict UTF-8 decoding of the whole frame.
            utf8validateIncoming=False,
            # Close with a code (1009 for oversize) instead of just dropping.
            failByDrop=False,
            autoPingInterval=0,
        )

    def close_all(self, grace: float) -> Deferred:
        """
        Close every socket that serves a peer (1001, ``Server shutting
        down.``); fires once their close handshakes are done, or after grace
        seconds.  Done before the channel closes: a clean close proves the
        client read all it was written, and a closed channel (on Redis) can
        no longer take that ack, so the items would come again.
        """
        if not self.sockets:
            return succeed(None)
        self._all_closed = d = Deferred()
        timer = self.clock.callLater(grace, self._closed_all)
        d.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        for sock in list(self.sockets.values()):
            sock._close(CLOSE_GOING_AWAY, str(ShuttingDown()))
        return d

    def socket_closed(self) -> None:
        if not self.sockets:
            self._closed_all()

    def _closed_all(self) -> None:
        d, self._all_closed = self._all_closed, None
        if d is not None:
            d.callback(None)

    def presence_frame(self, item) -> bytes:
        """A peer frame up to its ``n`` (one Item reaches every member in turn)."""
        cached_item, frame = self._presence
        if cached_item is not item:
            entry = protocol.parse_entry(item.body)
            frame = ('{"type":"peer","id":%d,"name":%s,"connected":%s,"n":'
                     % (entry.peer_id, _json_text(entry.name),
                        "true" if entry.connected else "false")).encode("ascii")
            self._presence = (item, frame)
        return frame


class Upgrade(WebSocketResource):
    """``GET /ws``: hands the connection to a SignalingSocket."""

    isLeaf = True

    def __init__(self, factory: SignalingSocketFactory):
        WebSocketResource.__init__(self, factory)
        self.site = factory.site

    def render(self, request):
        if request.method != b"GET":
            refuse_method(request, (b"GET",))
        elif self.site.stopping:
            respond_error(request, 503, b"Service Unavailable", str(ShuttingDown()),
                          "shutting_down")
        elif b"websocket" not in (request.getHeader(b"Upgrade") or b"").lower():
            respond_error(request, 426, b"Upgrade Required",
                          "This path takes WebSocket connections only.", "not_websocket")
        else:
            http_channel = request.channel
            WebSocketResource.render(self, request)
            # The connection is the socket's now (counted by its connectionMade).
            self.site.connections.discard(http_channel)
        return server.NOT_DONE_YET


def mount(site: SignalingSite, channel: IChannel, ping_interval: float, clock) -> SignalingSocketFactory:
    """Serve the WebSocket transport at /ws on this Site."""
    factory = SignalingSocketFactory(channel, site, ping_interval, clock)
    site.routes[protocol.WEBSOCKET] = Upgrade(factory)
    if site.metrics is not None:
        Gauge("pcsignal_websockets", "WebSocket connections open.",
              registry=site.metrics.registry).set_function(lambda: factory.open_count)
    return factory
