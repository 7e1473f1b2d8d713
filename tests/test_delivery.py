"""
Delivered means read: a /wait answer leaves the mailbox only once its
client read it, over real loopback sockets with real client behaviour --
clean closes, keep-alive, a second connection, resets after or in the
middle of an answer, a FIN before the answer arrived -- each alone and all
at once, over TCP and TLS.  Each test checks the exact sequence a receiver
finally reads: nothing lost, nothing twice, in order.
"""

import random
import select
import signal
import socket
import ssl
import threading
import time

import pytest

from conftest import LISTENING, REDIS_UP, TwistdProcess, start_pcsignal
from deploy_support import write_certificate_chain
from httpclients import (Peer, address, metric_samples, native, parked_waits_become, read_answer,
                         read_to_end, reset)
from pcsignal.settle import QUIET_SECONDS

MAX_BODY = 256 * 1024

pytestmark = pytest.mark.usefixtures("pcsignal_backend")


def started(proc):
    m = proc.wait_for_log(LISTENING)
    if "--redis" in proc.proc.args:
        proc.wait_for_log(REDIS_UP)
    return m


@pytest.fixture(scope="module")
def url(pcsignal_backend):
    proc = TwistdProcess("pcsignal", [
        "--listen", "tcp:0:interface=127.0.0.1", "--max-message-bytes", str(MAX_BODY),
        "--sign-in-rate", "0",  # some 80 sign-ins from one address
        *pcsignal_backend(),
    ])
    m = started(proc)
    yield "http://127.0.0.1:%s" % m.group("port")
    assert proc.stop() in (0, -15)
    assert "Traceback" not in proc.output(), proc.output()


def settled(url):
    """{(outcome, evidence): count} from /metrics."""
    return {(labels["outcome"], labels["evidence"]): value
            for labels, value in metric_samples(url, "pcsignal_deliveries_settled_total")}


def moved(before, after):
    """The counts that changed between two settled() readings."""
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def wait_request(peer_id, http11=False):
    if http11:
        return b"GET /wait?peer_id=%d HTTP/1.1\r\nHost: test\r\n\r\n" % (peer_id,)
    return b"GET /wait?peer_id=%d HTTP/1.0\r\n\r\n" % (peer_id,)


def connect(url, timeout=10):
    return socket.create_connection(address(url), timeout=timeout)


def until_readable(sock, timeout=10):
    """Block until the answer has reached this client's kernel."""
    assert select.select([sock], [], [], timeout)[0], "no answer within %ss" % (timeout,)


def send(sender, to, body):
    answer = sender.send(to, body)
    assert answer.status == 200, answer


@pytest.fixture
def pair(url):
    """A sender and a receiver that has already read its notification about the sender."""
    receiver = Peer(url, "receiver")
    sender = Peer(url, "sender")
    assert receiver.wait().body.startswith(b"sender,")
    yield sender, receiver
    sender.sign_out()
    receiver.sign_out()


def messages(count, size=40, tag=b"m"):
    return [tag + b"%04d" % i + b"." * (size - len(tag) - 4) for i in range(count)]


# -- one client behaviour at a time ------------------------------------------------


def test_reset_after_the_answer_arrived_sends_it_again(url, pair):
    sender, receiver = pair
    first, second = messages(2)
    send(sender, receiver.id, first)
    before = settled(url)
    sock = connect(url)
    sock.sendall(wait_request(receiver.id))
    until_readable(sock)
    reset(sock)  # killed with the answer unread in its buffer
    assert receiver.wait().body == first
    send(sender, receiver.id, second)
    assert receiver.wait().body == second
    assert moved(before, settled(url)).get(("unread", "reset"), 0) + \
        moved(before, settled(url)).get(("unread", "new_wait"), 0) == 1


def test_half_read_then_reset_sends_it_again(url, pair):
    sender, receiver = pair
    big = b"x" * 20000
    send(sender, receiver.id, big)
    sock = connect(url)
    sock.sendall(wait_request(receiver.id))
    got = b""
    while len(got) < 10000:
        got += sock.recv(10000 - len(got))
    reset(sock)
    again = receiver.wait()
    assert again.body == big and again.pragma == sender.id


def test_native_client_reads_and_closes_without_delay(url, pair):
    """New connection per /wait, read by Content-Length, close: each one is
    settled by the clean close at once, so twenty take far less than one
    quiet bound."""
    sender, receiver = pair
    sent = messages(20)
    for body in sent:
        send(sender, receiver.id, body)
    before = settled(url)
    started = time.monotonic()
    got = [receiver.wait().body for _ in sent]
    assert time.monotonic() - started < QUIET_SECONDS
    assert got == sent
    change = moved(before, settled(url))
    assert not any(outcome == "unread" for outcome, _ in change), change
    assert ("read", "quiet") not in change


