"""
Two RedisChannels in one process on one prefix, as two instances: orders of
events across instances that real processes produce only by chance, made
here on purpose by holding back what one instance hears over pub/sub.
"""

import secrets

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError

from pcsignal.channel import UnknownPeer
from test_channel import RedisHarness

WINDOW = 8  # a WebSocket's


class Instances(RedisHarness):
    """The channel tests' Redis harness, its channels all under one prefix."""

    def __init__(self, redis_server):
        super().__init__(redis_server)
        self.prefix = "test:%s:" % secrets.token_hex(4)

    def start(self):
        return self.make(prefix=self.prefix)

    async def settle_all(self):
        # Twice round: what one instance does may publish to the other.
        for _ in range(2):
            for channel in self.channels:
                await self.settle(channel)


class HeldBack:
    """What a channel hears over pub/sub, kept until released, in order."""

    def __init__(self, channel):
        self.channel = channel
        self.heard = []
        self.original = channel.link.on_message
        channel.link.on_message = self.heard.append

    def release(self):
        self.channel.link.on_message = self.original
        for message in self.heard:
            self.original(message)
        self.heard = []


@pytest_twisted.ensureDeferred
async def test_resume_back_before_the_news_of_the_first_resume(redis_server):
    """
    A WebSocket peer on instance A resumes on B, then at once back on A,
    before A has heard that B took it: A's socket keeps the peer and gets
    what is sent to it.  (A used to park on its stale registration; the news
    from B then replaced A's live socket, leaving the peer to B, where no
    socket was.)
    """
    instances = Instances(redis_server)
    a, b = instances.start(), instances.start()
    try:
        peer = (await a.sign_in(b"peer")).peer_id
        other = (await b.sign_in(b"other")).peer_id
        first = a.wait(peer, WINDOW)
        await instances.settle_all()
        notified = await first
        await a.ack(peer, notified.n)

        # Parked on A; its socket closes.
        gone = a.wait(peer, WINDOW)
        await instances.settle_all()
        gone.addErrback(lambda f: f.trap(CancelledError))
        gone.cancel()
        await a.requeue(peer)

        # It resumes on B; A does not hear of it yet.
        held = HeldBack(a)
        await b.requeue(peer)
        on_b = b.wait(peer, WINDOW)
        await b.flush()
        await b.sync()
        # That socket closes too, and the peer resumes on A.
        on_b.addErrback(lambda f: f.trap(CancelledError))
        on_b.cancel()
        await b.requeue(peer)
        await a.requeue(peer)
        on_a = a.wait(peer, WINDOW)
        await a.flush()
        held.release()
        await instances.settle_all()

        assert not on_a.called, "the live socket on A was answered: %r" % (on_a.result,)
        await b.post(other, peer, None, b"still there?")
        await instances.settle_all()
        delivery = await on_a
        assert (delivery.item.sender, delivery.item.body) == (other, b"still there?")
    finally:
        await instances.close()


@pytest_twisted.ensureDeferred
async def test_requeue_of_a_peer_signed_out_on_another_instance(redis_server):
    """The socket of a peer closes on A after B signed it out: nothing to give back, no error."""
    instances = Instances(redis_server)
    a, b = instances.start(), instances.start()
    try:
        peer = (await a.sign_in(b"peer")).peer_id
        parked = a.wait(peer, WINDOW)
        parked.addErrback(lambda f: f.trap(CancelledError))
        await instances.settle_all()
        held = HeldBack(a)  # A has not heard of the sign-out when the socket closes
        await b.sign_out(peer)
        parked.cancel()
        assert await a.requeue(peer) is None
        held.release()
        await instances.settle_all()
        with pytest.raises(UnknownPeer):
            await a.wait(peer, WINDOW)
    finally:
        await instances.close()
