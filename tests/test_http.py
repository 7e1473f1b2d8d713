"""
pcsignal over real loopback sockets: the native client's way, a browser's
way, and every limit and bad input.

One real ``twistd pcsignal`` with small limits serves the whole module.
"""

import select
import selectors
import socket
import threading
import time

import pytest

from conftest import LISTENING, REDIS_UP, TwistdProcess, start_pcsignal
from httpclients import Browser, Peer, native, parked_waits_become, read_to_end

MAX_BODY = 1024
MAX_QUEUE = 4
MAX_PEERS = 40
PEER_TIMEOUT = 1.5
REQUEST_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0


pytestmark = pytest.mark.usefixtures("pcsignal_backend")


@pytest.fixture(scope="module")
def server(pcsignal_backend):
    proc = TwistdProcess("pcsignal", [
        "--listen", "tcp:0:interface=127.0.0.1",
        "--max-message-bytes", str(MAX_BODY), "--max-queue", str(MAX_QUEUE),
        "--max-peers", str(MAX_PEERS), "--peer-timeout", str(PEER_TIMEOUT),
        "--request-timeout", str(REQUEST_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT),
        *pcsignal_backend(),
    ])
    m = proc.wait_for_log(LISTENING)
    if "--redis" in proc.proc.args:
        proc.wait_for_log(REDIS_UP)
    yield proc, "http://127.0.0.1:%s" % m.group("port")
    assert proc.stop() in (0, -15)  # twistd re-raises SIGTERM after a clean stop
    assert "Traceback" not in proc.output(), proc.output()


@pytest.fixture
def url(server):
    return server[1]


@pytest.fixture
def pair(url):
    a, b = Peer(url, "a"), Peer(url, "b")
    assert a.wait().body == b"b,%d,1\n" % b.id
    yield a, b
    for p in (a, b):
        p.sign_out()


def test_ids_are_unpredictable_by_default(url):
    peers = [Peer(url, "x") for _ in range(3)]
    ids = [p.id for p in peers]
    assert len(set(ids)) == 3 and ids != [1, 2, 3]
    for p in peers:
        assert p.sign_out().status == 200


def test_sign_in_lists_new_peer_first(url):
    a = Peer(url, "first")
    b = Peer(url, "second")
    assert b.list.startswith(b"second,%d,1\n" % b.id)
    assert b"first,%d,1\n" % a.id in b.list
    assert a.drain_until(b"second,%d,1\n" % b.id).pragma == a.id
    b.sign_out()
    assert a.drain_until(b"second,%d,0\n" % b.id).pragma == a.id
    a.sign_out()


def test_message_keeps_bytes_content_type_and_order(pair):
    a, b = pair
    payload = b'{"type": "offer", "sdp": "v=0\\r\\n\xc3\xa9"}'
    assert a.send(b.id, payload, b"application/json").status == 200
    assert a.send(b.id, b"second").status == 200
    first = b.wait()
    assert (first.body, first.pragma, first.header(b"Content-Type")) == (
        payload, a.id, b"application/json")
    assert b.wait().body == b"second"


def test_parked_wait_gets_the_message(pair):
    a, b = pair
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("item", b.wait()))
    t.start()
    parked_waits_become(a.url, 1)  # then send
    assert a.send(b.id, b"hello").status == 200
    t.join(5)
    assert result["item"].body == b"hello" and result["item"].pragma == a.id


def test_echo_to_self(pair):
    a, _ = pair
    answer = a.send(a.id, b"hello")
    assert (answer.status, answer.body, answer.pragma) == (200, b"hello", a.id)


def test_unknown_peers(url, pair):
    a, _ = pair
    for answer in [
        a.send(987654, b"BYE"),
        native(url, "POST", "/message?peer_id=987654&to=%d" % a.id, b"x"),
        native(url, "GET", "/wait?peer_id=987654"),
        native(url, "GET", "/wait?peer_id=abc"),
        native(url, "GET", "/wait"),
        native(url, "GET", "/sign_out?peer_id=987654"),
    ]:
        assert (answer.status, answer.body) == (500, b"Peer most likely gone.")


def test_options_preflight_anywhere(url):
    for target in ["/message?peer_id=1&to=2", "/sign_in", "/whatever"]:
        answer = native(url, "OPTIONS", target)
        assert answer.status == 200 and answer.body == b""
        assert answer.header(b"Access-Control-Allow-Methods") == b"POST, GET, OPTIONS"


def test_no_remote_kill_switch(url):
    answer = native(url, "GET", "/quit")
    assert answer.status == 404
    assert native(url, "GET", "/healthz").status == 200


def test_empty_message_is_refused(pair):
    a, b = pair
    answer = a.send(b.id, b"")
    assert (answer.status, answer.body) == (400, b"Message body required.")