def test_keep_alive_client_reads_in_order(url, pair):
    sender, receiver = pair
    sent = messages(20)
    for body in sent:
        send(sender, receiver.id, body)
    before = settled(url)
    sock = connect(url)
    started = time.monotonic()
    got, rest = [], b""
    for _ in sent:
        sock.sendall(wait_request(receiver.id, http11=True))
        answer, rest = read_answer(sock, rest)
        got.append(answer.body)
    assert time.monotonic() - started < QUIET_SECONDS
    assert got == sent
    sock.close()  # the last answer: settled by the clean close
    send(sender, receiver.id, b"after")
    assert receiver.wait().body == b"after"
    change = moved(before, settled(url))
    assert change[("read", "next_request")] == len(sent) - 1, change
    assert not any(outcome == "unread" for outcome, _ in change), change


def test_next_wait_on_a_second_connection_while_the_first_stays_open(url, pair):
    """A browser's fetch pool: the next /wait may go out on another
    connection; the first, still open and idle, shows the answer was read."""
    sender, receiver = pair
    sent = messages(20)
    for body in sent:
        send(sender, receiver.id, body)
    before = settled(url)
    socks = [connect(url), connect(url)]
    started = time.monotonic()
    got = []
    for i in range(len(sent)):
        sock = socks[i % 2]
        sock.sendall(wait_request(receiver.id, http11=True))
        got.append(read_answer(sock)[0].body)
    assert time.monotonic() - started < QUIET_SECONDS
    assert got == sent
    change = moved(before, settled(url))
    assert change[("read", "new_wait")] == len(sent) - 1, change
    for sock in socks:
        sock.close()


def test_silent_connection_counts_as_read_after_the_quiet_bound(url, pair):
    """Read, then neither a new request nor a close: after QUIET_SECONDS the
    item counts as read (a silent partition cannot be told apart).  An
    HTTP/1.0 client that reads to the end of the stream gets it at once:
    the server half-closes right after the answer."""
    sender, receiver = pair
    send(sender, receiver.id, b"silent")
    before = settled(url)
    sock = connect(url)
    sock.sendall(wait_request(receiver.id))
    started = time.monotonic()
    assert read_to_end(sock).endswith(b"\r\n\r\nsilent")
    assert time.monotonic() - started < QUIET_SECONDS
    deadline = started + QUIET_SECONDS + 10
    while ("read", "quiet") not in moved(before, settled(url)):
        assert time.monotonic() < deadline
    assert time.monotonic() - started >= QUIET_SECONDS - 0.1
    sock.close()
    send(sender, receiver.id, b"next")
    assert receiver.wait().body == b"next"


def test_close_before_the_whole_answer_arrived_is_not_read(url, pair):
    """A FIN counts as reading only once the client's kernel acknowledged
    the whole answer: here the client's receive buffer is too small for it,
    it half-closes, then closes with the rest unread (reset)."""
    sender, receiver = pair
    big = bytes(random.Random(1).randrange(256) for _ in range(12000))
    send(sender, receiver.id, big)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.settimeout(10)
    sock.connect(address(url))
    sock.sendall(wait_request(receiver.id))
    until_readable(sock)
    sock.shutdown(socket.SHUT_WR)  # FIN, acknowledging only what fitted
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault(
        "next", receiver.wait()))
    waiter.start()
    parked_waits_become(url, 1)  # the new /wait waits for the settlement
    reset(sock)
    waiter.join(10)
    assert result["next"].body == big


def test_sigterm_settles_at_once_answers_parked_waits_and_exits(run_twistd):
    proc, url = start_pcsignal(run_twistd)
    parked, silent, sender = Peer(url, "parked"), Peer(url, "silent"), Peer(url, "sender")
    for peer in (parked, silent):
        while peer.wait().body != b"sender,%d,1\n" % sender.id:
            pass
    send(sender, silent.id, b"unsettled")
    keep_alive = connect(url)
    keep_alive.sendall(wait_request(silent.id, http11=True))
    assert read_answer(keep_alive)[0].body == b"unsettled"  # and then says nothing
    answers = []
    waiter = threading.Thread(
        target=lambda: answers.append(parked.wait()))
    waiter.start()
    parked_waits_become(url, 1)
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    assert keep_alive.recv(10) == b""  # settled and closed without waiting for the bound
    assert time.monotonic() - started < QUIET_SECONDS
    proc.proc.wait(10)
    assert proc.stop() in (0, -signal.SIGTERM)  # exited: stop() sends nothing more
    waiter.join(5)
    assert (answers[0].status, answers[0].body) == (503, b"Server shutting down.")
    keep_alive.close()
    assert "Traceback" not in proc.output(), proc.output()


# -- all at once ------------------------------------------------------------------


def reads_and_closes(url, peer_id, i):
    return native(url, "GET", "/wait?peer_id=%d" % peer_id)


class KeepAlive:
    def __init__(self, url):
        self.sock = connect(url)

    def __call__(self, url, peer_id, i):
        self.sock.sendall(wait_request(peer_id, http11=True))
        return read_answer(self.sock)[0]


class TwoConnections:
    def __init__(self, url):
        self.socks = [connect(url), connect(url)]

    def __call__(self, url, peer_id, i):
        sock = self.socks[i % 2]
        sock.sendall(wait_request(peer_id, http11=True))
        return read_answer(sock)[0]


