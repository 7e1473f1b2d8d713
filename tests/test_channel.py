"""MemoryChannel: members, mailboxes, parked waits and liveness, on a fake clock."""

import pytest
from twisted.internet.task import Clock

from pcsignal.channel import (
    Item, MailboxFull, ServerBusy, ServerFull, ShuttingDown, UnknownPeer, WaitReplaced,
    sequential_ids,
)
from pcsignal.channel.memory import MemoryChannel


def result_of(d):
    """The result of an already-fired Deferred (raising its failure)."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def failure_of(d, kind):
    with pytest.raises(kind):
        result_of(d)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def channel(clock):
    return MemoryChannel(clock, peer_timeout=30, max_peers=5, max_queue=3, new_id=sequential_ids())


def sign_in(channel, name):
    return result_of(channel.sign_in(name.encode()))


def test_sign_in_lists_new_peer_first_and_notifies_others(channel):
    assert sign_in(channel, "alice") == (1, b"alice,1,1\n")
    assert sign_in(channel, "bob") == (2, b"bob,2,1\nalice,1,1\n")
    item = result_of(channel.wait(1))
    assert item == Item(None, b"bob,2,1\n", b"text/plain")
    assert item.notification and item.pragma_for(1) == 1
    assert channel.queued_count == 0


def test_message_to_parked_wait_is_delivered_at_once(channel):
    sign_in(channel, "a"), sign_in(channel, "b")
    d = channel.wait(2)
    assert not d.called and channel.waiting_count == 1
    result_of(channel.post(1, 2, b"application/json", b"{}"))
    item = result_of(d)
    assert item == Item(1, b"{}", b"application/json")
    assert not item.notification and item.pragma_for(2) == 1
    assert channel.waiting_count == 0


def test_mailbox_keeps_order(channel):
    sign_in(channel, "a"), sign_in(channel, "b")
    assert result_of(channel.wait(1)).body == b"b,2,1\n"
    for body in [b"1", b"2", b"3"]:
        result_of(channel.post(2, 1, None, body))
    assert [result_of(channel.wait(1)).body for _ in range(3)] == [b"1", b"2", b"3"]


def test_post_to_or_from_unknown_peer(channel):
    sign_in(channel, "a")
    failure_of(channel.post(1, 99, None, b"x"), UnknownPeer)
    failure_of(channel.post(99, 1, None, b"x"), UnknownPeer)
    failure_of(channel.wait(99), UnknownPeer)
    failure_of(channel.sign_out(99), UnknownPeer)


def test_full_mailbox_refuses_message_and_loses_nothing(channel):
    sign_in(channel, "a"), sign_in(channel, "b")
    result_of(channel.wait(1))  # drain b's sign-in notification
    for body in [b"1", b"2", b"3"]:
        result_of(channel.post(2, 1, None, body))
    failure_of(channel.post(2, 1, None, b"4"), MailboxFull)
    assert [result_of(channel.wait(1)).body for _ in range(3)] == [b"1", b"2", b"3"]
    result_of(channel.post(2, 1, None, b"4"))
    assert result_of(channel.wait(1)).body == b"4"


def test_peer_whose_mailbox_overflows_with_notifications_is_dropped(channel):
    sign_in(channel, "slow")
    watcher, _ = sign_in(channel, "watcher")
    parked = []
    for name in ["c", "d", "e"]:  # slow's 3rd and 4th notification do not fit
        parked.append(channel.wait(watcher))
        sign_in(channel, name)
    failure_of(channel.wait(1), UnknownPeer)
    assert channel.peer_count == 4
    # The others hear that slow is gone: nothing is lost silently.
    assert [result_of(d).body for d in parked] == [b"c,3,1\n", b"d,4,1\n", b"e,5,1\n"]
    assert result_of(channel.wait(watcher)).body == b"slow,1,0\n"


def test_server_full(clock):
    channel = MemoryChannel(clock, max_peers=5)
    for i in range(5):
        result_of(channel.sign_in(b"x"))
    failure_of(channel.sign_in(b"late"), ServerFull)
    assert channel.peer_count == 5


def test_sign_out_notifies_others_and_fails_parked_wait(channel):
    sign_in(channel, "a"), sign_in(channel, "b")
    result_of(channel.wait(1))
    parked = channel.wait(2)
    waiting = channel.wait(1)
    result_of(channel.sign_out(2))
    failure_of(parked, UnknownPeer)
    assert result_of(waiting).body == b"b,2,0\n"
    assert channel.peer_count == 1 and channel.waiting_count == 0


def test_second_wait_replaces_the_first(channel):
    sign_in(channel, "a"), sign_in(channel, "b")
    result_of(channel.wait(1))
    first = channel.wait(1)
    second = channel.wait(1)
    failure_of(first, WaitReplaced)
    result_of(channel.post(2, 1, None, b"hi"))
    assert result_of(second).body == b"hi"
    assert channel.waiting_count == 0


def test_cancelled_wait_does_not_swallow_the_next_item(channel):
    sign_in(channel, "a"), sign_in(channel, "b")
    result_of(channel.wait(1))
    d = channel.wait(1)
    d.addErrback(lambda f: None)
    d.cancel()
    assert channel.waiting_count == 0
    result_of(channel.post(2, 1, None, b"kept"))
    assert result_of(channel.wait(1)).body == b"kept"


def test_peer_without_parked_wait_times_out(channel, clock):
    sign_in(channel, "a"), sign_in(channel, "b")
    result_of(channel.wait(1))
    watcher = channel.wait(1)
    clock.advance(29.9)
    assert channel.peer_count == 2
    clock.advance(0.2)
    assert channel.peer_count == 1
    assert result_of(watcher).body == b"b,2,0\n"


def test_parked_wait_keeps_peer_alive_and_answer_restarts_timer(channel, clock):
    sign_in(channel, "a"), sign_in(channel, "b")
    result_of(channel.wait(1))
    d = channel.wait(1)
    channel.wait(2)
    clock.advance(100)
    assert channel.peer_count == 2  # both parked all along
    result_of(channel.post(2, 1, None, b"x"))
    assert result_of(d).body == b"x"
    clock.advance(29)
    assert channel.peer_count == 2
    clock.advance(2)
    assert channel.peer_count == 1  # 1 never came back


def test_cancelled_wait_starts_the_timer(channel, clock):
    sign_in(channel, "a")
    d = channel.wait(1)
    d.addErrback(lambda f: None)
    clock.advance(100)
    d.cancel()
    clock.advance(29)
    assert channel.peer_count == 1
    clock.advance(2)
    assert channel.peer_count == 0


def test_close_answers_every_parked_wait(channel, clock):
    sign_in(channel, "a"), sign_in(channel, "b")
    result_of(channel.wait(1))
    waits = [channel.wait(1), channel.wait(2)]
    result_of(channel.close())
    for d in waits:
        failure_of(d, ShuttingDown)
    assert not clock.getDelayedCalls()
    failure_of(channel.sign_in(b"c"), ShuttingDown)


def test_random_ids_are_valid_and_distinct(clock):
    channel = MemoryChannel(clock, max_peers=200)
    ids = [result_of(channel.sign_in(b"x"))[0] for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(1 <= i <= 2**31 - 1 for i in ids)
    assert ids != sorted(ids)


def test_delayed_calls_are_one_per_idle_peer(channel, clock):
    for name in "abc":
        sign_in(channel, name)
    assert len(clock.getDelayedCalls()) == 3
    for i in (1, 2, 3):
        while True:
            d = channel.wait(i)
            if not d.called:
                break
    assert len(clock.getDelayedCalls()) == 0


def test_wait_parked_from_inside_a_delivery_keeps_the_peer(channel, clock):
    """An in-process client may re-park from its callback; it must stay alive."""
    sign_in(channel, "a"), sign_in(channel, "b")
    result_of(channel.wait(1))
    got = []

    def again(item):
        got.append(item.body)
        channel.wait(1).addCallback(again)

    channel.wait(1).addCallback(again)
    result_of(channel.post(2, 1, None, b"x"))
    channel.wait(2)
    clock.advance(100)
    assert got == [b"x"] and channel.peer_count == 2


def test_queued_message_bytes_are_capped_for_the_whole_server(clock):
    channel = MemoryChannel(clock, max_queued_bytes=10, new_id=sequential_ids())
    for name in "abc":
        result_of(channel.sign_in(name.encode()))
    for peer in (1, 2):
        while True:  # drain the sign-in notifications
            if not channel.wait(peer).called:
                break
    # 1 and 2 are parked: messages to them are delivered, never queued.
    result_of(channel.post(3, 1, None, b"x" * 50))
    # 3 is not parked: its mailbox takes bodies up to 10 bytes in all.
    result_of(channel.post(1, 3, None, b"123456"))
    result_of(channel.post(2, 3, None, b"7890"))
    assert channel.queued_bytes == 10
    failure_of(channel.post(1, 3, None, b"!"), ServerBusy)
    # c signed in last: its mailbox holds only the two messages.
    assert [result_of(channel.wait(3)).body for _ in range(2)] == [b"123456", b"7890"]
    assert channel.queued_bytes == 0
    result_of(channel.post(1, 3, None, b"!"))
    result_of(channel.sign_out(3))  # its queued "!" goes with it
    assert channel.queued_bytes == 0
    assert channel.queued_count == 1  # 1 is not parked any more: c's sign-out waits for it
