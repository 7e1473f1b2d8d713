"""
The WebSocket transport's timers on twisted.internet.task.Clock: when the
settling pings go, what their pongs prove, the window, and liveness.  The
socket runs in-process on a StringTransport (a real handshake, real frames)
against a MemoryChannel on the same Clock.
"""

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from pcsignal import ws
from pcsignal.channel.memory import MemoryChannel
from pcsignal.web import SignalingSite

PING_INTERVAL = 10.0
MASK = b"\x11\x22\x33\x44"


def client_frame(payload: bytes, opcode=0x1) -> bytes:
    """A masked frame from a client (RFC 6455 5.2)."""
    assert len(payload) < 126
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + MASK + masked


def server_frames(data: bytes):
    """(opcode, payload) of each whole unmasked frame from the server."""
    frames = []
    while data:
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        frames.append((opcode, data[start:start + length]))
        data = data[start + length:]
    return frames


class Client:
    """One socket of the transport, driven frame by frame."""

    def __init__(self, factory):
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.transport = StringTransport()
        # On a real connection the HTTP channel that upgraded it is still
        # registered as its producer (autobahn unregisters it on a drop).
        self.transport.registerProducer(self, True)
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: pcsignal.v1\r\n\r\n")
        assert self.transport.value().startswith(b"HTTP/1.1 101 ")
        self.transport.clear()

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass

    def send(self, frame: dict) -> None:
        self.protocol.dataReceived(client_frame(json.dumps(frame).encode()))

    def pong(self, payload: bytes) -> None:
        self.protocol.dataReceived(client_frame(payload, opcode=0xA))

    def read(self):
        """Frames written since the last read: (texts as dicts, ping payloads)."""
        frames = server_frames(self.transport.value())
        self.transport.clear()
        texts = [json.loads(p) for op, p in frames if op == 0x1]
        pings = [p for op, p in frames if op == 0x9]
        return texts, pings


@pytest.fixture
def world():
    clock = Clock()
    channel = MemoryChannel(clock)
    site = SignalingSite(channel, reactor=clock)
    factory = ws.SignalingSocketFactory(channel, site, PING_INTERVAL, clock)
    return clock, channel, factory


def signed_in(factory, name):
    client = Client(factory)
    client.send({"type": "sign_in", "name": name})
    texts, _ = client.read()
    assert texts[0]["type"] == "signed_in"
    return client, texts[0]["id"]


def test_a_quiet_tail_is_settled_by_one_ping_after_the_settle_delay(world):
    clock, channel, factory = world
    alice, alice_id = signed_in(factory, "alice")
    bob, bob_id = signed_in(factory, "bob")
    for i in range(3):
        bob.send({"type": "message", "to": alice_id, "data": "m%d" % i})
    texts, pings = alice.read()
    assert [t.get("n") for t in texts] == [1, 2, 3, 4]  # bob's arrival, then 3 messages
    assert pings == [] and channel.queued_count == 4
    clock.advance(ws.SETTLE_DELAY)
    _, pings = alice.read()
    assert pings == [b"4"]  # one ping, carrying the last n written
    alice.pong(b"3")  # not the ping's payload: proves nothing
    assert channel.queued_count == 4
    alice.pong(b"4")
    assert channel.queued_count == 0
    clock.advance(ws.SETTLE_DELAY)
    assert alice.read() == ([], [])  # nothing unproven: no more pings


def test_under_load_one_ping_per_half_window(world):
    clock, channel, factory = world
    alice, alice_id = signed_in(factory, "alice")
    bob, _ = signed_in(factory, "bob")
    for i in range(ws.ACK_EVERY - 1):  # with bob's arrival: ACK_EVERY unproven
        bob.send({"type": "message", "to": alice_id, "data": "m%d" % i})
    texts, pings = alice.read()
    assert len(texts) == ws.ACK_EVERY and pings == [b"%d" % ws.ACK_EVERY]
    # While that ping is out, no other goes, however many frames follow.
    for i in range(ws.ACK_EVERY):
        bob.send({"type": "message", "to": alice_id, "data": "more"})
    texts, pings = alice.read()
    assert len(texts) == ws.ACK_EVERY and pings == []
    # Its pong settles the first half and sends the next ping at once.
    alice.pong(b"%d" % ws.ACK_EVERY)
    _, pings = alice.read()
    assert pings == [b"%d" % (2 * ws.ACK_EVERY)]
    assert channel.queued_count == ws.ACK_EVERY


def test_no_more_than_a_window_is_written_ahead_of_proof(world):
    clock, channel, factory = world
    alice, alice_id = signed_in(factory, "alice")
    bob, _ = signed_in(factory, "bob")
    for i in range(ws.WINDOW + 10):
        bob.send({"type": "message", "to": alice_id, "data": "m%d" % i})
    texts, pings = alice.read()
    assert len(texts) == ws.WINDOW  # bob's arrival and WINDOW - 1 messages
    assert channel.queued_count == ws.WINDOW + 11  # the rest wait in the mailbox
    alice.pong(pings[0])
    texts, _ = alice.read()
    assert [t["n"] for t in texts] == list(range(ws.WINDOW + 1, ws.WINDOW + 12))


def test_a_socket_leaving_a_ping_unanswered_is_dropped_and_its_items_requeued(world):
    clock, channel, factory = world
    alice, alice_id = signed_in(factory, "alice")
    bob, _ = signed_in(factory, "bob")
    bob.send({"type": "message", "to": alice_id, "data": "unproven"})
    alice.read()
    clock.advance(ws.SETTLE_DELAY)
    assert alice.read()[1] == [b"2"]
    clock.advance(PING_INTERVAL - ws.SETTLE_DELAY)  # a liveness check: the ping is still out
    assert not alice.transport.disconnecting
    clock.advance(PING_INTERVAL)  # unanswered for longer than an interval
    assert alice.transport.disconnecting
    alice.protocol.connectionLost(Failure(ConnectionLost()))
    # A missed wait: alice stays for the peer timeout, her items back at the head.
    assert channel.peer_count == 2
    wait = channel.wait(alice_id)
    assert [wait.result.n, wait.result.item.body] == [1, b"bob,%d,1\n" % (bob.protocol.peer_id,)]


def test_pings_keep_a_quiet_socket_alive(world):
    clock, channel, factory = world
    alice, _ = signed_in(factory, "alice")
    for _ in range(5):
        clock.advance(PING_INTERVAL)
        _, pings = alice.read()
        assert pings == [b"0"]
        alice.pong(b"0")
    assert not alice.transport.disconnecting
    assert channel.peer_count == 1