def every_other_wait(misbehave):
    """
    Reads and closes on odd turns; on even ones sends its /wait on a
    connection of its own, does ``misbehave(sock)`` and resets it.
    """

    def read(url, peer_id, i):
        if i % 2:
            return reads_and_closes(url, peer_id, i)
        sock = connect(url)
        sock.sendall(wait_request(peer_id))
        misbehave(sock)
        reset(sock)
        return None

    return read


def reads_half(sock):
    until_readable(sock)
    sock.recv(100)


def waits_5_ms(sock):
    """Reset 5 ms after sending: parked, being answered or answered."""
    time.sleep(0.005)  # the client's own behaviour, not synchronisation


BEHAVIOURS = {
    "reads and closes": lambda url: reads_and_closes,
    "keep-alive": KeepAlive,
    "two connections": TwoConnections,
    "resets every other answer": lambda url: every_other_wait(until_readable),
    "reads half of every other answer": lambda url: every_other_wait(reads_half),
    "abandons every other wait 5 ms after sending": lambda url: every_other_wait(waits_5_ms),
}


def test_many_clients_of_every_kind_at_once(url):
    per_kind, count = 5, 30
    receivers = [(kind, Peer(url, "r")) for kind in BEHAVIOURS for _ in range(per_kind)]
    senders = [Peer(url, "s") for _ in receivers]
    results, failures = {}, []

    def receive(kind, receiver, wanted):
        try:
            read = BEHAVIOURS[kind](url)
            got, i = [], 0
            while len(got) < len(wanted):
                answer = read(url, receiver.id, i)
                i += 1
                if answer is not None and answer.pragma != receiver.id:  # not a notification
                    got.append(answer.body)
            results[receiver.id] = (kind, got)
        except Exception as e:  # reported below
            failures.append("%s %d after %d: %r" % (kind, receiver.id, len(got), e))

    def post_all(sender, receiver, bodies):
        try:
            for body in bodies:
                send(sender, receiver.id, body)
        except Exception as e:
            failures.append("sender: %r" % (e,))

    wanted = {receiver.id: messages(count, tag=b"%d-" % sender.id)
              for (_, receiver), sender in zip(receivers, senders)}
    threads = [threading.Thread(target=receive, args=(kind, receiver, wanted[receiver.id]))
               for kind, receiver in receivers]
    threads += [threading.Thread(target=post_all, args=(sender, receiver, wanted[receiver.id]))
                for (_, receiver), sender in zip(receivers, senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert len(results) == len(receivers)
    for receiver_id, (kind, got) in results.items():
        assert got == wanted[receiver_id], kind
    for peer in senders + [p for _, p in receivers]:
        peer.sign_out()


# -- TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory, pcsignal_backend):
    """pcsignal on an ssl: endpoint: (base URL, client SSLContext)."""
    directory = str(tmp_path_factory.mktemp("tls"))
    ca_pem, _ = write_certificate_chain(directory)
    proc = TwistdProcess("pcsignal", [
        "--listen", "ssl:0:interface=127.0.0.1:privateKey=%s/privkey.pem:certKey=%s/cert.pem:"
        "extraCertChain=%s/chain.pem" % (directory, directory, directory),
        *pcsignal_backend(),
    ])
    m = started(proc)
    context = ssl.create_default_context(cadata=ca_pem.decode())
    yield "https://127.0.0.1:%s" % m.group("port"), context
    assert proc.stop() in (0, -15)
    assert "Traceback" not in proc.output(), proc.output()


def tls_exchange(base, context, request, sock=None):
    """One request over TLS; returns (answer, the TLS socket)."""
    if sock is None:
        sock = context.wrap_socket(connect(base), server_hostname="localhost")
    sock.sendall(request)
    return read_answer(sock)[0], sock


def tls_native(base, context, method, target, body=b""):
    request = b"%s %s HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (
        method, target, len(body), body)
    answer, sock = tls_exchange(base, context, request)
    sock.close()  # without close_notify, as Python's ssl does
    return answer


def test_tls_clients_get_every_item_once_in_order(tls):
    base, context = tls
    receiver = tls_native(base, context, b"GET", b"/sign_in?receiver").pragma
    sender = tls_native(base, context, b"GET", b"/sign_in?sender").pragma
    wait = b"/wait?peer_id=%d" % receiver
    assert tls_native(base, context, b"GET", wait).body.startswith(b"sender,")
    sent = messages(30)
    for body in sent:
        tls_native(base, context, b"POST", b"/message?peer_id=%d&to=%d" % (sender, receiver), body)
    # Ten on connections of their own, closed without close_notify; ten on
    # one keep-alive connection; ten alternating between two.
    got = [tls_native(base, context, b"GET", wait).body for _ in range(10)]
    keep_alive = None
    for _ in range(10):
        answer, keep_alive = tls_exchange(base, context, wait_request(receiver, True), keep_alive)
        got.append(answer.body)
    socks = [keep_alive, None]
    for i in range(10):
        answer, socks[i % 2] = tls_exchange(base, context, wait_request(receiver, True),
                                            socks[i % 2])
        got.append(answer.body)
    assert got == sent
    for sock in socks:
        sock.close()
