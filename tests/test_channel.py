"""
The channel contract, run against every IChannel implementation.

Each test gets a ``harness`` (see ``channel_harness`` below): a channel with
sequential ids and small limits, the fake clock its timers run on, and
``settle()``, which returns once the channel has acted on everything asked
of it (at once for the in-memory channel; a round trip for a channel behind
a server).  Tests await every result, so the same tests hold for channels
whose answers take time.
"""

import secrets
from dataclasses import replace

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from pcsignal.channel import (
    Delivery, IChannel, Item, Limits, MailboxFull, ServerBusy, ServerFull, ShuttingDown,
    UnknownPeer, WaitReplaced, notification, random_ids, sequential_ids,
)
from pcsignal.channel.memory import MemoryChannel
from pcsignal.channel.redis import RedisChannel
from pcsignal.channel.redis_link import parse_redis_url

LIMITS = Limits(peer_timeout=30, max_peers=5, max_queue=3, max_queued_bytes=1000)


class MemoryHarness:
    def __init__(self):
        self.clock = Clock()

    def make(self, limits=LIMITS, new_id=None):
        return MemoryChannel(self.clock, limits, new_id=new_id or sequential_ids())

    async def settle(self, channel):
        pass

    def advance(self, seconds):
        self.clock.advance(seconds)

    async def close(self):
        pass


class RedisHarness:
    """RedisChannels on the session's redis-server, each under its own prefix."""

    def __init__(self, redis_server):
        self.clock = Clock()
        self.url = redis_server.url
        self.channels = []

    def make(self, limits=LIMITS, new_id=None, prefix=None):
        """A channel under a prefix of its own, or under prefix: another instance of its."""
        channel = RedisChannel(self.clock, parse_redis_url(self.url), limits, new_id=new_id,
                               sequential=new_id is None,
                               prefix=prefix or "test:%s:" % secrets.token_hex(4))
        self.channels.append(channel)
        return channel

    async def settle(self, channel):
        # The acks it holds sent, then a round trip through Redis and back
        # over pub/sub, until nothing asked of Redis is still unanswered.
        await channel.flush()
        while True:
            await channel.sync()
            if not channel.link.busy:
                return

    def advance(self, seconds):
        self.clock.advance(seconds)

    async def close(self):
        for channel in self.channels:
            await channel.close()


HARNESSES = {"memory": MemoryHarness, "redis": RedisHarness}


@pytest_twisted.async_yield_fixture(params=sorted(HARNESSES))
async def harness(request):
    if request.param == "redis":
        h = RedisHarness(request.getfixturevalue("redis_server"))
    else:
        h = HARNESSES[request.param]()
    yield h
    await h.close()


@pytest.fixture
def channel(harness):
    return harness.make()


async def failure(d, kind):
    with pytest.raises(kind):
        await d


async def sign_in(channel, name):
    return (await channel.sign_in(name.encode())).peer_id


async def take(channel, peer_id):
    """One /wait as a client that reads its answer: wait, then ack."""
    delivery = await channel.wait(peer_id)
    await channel.ack(peer_id, delivery.n)
    return delivery.item


async def drain(harness, channel, peer_id):
    """Read every item held for a peer; leaves a wait parked."""
    bodies = []
    while True:
        d = channel.wait(peer_id)
        await harness.settle(channel)
        if not d.called:
            return bodies, d
        delivery = await d
        bodies.append(delivery.item.body)
        await channel.ack(peer_id, delivery.n)


async def parked(harness, channel, d):
    await harness.settle(channel)
    return not d.called


def test_channel_provides_the_interface(harness):
    channel = harness.make()
    verifyObject(IChannel, channel)
    assert channel.problem is None  # healthy


