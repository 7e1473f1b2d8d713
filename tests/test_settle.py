"""
pcsignal.settle on twisted.internet.task.Clock: the quiet bound, one sweep
timer for many answers, the recheck after a FIN, and what a socket shows
(open, closed, reset), with a real MemoryChannel and real loopback sockets.
"""

import socket

import pytest
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.task import Clock
from zope.interface import implementer

from httpclients import reset
from pcsignal.channel.memory import MemoryChannel
from pcsignal.settle import CLOSED, OPEN, RESET, QUIET_SECONDS, Deliveries, socket_state


@implementer(ISystemHandle)
class Transport:
    """The one thing settle asks of a transport: its OS socket."""

    def __init__(self, sock):
        self.sock = sock

    def getHandle(self):
        return self.sock


class Connection:
    """Stands in for SignalingHTTPChannel: the attributes settle uses."""

    def __init__(self, sock=None):
        self.answer = None
        self.transport = Transport(sock) if sock is not None else None
        self.settled = 0

    def answer_settled(self):
        self.settled += 1


def loopback_pair(client_buffer=None):
    """A connected loopback TCP pair: (server side, client side)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    if client_buffer:  # before connecting: it sets the window the client offers
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_buffer)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    return server, client


@pytest.fixture
def pair_of_sockets():
    server, client = loopback_pair()
    yield server, client
    server.close()
    client.close()


def peers_with_items(channel, count):
    """count receivers, each with one message handed out and nothing else held: [(id, n)]."""
    receivers = [channel.sign_in(b"r%d" % i).result.peer_id for i in range(count)]
    sender = channel.sign_in(b"sender").result.peer_id
    handed = []
    for receiver in receivers:
        while True:  # read the notifications about the others
            d = channel.wait(receiver)
            if not d.called:
                d.cancel()
                break
            channel.ack(receiver, d.result.n)
        channel.post(sender, receiver, b"text/plain", b"m%d" % len(handed))
        handed.append((receiver, channel.wait(receiver).result.n))
    return handed


def test_one_timer_settles_quiet_answers_oldest_first():
    clock = Clock()
    channel = MemoryChannel(Clock())  # its liveness timers are not under test
    deliveries = Deliveries(channel, clock)
    (a, na), (b, nb), (c, nc) = peers_with_items(channel, 3)
    connections = [Connection() for _ in range(3)]
    deliveries.handed(connections[0], a, na)
    clock.advance(0.5)
    deliveries.handed(connections[1], b, nb)
    clock.advance(0.5)
    deliveries.handed(connections[2], c, nc)
    assert len(clock.getDelayedCalls()) == 1
    connections[1].answer.next_request()  # b's client moved on
    assert len(deliveries) == 2
    clock.advance(QUIET_SECONDS - 1.0 - 0.01)
    assert len(deliveries) == 2
    clock.advance(0.01)
    assert list(deliveries.in_flight) == [c]  # a's deadline, not yet c's
    clock.advance(1.0)
    assert len(deliveries) == 0 and not clock.getDelayedCalls()
    assert [conn.settled for conn in connections] == [1, 1, 1]
    # Read: each receiver's mailbox is empty, its next wait parks.
    assert all(not channel.wait(r).called for r in (a, b, c))


def test_reset_requeues_at_once_and_a_new_wait_gets_it_again(pair_of_sockets):
    server, client = pair_of_sockets
    clock = Clock()
    channel = MemoryChannel(Clock())  # its liveness timers are not under test
    deliveries = Deliveries(channel, clock)
    [(peer, n)] = peers_with_items(channel, 1)
    deliveries.handed(Connection(server), peer, n)
    server.send(b"the answer")
    reset(client)
    deliveries.new_wait(peer)
    assert len(deliveries) == 0
    again = channel.wait(peer).result
    assert (again.item.body, again.n) == (b"m0", n)


def test_socket_states(pair_of_sockets):
    server, client = pair_of_sockets
    assert socket_state(server) == OPEN
    client.send(b"next request")
    assert socket_state(server) == OPEN
    assert server.recv(100) == b"next request"  # peeking consumed nothing
    client.shutdown(socket.SHUT_WR)
    assert socket_state(server) == CLOSED
    server.send(b"more")  # the client still reads: no reset yet
    assert socket_state(server) == CLOSED
    reset(client)
    assert socket_state(server) == RESET  # after a FIN too


def test_fin_before_the_answer_was_acknowledged_waits_for_the_verdict():
    """The client's kernel has not acknowledged the whole answer when its
    FIN arrives: look again until it does (read) or resets (not read)."""
    server, client = loopback_pair(client_buffer=2048)
    clock = Clock()
    channel = MemoryChannel(Clock())  # its liveness timers are not under test
    deliveries = Deliveries(channel, clock)
    [(peer, n)] = peers_with_items(channel, 1)
    connection = Connection(server)
    deliveries.handed(connection, peer, n)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sent = server.send(b"x" * 200000)  # more than the client's window
    client.shutdown(socket.SHUT_WR)
    connection.answer.closed_by_client()
    assert len(deliveries) == 1 and len(clock.getDelayedCalls()) == 2  # recheck, sweep
    clock.advance(0.1)
    assert len(deliveries) == 1
    reset(client)  # it closes with the rest unread
    clock.advance(0.1)
    assert len(deliveries) == 0 and sent > 0
    assert channel.wait(peer).result.n == n  # requeued
    server.close()


def test_shutdown_settles_every_answer_before_it_fires(pair_of_sockets):
    """
    settle_all (the stop, before the channel closes) fires only once every
    answer in flight is settled: one on an open socket at once (read), one
    whose client sent a FIN when its connection reports that FIN.
    """
    server, client = pair_of_sockets
    other_server, other_client = loopback_pair()
    clock = Clock()
    channel = MemoryChannel(Clock())  # its liveness timers are not under test
    deliveries = Deliveries(channel, clock)
    (a, na), (b, nb) = peers_with_items(channel, 2)
    deliveries.handed(Connection(server), a, na)
    closing = Connection(other_server)
    deliveries.handed(closing, b, nb)
    other_client.shutdown(socket.SHUT_WR)  # b's client closed; its connection has not said so yet
    done = deliveries.settle_all()
    assert list(deliveries.in_flight) == [b] and not done.called
    closing.answer.closed_by_client()  # what the connection calls on reading the FIN
    assert done.called and len(deliveries) == 0
    assert not channel.wait(a).called and not channel.wait(b).called  # both read
    other_server.close()
    other_client.close()