def test_message_over_limit_is_refused_before_buffering(pair):
    a, b = pair
    answer = a.send(b.id, b"x" * (MAX_BODY + 1))
    assert answer.status == 413
    assert answer.body == b"Message body larger than %d bytes; not delivered." % MAX_BODY
    assert a.send(b.id, b"x" * MAX_BODY).status == 200
    assert b.wait().body == b"x" * MAX_BODY


def test_huge_announced_body_is_not_buffered(server, pair):
    """A 1 GB Content-Length is refused: the server discards, never stores."""
    proc, url = server
    a, b = pair
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    size = 64 * 1024 * 1024
    sock.sendall(b"POST /message?peer_id=%d&to=%d HTTP/1.0\r\nContent-Length: %d\r\n\r\n"
                 % (a.id, b.id, size))
    chunk = b"y" * 65536
    for _ in range(size // len(chunk)):
        sock.sendall(chunk)
    data = read_to_end(sock)
    sock.close()
    assert data.startswith(b"HTTP/1.1 413 ")
    assert proc.stats.rss_bytes() < 200 * 1024 * 1024


def test_chunked_body_over_limit(pair):
    a, b = pair
    browser = Browser(a.url)
    browser.conn.putrequest("POST", "/message?peer_id=%d&to=%d" % (a.id, b.id))
    browser.conn.putheader("Transfer-Encoding", "chunked")
    browser.conn.endheaders()
    for _ in range(3):
        browser.conn.send(b"%x\r\n%s\r\n" % (MAX_BODY // 2, b"z" * (MAX_BODY // 2)))
    browser.conn.send(b"0\r\n\r\n")
    response = browser.conn.getresponse()
    assert response.status == 413
    response.read()
    browser.close()


def test_full_mailbox_refuses_and_loses_nothing(pair):
    a, b = pair
    for i in range(MAX_QUEUE):
        assert a.send(b.id, b"m%d" % i).status == 200
    refused = a.send(b.id, b"overflow")
    assert refused.status == 503
    assert refused.body.startswith(b"Mailbox of peer %d is full" % b.id)
    assert [b.wait().body for _ in range(MAX_QUEUE)] == [b"m%d" % i for i in range(MAX_QUEUE)]
    assert a.send(b.id, b"later").status == 200
    assert b.wait().body == b"later"


def test_server_full(run_twistd):
    # Its own server: here, non-draining fillers would be dropped for
    # overflowing their mailboxes (MAX_QUEUE) long before the server fills.
    _, url = start_pcsignal(run_twistd, "--max-peers", "5")
    peers = [native(url, "GET", "/sign_in?filler") for _ in range(5)]
    assert [p.status for p in peers] == [200] * 5
    refused = native(url, "GET", "/sign_in?late")
    assert refused.status == 503
    assert refused.body == b"Server full: 5 peers signed in, try again later."
    assert native(url, "GET", "/sign_out?peer_id=%d" % peers[0].pragma).status == 200
    assert native(url, "GET", "/sign_in?late").status == 200


def test_name_cannot_forge_entries(url):
    victim = Peer(url, "watcher")
    forger = Peer(url, "evil%0Afake,99,1%0D%0A")
    item = victim.wait()
    assert item.body == b"evil_fake_99_1__,%d,1\n" % forger.id
    assert forger.list.count(b"\n") == 2
    long = Peer(url, "n" * 5000)
    assert long.list.split(b"\n")[0] == b"n" * 512 + b",%d,1" % long.id
    for p in (victim, forger, long):
        p.sign_out()


def test_second_wait_answers_the_first(pair):
    a, b = pair
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("a", b.wait()))
    t.start()
    parked_waits_become(a.url, 1)
    second = {}
    t2 = threading.Thread(target=lambda: second.setdefault("a", b.wait()))
    t2.start()
    t.join(5)
    assert first["a"].status == 409
    assert a.send(b.id, b"to-second").status == 200
    t2.join(5)
    assert second["a"].body == b"to-second"


def test_vanished_wait_does_not_swallow_next_item(server, pair):
    a, b = pair
    port = int(server[1].rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /wait?peer_id=%d HTTP/1.0\r\n\r\n" % b.id)
    parked_waits_become(a.url, 1)
    sock.close()  # the client vanishes
    parked_waits_become(a.url, 0)
    assert a.send(b.id, b"kept").status == 200
    assert b.wait().body == b"kept"


def test_peer_without_wait_times_out(url):
    watcher = Peer(url, "watcher")
    idle = Peer(url, "idle")
    assert watcher.wait().body == b"idle,%d,1\n" % idle.id
    started = time.monotonic()
    # The watcher keeps a wait parked (so it stays); idle never waits.
    item = watcher.wait(timeout=PEER_TIMEOUT + 10)
    assert item.body == b"idle,%d,0\n" % idle.id
    assert time.monotonic() - started >= PEER_TIMEOUT - 0.5
    assert idle.wait().status == 500
    watcher.sign_out()


def test_browser_keep_alive_with_origin(url):
    browser = Browser(url)
    response, body = browser.request("GET", "/sign_in?browser")
    assert response.status == 200
    assert response.getheader("Access-Control-Allow-Origin") == "*"
    assert response.getheader("Connection") is None  # kept alive
    me = int(response.getheader("Pragma"))
    sock = browser.sock
    response, body = browser.request("POST", "/message?peer_id=%d&to=%d" % (me, me), body=b"ping")
    assert (response.status, body) == (200, b"ping")
    response, body = browser.request("GET", "/sign_out?peer_id=%d" % me)
    assert response.status == 200
    assert browser.sock is sock  # one connection for all three
    browser.close()


def test_browser_connection_close_is_honoured(url):
    browser = Browser(url)
    response, _ = browser.request("GET", "/sign_in?b", headers={"Connection": "close"})
    assert response.getheader("Connection") == "close"
    native(url, "GET", "/sign_out?peer_id=%s" % response.getheader("Pragma"))


def test_slowloris_is_cut_off(url):
    """A client dribbling header lines forever is closed after request-timeout,
    though it is never idle long enough for the idle timeout."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    sock.sendall(b"GET /sign_in?slow HTTP/1.1\r\nHost: x\r\n")
    closed = False
    while time.monotonic() - started < REQUEST_TIMEOUT + 5:
        # Wait up to 0.25 s for the server to hang up, else dribble on.
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            try:
                closed = sock.recv(100) == b""
            except ConnectionResetError:
                closed = True
            break
        sock.sendall(b"X-Slow: 1\r\n")
    sock.close()
    assert closed
    assert REQUEST_TIMEOUT - 0.2 <= time.monotonic() - started < IDLE_TIMEOUT


def test_idle_keep_alive_connection_is_closed(url):
    browser = Browser(url, timeout=IDLE_TIMEOUT + 10)
    response, _ = browser.request("GET", "/healthz")
    assert response.status == 200 and response.getheader("Connection") is None
    started = time.monotonic()
    assert browser.sock.recv(100) == b""  # we send nothing more; the server hangs up
    assert IDLE_TIMEOUT - 0.5 <= time.monotonic() - started < IDLE_TIMEOUT + 5
    browser.close()


def test_silent_connections_are_closed_at_the_request_timeout(url):
    """Connections that never send a byte are each closed within the request
    timeout plus 3 s of connecting (docs/benchmarks.rst has 1,000 of them)."""
    port = int(url.rsplit(":", 1)[1])
    selector = selectors.DefaultSelector()
    lifetimes = []

    def reap(timeout):
        for key, _ in selector.select(timeout):
            try:
                assert key.fileobj.recv(100) == b""
            except ConnectionResetError:
                pass
            lifetimes.append(time.monotonic() - key.data)
            selector.unregister(key.fileobj)
            key.fileobj.close()

    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_READ, time.monotonic())
        reap(0)  # connecting can take a while: note closes as they come
    deadline = time.monotonic() + REQUEST_TIMEOUT + 3
    while selector.get_map() and time.monotonic() < deadline:
        reap(deadline - time.monotonic())
    left = len(selector.get_map())
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    assert left == 0
    assert REQUEST_TIMEOUT - 0.2 <= min(lifetimes) and max(lifetimes) < REQUEST_TIMEOUT + 3


def test_static_client_and_not_found(url):
    assert native(url, "GET", "/does-not-exist.js").status == 404
    assert native(url, "GET", "/../setup.py").status == 404


def test_form_typed_message_is_relayed_untouched(pair):
    """Bodies are opaque: a form or multipart Content-Type is not parsed."""
    a, b = pair
    for ctype, body in [(b"application/x-www-form-urlencoded", b"a=1&b=2"),
                        (b"multipart/form-data; boundary=x", b"--x\r\nnot really\r\n")]:
        assert a.send(b.id, body, ctype).status == 200
        got = b.wait()
        assert (got.body, got.header(b"Content-Type")) == (body, ctype)


def test_queued_bytes_limit(run_twistd):
    _, url = start_pcsignal(run_twistd, "--max-queued-bytes", "100")
    a, b = Peer(url, "a"), Peer(url, "b")
    assert a.send(b.id, b"x" * 60).status == 200
    refused = a.send(b.id, b"y" * 60)
    assert refused.status == 503
    assert refused.body == (b"Server busy: 100 bytes of messages wait to be picked up; "
                            b"message not queued, retry later.")
    assert b.wait().body == b"x" * 60
    assert a.send(b.id, b"y" * 60).status == 200
    assert b.wait().body == b"y" * 60