# -- sign-in, messages, sign-out -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sign_in_lists_new_peer_first_and_notifies_others(channel):
    alice = await channel.sign_in(b"alice")
    assert (alice.peer_id, alice.body) == (1, b"alice,1,1\n")
    bob = await channel.sign_in(b"bob")
    assert (bob.peer_id, bob.body) == (2, b"bob,2,1\nalice,1,1\n")
    assert alice.token != bob.token and len(bob.token) >= 16
    delivery = await channel.wait(1)
    assert delivery == Delivery(Item(None, b"bob,2,1\n", b"text/plain", 2), 1)
    assert delivery.item.notification and delivery.item.pragma_for(1) == 1
    await channel.ack(1, delivery.n)
    assert channel.queued_count == 0


@pytest_twisted.ensureDeferred
async def test_tokens_prove_identity(channel):
    a = await channel.sign_in(b"a")
    await channel.check_token(a.peer_id, a.token)
    await failure(channel.check_token(a.peer_id, a.token + "x"), UnknownPeer)
    await failure(channel.check_token(99, a.token), UnknownPeer)


@pytest_twisted.ensureDeferred
async def test_message_to_parked_wait_is_delivered_at_once(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    d = channel.wait(2)
    assert await parked(harness, channel, d) and channel.waiting_count == 1
    await channel.post(1, 2, b"application/json", b"{}")
    delivery = await d
    assert delivery.item == Item(1, b"{}", b"application/json")
    assert not delivery.item.notification and delivery.item.pragma_for(2) == 1
    assert channel.waiting_count == 0


@pytest_twisted.ensureDeferred
async def test_mailbox_keeps_order(channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    assert (await take(channel, 1)).body == b"b,2,1\n"
    for body in [b"1", b"2", b"3"]:
        await channel.post(2, 1, None, body)
    assert [(await take(channel, 1)).body for _ in range(3)] == [b"1", b"2", b"3"]


@pytest_twisted.ensureDeferred
async def test_post_to_or_from_unknown_peer(channel):
    await sign_in(channel, "a")
    await failure(channel.post(1, 99, None, b"x"), UnknownPeer)
    await failure(channel.post(99, 1, None, b"x"), UnknownPeer)
    await failure(channel.wait(99), UnknownPeer)
    await failure(channel.sign_out(99), UnknownPeer)
    await failure(channel.check(99), UnknownPeer)
    await channel.check(1)


@pytest_twisted.ensureDeferred
async def test_full_mailbox_refuses_message_and_loses_nothing(channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)  # b's sign-in notification
    for body in [b"1", b"2", b"3"]:
        await channel.post(2, 1, None, body)
    await failure(channel.post(2, 1, None, b"4"), MailboxFull)
    assert [(await take(channel, 1)).body for _ in range(3)] == [b"1", b"2", b"3"]
    await channel.post(2, 1, None, b"4")
    assert (await take(channel, 1)).body == b"4"


@pytest_twisted.ensureDeferred
async def test_peer_whose_mailbox_overflows_with_notifications_is_dropped(channel):
    await sign_in(channel, "slow")
    watcher = await sign_in(channel, "watcher")
    got = []
    for name in ["c", "d", "e"]:  # slow's 3rd and 4th notification do not fit
        d = channel.wait(watcher)
        await sign_in(channel, name)
        delivery = await d
        got.append(delivery.item.body)
        await channel.ack(watcher, delivery.n)
    await failure(channel.wait(1), UnknownPeer)
    assert channel.peer_count == 4
    # The others hear that slow is gone: nothing is lost silently.
    assert got == [b"c,3,1\n", b"d,4,1\n", b"e,5,1\n"]
    assert (await take(channel, watcher)).body == b"slow,1,0\n"


@pytest_twisted.ensureDeferred
async def test_server_full(harness):
    channel = harness.make(replace(LIMITS, max_peers=5, max_queue=10))
    for i in range(5):
        await channel.sign_in(b"x")
    await failure(channel.sign_in(b"late"), ServerFull)
    assert channel.peer_count == 5


@pytest_twisted.ensureDeferred
async def test_sign_out_notifies_others_and_fails_parked_wait(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    parked_b = channel.wait(2)
    waiting = channel.wait(1)
    await harness.settle(channel)
    await channel.sign_out(2)
    await failure(parked_b, UnknownPeer)
    assert (await waiting).item.body == b"b,2,0\n"
    assert channel.peer_count == 1 and channel.waiting_count == 0


@pytest_twisted.ensureDeferred
async def test_second_wait_replaces_the_first(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    first = channel.wait(1)
    await harness.settle(channel)
    second = channel.wait(1)
    await failure(first, WaitReplaced)
    await channel.post(2, 1, None, b"hi")
    assert (await second).item.body == b"hi"
    assert channel.waiting_count == 0


@pytest_twisted.ensureDeferred
async def test_cancelled_wait_does_not_swallow_the_next_item(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    d = channel.wait(1)
    d.addErrback(lambda f: None)
    await harness.settle(channel)
    d.cancel()
    await harness.settle(channel)
    assert channel.waiting_count == 0
    await channel.post(2, 1, None, b"kept")
    assert (await take(channel, 1)).body == b"kept"


# -- delivery is settled by evidence ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_items_are_numbered_per_receiver(channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await channel.post(2, 1, None, b"x")
    first = await channel.wait(1)
    await channel.ack(1, first.n)
    second = await channel.wait(1)
    assert (first.n, second.n) == (1, 2)
    assert second.item.body == b"x"
    await channel.post(1, 2, None, b"y")
    assert (await channel.wait(2)).n == 1  # b's own count


@pytest_twisted.ensureDeferred
async def test_next_wait_parks_until_the_item_in_flight_is_settled(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    await channel.post(2, 1, None, b"1")
    await channel.post(2, 1, None, b"2")
    first = await channel.wait(1)
    assert first.item.body == b"1"
    d = channel.wait(1)  # the client has not read "1" yet, as far as we know
    assert await parked(harness, channel, d)
    await channel.ack(1, first.n)
    assert (await d).item.body == b"2"


@pytest_twisted.ensureDeferred
async def test_requeued_item_comes_back_first_with_its_number(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    for body in [b"1", b"2"]:
        await channel.post(2, 1, None, body)
    lost = await channel.wait(1)
    d = channel.wait(1)
    await harness.settle(channel)
    await channel.requeue(1)  # the client vanished without reading "1"
    again = await d
    assert again == lost and again.item.body == b"1"
    await channel.ack(1, again.n)
    assert (await take(channel, 1)).body == b"2"
    assert channel.queued_count == 0 and channel.queued_bytes == 0


@pytest_twisted.ensureDeferred
async def test_a_window_hands_out_several_and_ack_is_cumulative(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    for body in [b"1", b"2", b"3"]:
        await channel.post(2, 1, None, body)
    got = [await channel.wait(1, window=2) for _ in range(2)]
    assert [d.item.body for d in got] == [b"1", b"2"]
    d = channel.wait(1, window=2)
    assert await parked(harness, channel, d)  # two in flight: the window is full
    await channel.ack(1, got[0].n)
    third = await d
    assert third.item.body == b"3"
    await channel.requeue(1)  # "2" and "3" were not read
    again = [await channel.wait(1, window=2) for _ in range(2)]
    assert [(d.n, d.item.body) for d in again] == [(third.n - 1, b"2"), (third.n, b"3")]
    await channel.ack(1, third.n)
    assert channel.queued_count == 0


@pytest_twisted.ensureDeferred
async def test_ack_forgets_requeued_items_it_covers(channel):
    """A resuming client says which it handled: those are not sent again."""
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    for body in [b"1", b"2", b"3"]:
        await channel.post(2, 1, None, body)
    sent = [await channel.wait(1, window=3) for _ in range(3)]
    await channel.requeue(1)
    await channel.ack(1, sent[1].n)
    assert (await take(channel, 1)).body == b"3"
    assert channel.queued_count == 0


@pytest_twisted.ensureDeferred
async def test_in_flight_items_count_against_the_limits(channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    for body in [b"1", b"2", b"3"]:
        await channel.post(2, 1, None, body)
    await channel.wait(1)
    await failure(channel.post(2, 1, None, b"4"), MailboxFull)
    assert channel.queued_count == 3 and channel.queued_bytes == 3


# -- presence coalescing ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_peer_that_came_and_went_untold_is_nothing(harness):
    channel = harness.make(replace(LIMITS, max_peers=100))
    watcher = await sign_in(channel, "watcher")
    for i in range(50):  # far more than max_queue: coalescing keeps it empty
        churner = await sign_in(channel, "churn")
        await channel.sign_out(churner)
    stayer = await sign_in(channel, "stayer")
    bodies, _ = await drain(harness, channel, watcher)
    assert bodies == [b"stayer,%d,1\n" % stayer]
    assert channel.queued_count == 0


@pytest_twisted.ensureDeferred
async def test_a_change_already_handed_out_is_not_coalesced(harness, channel):
    watcher = await sign_in(channel, "watcher")
    other = await sign_in(channel, "other")
    told = await channel.wait(watcher)  # in flight: the client may have read it
    await channel.sign_out(other)
    await channel.requeue(watcher)
    bodies, _ = await drain(harness, channel, watcher)
    assert told.item.body == b"other,%d,1\n" % other
    assert bodies == [b"other,%d,1\n" % other, b"other,%d,0\n" % other]


@pytest_twisted.ensureDeferred
async def test_the_latest_state_of_a_peer_replaces_an_untold_one(harness):
    # Random ids may come back: an untold "left" is replaced by the new "joined".
    ids = iter([1, 2, 2])
    channel = harness.make(new_id=lambda: next(ids))
    await sign_in(channel, "watcher")
    await sign_in(channel, "first")
    assert (await take(channel, 1)).body == b"first,2,1\n"
    await channel.sign_out(2)
    await sign_in(channel, "second")
    bodies, _ = await drain(harness, channel, 1)
    assert bodies == [b"second,2,1\n"]


def test_notification_items_say_who_and_what():
    item = notification("bob", 7, False)
    assert item == Item(None, b"bob,7,0\n", b"text/plain", 7)
    assert not item.joined and notification("bob", 7, True).joined


# -- liveness --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_peer_without_parked_wait_times_out(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    watcher = channel.wait(1)
    harness.advance(29.9)
    await harness.settle(channel)
    assert channel.peer_count == 2
    harness.advance(0.2)
    await harness.settle(channel)
    assert channel.peer_count == 1
    assert (await watcher).item.body == b"b,2,0\n"


@pytest_twisted.ensureDeferred
async def test_parked_wait_keeps_peer_alive_and_answer_restarts_timer(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    d = channel.wait(1)
    channel.wait(2)
    await harness.settle(channel)
    harness.advance(100)
    await harness.settle(channel)
    assert channel.peer_count == 2  # both parked all along
    await channel.post(2, 1, None, b"x")
    assert (await d).item.body == b"x"
    harness.advance(29)
    await harness.settle(channel)
    assert channel.peer_count == 2
    harness.advance(2)
    await harness.settle(channel)
    assert channel.peer_count == 1  # 1 never came back


@pytest_twisted.ensureDeferred
async def test_cancelled_wait_starts_the_timer(harness, channel):
    await sign_in(channel, "a")
    d = channel.wait(1)
    d.addErrback(lambda f: None)
    await harness.settle(channel)
    harness.advance(100)
    d.cancel()
    await harness.settle(channel)
    harness.advance(29)
    await harness.settle(channel)
    assert channel.peer_count == 1
    harness.advance(2)
    await harness.settle(channel)
    assert channel.peer_count == 0


@pytest_twisted.ensureDeferred
async def test_new_limits_apply_from_then_on(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    channel.limits = replace(LIMITS, max_queue=1, peer_timeout=5)
    await channel.post(2, 1, None, b"1")
    await failure(channel.post(2, 1, None, b"2"), MailboxFull)
    d = channel.wait(1)
    await channel.ack(1, (await d).n)  # answered: 1 has 5 s to come back
    harness.advance(6)
    await harness.settle(channel)
    assert channel.peer_count == 1


@pytest_twisted.ensureDeferred
async def test_wait_parked_from_inside_a_delivery_keeps_the_peer(harness, channel):
    """An in-process client may re-park from its callback; it must stay alive."""
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    got = []

    def again(delivery):
        got.append(delivery.item.body)
        channel.ack(1, delivery.n)
        channel.wait(1).addCallback(again)

    channel.wait(1).addCallback(again)
    await channel.post(2, 1, None, b"x")
    channel.wait(2)
    await harness.settle(channel)
    harness.advance(100)
    await harness.settle(channel)
    assert got == [b"x"] and channel.peer_count == 2


# -- shutting down and ids ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_close_answers_every_parked_wait_and_refuses_new_work(harness, channel):
    await sign_in(channel, "a"), await sign_in(channel, "b")
    await take(channel, 1)
    waits = [channel.wait(1), channel.wait(2)]
    await harness.settle(channel)
    await channel.close()
    for d in waits:
        await failure(d, ShuttingDown)
    await failure(channel.sign_in(b"c"), ShuttingDown)
    await failure(channel.post(1, 2, None, b"x"), ShuttingDown)
    await failure(channel.wait(1), ShuttingDown)  # answered at once, not parked


def test_memory_channel_stops_its_timers_on_close():
    harness = MemoryHarness()
    channel = harness.make()
    channel.sign_in(b"a")
    channel.close()
    assert not harness.clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_random_ids_are_valid_and_distinct(harness):
    channel = harness.make(replace(LIMITS, max_peers=200, max_queue=1000), new_id=random_ids())
    ids = [await sign_in(channel, "x") for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(1 <= i <= 2**31 - 1 for i in ids)
    assert ids != sorted(ids)


def test_memory_channel_has_one_delayed_call_per_idle_peer():
    harness = MemoryHarness()
    channel = harness.make()
    for name in "abc":
        channel.sign_in(name.encode())
    assert len(harness.clock.getDelayedCalls()) == 3
    for i in (1, 2, 3):
        while True:
            d = channel.wait(i)
            if not d.called:
                break
            channel.ack(i, d.result.n)
    assert len(harness.clock.getDelayedCalls()) == 0


@pytest_twisted.ensureDeferred
async def test_queued_message_bytes_are_capped_for_the_whole_server(harness):
    channel = harness.make(replace(LIMITS, max_queued_bytes=10, max_queue=10))
    for name in "abc":
        await sign_in(channel, name)
    for peer in (1, 2):
        await drain(harness, channel, peer)
    await channel.post(1, 3, None, b"123456")
    await channel.post(2, 3, None, b"7890")
    assert channel.queued_bytes == 10
    await failure(channel.post(1, 3, None, b"!"), ServerBusy)
    # In flight counts too, until the client is known to have read it.
    delivery = await channel.wait(3)
    await failure(channel.post(1, 3, None, b"!"), ServerBusy)
    await channel.ack(3, delivery.n)
    await channel.post(1, 3, None, b"!")
    await channel.sign_out(3)  # its queued bodies go with it
    assert channel.queued_bytes == 0


@pytest_twisted.ensureDeferred
async def test_long_names_are_clipped_in_log_lines(harness):
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        channel = harness.make()
        await channel.sign_in(b"n" * 512)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "sign-in" in e.get("log_format", "")]
    assert lines and all(len(line) < 300 and "(512 characters)" in line for line in lines), lines


def test_channel_events_carry_the_channel_namespace():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        MemoryHarness().make().sign_in(b"a")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert {e["log_namespace"] for e in events if "sign-in" in e.get("log_format", "")} == {
        "pcsignal.channel"}
