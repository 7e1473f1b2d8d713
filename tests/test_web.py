"""
The web layer in process: a real SignalingSite on a loopback port inside
the test reactor, spoken to over real sockets with exact bytes, for the
edge cases (methods, paths, names, head limits, timeouts, the connection
cap, the sign-in rate limit, log lines).  What only a process shows
(twistd options, signals, file-descriptor limits) stays in the process
tests.
"""

import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from httpclients import parse_answer
from pcsignal.channel import Limits, sequential_ids
from pcsignal.channel.memory import MemoryChannel
from pcsignal.metrics import ServerMetrics
from pcsignal.web import (
    MAX_HEAD_BYTES, MAX_HEADER_NAME, MAX_HEADERS, MAX_REQUEST_LINE, RefusalLog, SignalingSite,
)

REQUEST_TIMEOUT = 0.5


class Collect(Protocol):
    """Everything the server sends until it closes."""

    def __init__(self):
        self.received = []
        self.closed = Deferred()

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.closed.callback(b"".join(self.received))


async def connect(port, protocol=Collect) -> Collect:
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol())


async def exchange(port, data: bytes, timeout=5.0) -> bytes:
    """Send data on a new connection, shut our side, read until the server closes."""
    client = await connect(port)
    client.transport.write(data)
    client.transport.loseWriteConnection()
    client.closed.addTimeout(timeout, reactor)
    return await client.closed


async def answer_to(port, data: bytes):
    return parse_answer(await exchange(port, data))


class LogLines:
    """Every event logged while it is installed, as text."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    @property
    def lines(self):
        return [formatEvent(e) for e in self.events]

    def failures(self):
        return [formatEvent(e) + str(e["log_failure"]) for e in self.events if "log_failure" in e]


@pytest.fixture
def logged():
    lines = LogLines()
    globalLogPublisher.addObserver(lines)
    yield lines
    globalLogPublisher.removeObserver(lines)


def start_site(**options):
    channel = MemoryChannel(reactor, Limits(max_peers=100000, max_queue=10, max_queued_bytes=10**6),
                            new_id=sequential_ids())
    channel.metrics = metrics = ServerMetrics(channel)
    options.setdefault("request_timeout", REQUEST_TIMEOUT)
    site = SignalingSite(channel, max_message_bytes=1024, metrics=metrics, reactor=reactor,
                         **options)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return site, port


@pytest.fixture
def served():
    """A site with no sign-in limit and no connection cap: (site, port number)."""
    started = []

    def serve(**options):
        site, port = start_site(**options)
        started.append((site, port))
        return site, port.getHost().port

    yield serve
    for site, port in started:
        pytest_twisted.blockon(port.stopListening())
        for conn in list(site.connections):
            conn.transport.abortConnection()
        site.refusals.stop()


@pytest.fixture
def port(served):
    return served()[1]


def metric(site, name, **labels):
    return site.metrics.registry.get_sample_value(name, labels) or 0.0


# -- methods, paths, names -------------------------------------------------------------


@pytest.mark.parametrize("request_line, allow", [
    (b"PUT /sign_in", b"GET, POST, OPTIONS"),
    (b"HEAD /sign_in", b"GET, POST, OPTIONS"),
    (b"GET /message", b"POST, OPTIONS"),
    (b"DELETE /wait", b"GET, POST, OPTIONS"),
    (b"POST /healthz", b"GET, HEAD, OPTIONS"),
    (b"PUT /app.js", b"GET, HEAD, OPTIONS"),
    (b"POST /", b"GET, HEAD, OPTIONS"),
])
@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405_with_allow(port, request_line, allow):
    answer = await answer_to(port, request_line + b" HTTP/1.0\r\n\r\n")
    assert answer.status == 405
    assert answer.header(b"Allow") == allow
    method = request_line.split(b" ")[0]
    assert answer.body == (method + b" not allowed here.") * (method != b"HEAD")
    assert answer.header(b"Access-Control-Allow-Origin") == b"*"


@pytest.mark.parametrize("path, text", [
    (b"/%00", b"NUL byte in path."),
    (b"/app.js%00", b"NUL byte in path."),
    (b"/%ff", b"Invalid UTF-8 in path."),
    (b"/%c3%28", b"Invalid UTF-8 in path."),
    (b"/%zz", b"Invalid percent-encoding in path."),
    (b"/index.html%2", b"Invalid percent-encoding in path."),
])
@pytest_twisted.ensureDeferred
async def test_bad_path_is_400_not_a_traceback(port, logged, path, text):
    answer = await answer_to(port, b"GET " + path + b" HTTP/1.0\r\n\r\n")
    assert (answer.status, answer.body) == (400, text)
    assert logged.failures() == []


@pytest.mark.parametrize("path", [b"/app.js/x", b"//style.css", b"/nosuch", b"/..", b"/%2e%2e"])
@pytest_twisted.ensureDeferred
async def test_static_directory_is_flat(port, logged, path):
    for method in (b"GET", b"HEAD"):
        answer = await answer_to(port, method + b" " + path + b" HTTP/1.0\r\n\r\n")
        assert answer.status == 404
        assert answer.header(b"Content-Type") == b"text/plain"
    assert logged.failures() == []
    assert not any("HEAD request" in line for line in logged.lines)


@pytest_twisted.ensureDeferred
async def test_range_is_ignored_whole_files_only(port, logged):
    whole = await answer_to(port, b"GET /app.js HTTP/1.0\r\n\r\n")
    for value in (b"bytes=0-10", b"bytes=\xff\xfe-1", b"x" * 5000):
        answer = await answer_to(port, b"GET /app.js HTTP/1.0\r\nRange: " + value + b"\r\n\r\n")
        assert (answer.status, answer.body) == (200, whole.body)
    assert logged.failures() == []
    assert max(len(line) for line in logged.lines) < 1000


@pytest.mark.parametrize("query, text", [
    (b"%ff%fe", b"Invalid UTF-8 in name."),
    (b"bob%zz", b"Invalid percent-encoding in name."),
    (b"100%", b"Invalid percent-encoding in name."),
])
@pytest_twisted.ensureDeferred
async def test_bad_name_is_400(port, query, text):
    answer = await answer_to(port, b"GET /sign_in?" + query + b" HTTP/1.0\r\n\r\n")
    assert (answer.status, answer.body) == (400, text)


@pytest_twisted.ensureDeferred
async def test_encoded_utf8_name_signs_in(port):
    answer = await answer_to(port, b"GET /sign_in?J%C3%BCrgen%20%F0%9F%98%80 HTTP/1.0\r\n\r\n")
    assert answer.status == 200
    assert answer.body == "Jürgen 😀,1,1\n".encode("utf-8")


# -- head limits ---------------------------------------------------------------------


def line_of(length: int, path=b"/sign_in?") -> bytes:
    """A request line of exactly length bytes."""
    fixed = b"GET " + path + b" HTTP/1.1"
    return b"GET " + path + b"n" * (length - len(fixed)) + b" HTTP/1.1"


@pytest_twisted.ensureDeferred
async def test_request_line_at_the_limit_is_served(port):
    answer = await answer_to(port, line_of(MAX_REQUEST_LINE) + b"\r\nConnection: close\r\n\r\n")
    assert answer.status == 200


# Without its line end, a line is known too long once it and two bytes more are in.
@pytest.mark.parametrize("length, ending", [(MAX_REQUEST_LINE + 1, b"\r\n\r\n"),
                                            (MAX_REQUEST_LINE + 2, b"")])
@pytest_twisted.ensureDeferred
async def test_over_long_request_line_is_414(served, logged, length, ending):
    site, port = served()
    answer = await answer_to(port, line_of(length) + ending)
    assert answer.status == 414
    assert answer.body == b"Request line longer than %d bytes." % (MAX_REQUEST_LINE,)
    assert answer.header(b"Connection") == b"close"
    assert metric(site, "pcsignal_rejections_total", reason="uri_too_long") == 1
    # The log shows the method and path, never the query (names, ids).
    assert any("refused GET /sign_in from 127.0.0.1:" in line for line in logged.lines)
    assert not any("nnnn" in line for line in logged.lines)


@pytest.mark.parametrize("headers", [
    [b"X-Big: " + b"y" * MAX_HEAD_BYTES],  # one huge line, seen before its end
    [b"X-%d: %s" % (i, b"y" * 1000) for i in range(17)],  # many big lines
    [b"X-%d: y" % (i,) for i in range(MAX_HEADERS + 1)],  # too many lines
    [b"X-" + b"n" * (MAX_HEADER_NAME - 1) + b": y"],  # a name too long
])
@pytest_twisted.ensureDeferred
async def test_over_large_head_is_431(served, headers):
    site, port = served()
    answer = await answer_to(port, b"GET /healthz HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n")
    assert answer.status == 431
    assert answer.body == b"Request head over %d bytes, %d header lines or a %d-byte header name." % (
        MAX_HEAD_BYTES, MAX_HEADERS, MAX_HEADER_NAME)
    assert metric(site, "pcsignal_rejections_total", reason="headers_too_large") == 1


@pytest_twisted.ensureDeferred
async def test_head_just_within_limits_is_served(port):
    headers = ([b"X-%d: y" % (i,) for i in range(MAX_HEADERS - 2)]
               + [b"X" * MAX_HEADER_NAME + b": " + b"v" * 8000, b"Connection: close"])
    answer = await answer_to(port, b"GET /healthz HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n")
    assert answer.status == 200


@pytest_twisted.ensureDeferred
async def test_content_length_too_long_for_int_is_413(port, logged):
    answer = await answer_to(port, b"POST /message?peer_id=1&to=2 HTTP/1.0\r\nContent-Length: "
                       + b"9" * 5000 + b"\r\n\r\n")
    assert answer.status == 413
    assert logged.failures() == []


# -- log lines -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_fields_in_log_lines_are_clipped(served, logged):
    site, port = served(access_log=True)
    answer = await answer_to(port, b"M" * 5000 + b" /sign_in HTTP/1.0\r\n\r\n")
    assert answer.status == 405
    assert answer.body == b"M" * 200 + b"...(5000 bytes) not allowed here."
    refused = [line for line in logged.lines if "method_not_allowed" in line]
    assert refused == ["refused %s...(5000 bytes) /sign_in: method_not_allowed" % ("M" * 200,)]
    access = [line for line in logged.lines if '" 405 ' in line]
    assert len(access) == 1 and len(access[0]) < 400
    # A request line refused before twisted.web checks it: control characters escaped.
    answer = await answer_to(port, b"GET /\x1b[2J" + b"a" * MAX_REQUEST_LINE + b"\r\n\r\n")
    assert answer.status == 414
    assert any("refused GET /\\x1b[2Jaaa" in line for line in logged.lines)
    assert "\x1b" not in "".join(logged.lines)
    assert max(len(line) for line in logged.lines) < 600


def test_refusals_are_logged_once_per_burst():
    clock = Clock()
    lines = LogLines()
    from twisted.logger import Logger

    refusals = RefusalLog(Logger(observer=lines), clock, quiet=10.0)
    for _ in range(1000):
        refusals.refused("max_connections", "connection from 127.0.0.1:1")
        clock.advance(0.005)
    refusals.refused("bad_path", "GET /%00")
    assert lines.lines == ["refused connection from 127.0.0.1:1: max_connections",
                           "refused GET /%00: bad_path"]
    clock.advance(9.0)
    assert len(lines.lines) == 2  # the flood ended 9 s ago: not quiet long enough
    clock.advance(1.0)
    assert lines.lines[2] == "refused 999 more (max_connections) in 5.0s after the first"
    clock.advance(10.0)
    assert len(lines.lines) == 3  # bad_path had no more: nothing to add
    refusals.refused("max_connections", "connection from 127.0.0.1:2")
    assert len(lines.lines) == 4  # a new burst


# -- connections -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_silent_connections_are_closed_at_the_request_timeout(served):
    site, port = served()
    started = time.monotonic()
    clients = [await connect(port) for _ in range(50)]
    for client in clients:
        assert await client.closed == b""
    elapsed = time.monotonic() - started
    assert REQUEST_TIMEOUT - 0.05 <= elapsed < REQUEST_TIMEOUT + 3
    assert metric(site, "pcsignal_rejections_total", reason="request_timeout") == 50
    assert not site.connections


@pytest_twisted.ensureDeferred
async def test_half_closing_client_still_gets_its_answer(port):
    raw = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert parse_answer(raw).body == b"ok 0 peers\n"


@pytest_twisted.ensureDeferred
async def test_connections_over_the_cap_are_closed_at_once(served, logged):
    site, port = served(max_connections=3, request_timeout=30.0)
    held = [await connect(port) for _ in range(3)]
    refused = [await connect(port) for _ in range(5)]
    for client in refused:
        assert await client.closed.addTimeout(5, reactor) == b""
    assert metric(site, "pcsignal_rejections_total", reason="max_connections") == 5
    assert metric(site, "pcsignal_connections") == 3
    assert len([line for line in logged.lines if "max_connections" in line]) == 1
    # Answered and closed by the server: it has forgotten the connection
    # before this client sees the end.
    held[0].transport.write(b"GET /healthz HTTP/1.0\r\n\r\n")
    await held[0].closed
    raw = await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert parse_answer(raw).status == 200
    for client in held[1:]:
        client.transport.loseConnection()


# -- sign-in rate limit ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sign_ins_over_the_rate_get_429_with_retry_after(served):
    site, port = served(sign_in_rate=0.5, sign_in_burst=2)
    for _ in range(2):
        assert (await answer_to(port, b"GET /sign_in?a HTTP/1.0\r\n\r\n")).status == 200
    refused = await answer_to(port, b"GET /sign_in?a HTTP/1.0\r\n\r\n")
    assert refused.status == 429
    assert refused.raw.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert refused.header(b"Retry-After") == b"2"
    assert refused.body == b"Too many sign-ins from your address; retry in 2 s."
    assert refused.header(b"Access-Control-Allow-Origin") == b"*"
    assert metric(site, "pcsignal_rejections_total", reason="sign_in_rate") == 1
    assert metric(site, "pcsignal_sign_in_rate_addresses") == 1
    # Everything but sign-in is unaffected.
    assert (await answer_to(port, b"GET /healthz HTTP/1.0\r\n\r\n")).body == b"ok 2 peers\n"


class Sender(Protocol):
    """The server side of one connection: send_now() is called on its transport."""

    def __init__(self, connected):
        self.connected_d = connected

    def connectionMade(self):
        self.connected_d.callback(self.transport)


async def sending_pair(client_class=Collect):
    """A real loopback connection: (server-side transport, client protocol, listening port)."""
    from twisted.internet.protocol import Factory

    connected = Deferred()
    listening = reactor.listenTCP(0, Factory.forProtocol(lambda: Sender(connected)),
                                  interface="127.0.0.1")
    client = await connect(listening.getHost().port, client_class)
    transport = await connected
    return transport, client, listening


@pytest_twisted.ensureDeferred
async def test_send_now_writes_at_once_without_watching_the_socket():
    from pcsignal.web import send_now

    transport, client, listening = await sending_pair()
    try:
        send_now(transport, [b"HTTP/1.1 200 OK\r\n", b"\r\n"])
        # Handed to the kernel already: nothing buffered, no write event asked for.
        assert transport not in reactor.getWriters()
        assert transport.dataBuffer == b"" and not transport._tempDataBuffer
        transport.loseConnection()
        assert await client.closed == b"HTTP/1.1 200 OK\r\n\r\n"
    finally:
        await listening.stopListening()


class Counted(Collect):
    """Collect, and fire ``until(n)`` once n bytes have come."""

    def __init__(self):
        super().__init__()
        self.count, self.waiting = 0, []

    def dataReceived(self, data):
        super().dataReceived(data)
        self.count += len(data)
        for n, d in [w for w in self.waiting if w[0] <= self.count]:
            self.waiting.remove((n, d))
            d.callback(None)

    def until(self, n):
        d = Deferred()
        self.waiting.append((n, d))
        self.dataReceived(b"")
        return d


@pytest_twisted.ensureDeferred
async def test_send_now_keeps_order_behind_buffered_bytes_and_a_full_socket():
    import socket

    from pcsignal.web import send_now

    transport, client, listening = await sending_pair(Counted)
    try:
        # Bytes the transport still holds go first.
        transport.write(b"first ")
        send_now(transport, [b"second "])
        assert transport in reactor.getWriters()
        await client.until(len(b"first second "))
        assert transport not in reactor.getWriters()
        # More than the kernel takes at once, the client not reading: the
        # rest waits in the transport, and what comes next goes behind it.
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.transport.pauseProducing()
        big = bytes(range(256)) * 16384  # 4 MiB
        send_now(transport, [big])
        assert transport in reactor.getWriters()
        assert len(transport.dataBuffer) + transport._tempDataLen > 0
        send_now(transport, [b" last"])
        client.transport.resumeProducing()
        transport.loseConnection()
        received = await client.closed
        assert received == b"first second " + big + b" last"
    finally:
        await listening.stopListening()
