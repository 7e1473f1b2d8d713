"""
The state file: MemoryChannel.snapshot()/restore() on a fake clock, and the
file itself (atomic write, removal after loading, unusable files moved
aside).  The real restart is in test_operations.py.
"""

import json
import os

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from pcsignal import state
from pcsignal.channel import Limits, sequential_ids
from pcsignal.channel.memory import MemoryChannel

TIMEOUT = 30.0


def channel(clock=None):
    return MemoryChannel(clock or Clock(), Limits(peer_timeout=TIMEOUT), new_id=sequential_ids())


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def through_json(snapshot):
    return json.loads(json.dumps(snapshot))


@pytest.fixture
def busy():
    """alice, bob, carol; bob has queued messages for alice; one of bob's items in flight."""
    c = channel()
    alice = result(c.sign_in(b"alice"))
    bob = result(c.sign_in(b"bob"))
    carol = result(c.sign_in(b"carol"))
    for i in range(3):
        result(c.post(bob.peer_id, alice.peer_id, b"application/json", b"message %d" % i))
    result(c.post(alice.peer_id, bob.peer_id, None, b"\x00\xffbinary"))
    result(c.post(carol.peer_id, bob.peer_id, b"text/plain", b"second"))
    # bob: carol's sign-in notification is handed out and not acked (in flight).
    in_flight = result(c.wait(bob.peer_id))
    return c, alice, bob, carol, in_flight


def drain(c, peer_id):
    """Every item a peer gets, acking each, until its wait parks."""
    got = []
    while True:
        d = c.wait(peer_id)
        if not d.called:
            d.addErrback(lambda f: f.trap(CancelledError))
            d.cancel()
            return got
        delivery = result(d)
        got.append((delivery.item.pragma_for(peer_id), delivery.item.body, delivery.n))
        result(c.ack(peer_id, delivery.n))


def test_snapshot_and_restore_keep_members_items_and_numbers(busy):
    c, alice, bob, carol, in_flight = busy
    snapshot = through_json(c.snapshot())
    restored = channel()
    restored.restore(snapshot)

    assert restored.peer_count == 3
    assert (restored.queued_count, restored.queued_bytes) == (c.queued_count, c.queued_bytes)
    for peer in (alice, bob, carol):
        result(restored.check_token(peer.peer_id, peer.token))
    # alice: told of bob and carol, then bob's three messages, in order.
    assert drain(restored, alice.peer_id) == [
        (alice.peer_id, b"bob,%d,1\n" % bob.peer_id, 1),
        (alice.peer_id, b"carol,%d,1\n" % carol.peer_id, 2),
        (bob.peer_id, b"message 0", 3),
        (bob.peer_id, b"message 1", 4),
        (bob.peer_id, b"message 2", 5),
    ]
    # bob: the item in flight at the stop comes again first, with its number.
    got = drain(restored, bob.peer_id)
    assert got[0] == (bob.peer_id, in_flight.item.body, in_flight.n)
    assert got[1:] == [(alice.peer_id, b"\x00\xffbinary", 2), (carol.peer_id, b"second", 3)]
    assert drain(restored, carol.peer_id) == []
    # The id allocator goes on where it was.
    assert result(restored.sign_in(b"dave")).peer_id == 4


def test_restored_notifications_are_shared_and_still_coalesce():
    c = channel()
    alice = result(c.sign_in(b"alice"))
    bob = result(c.sign_in(b"bob"))
    carol = result(c.sign_in(b"carol"))  # alice and bob are both told of carol
    restored = channel()
    restored.restore(through_json(c.snapshot()))
    told = [m for m in restored._members.values() if m.peer_id != carol.peer_id]
    assert told[0].presence[carol.peer_id] is told[1].presence[carol.peer_id]
    # carol leaves before alice was told she came: alice hears nothing of her.
    result(restored.sign_out(carol.peer_id))
    assert [body for _, body, _ in drain(restored, alice.peer_id)] == [
        b"bob,%d,1\n" % bob.peer_id]


def test_a_restored_peer_that_does_not_come_back_leaves_as_usual(busy):
    c, alice, bob, carol, _ = busy
    clock = Clock()
    restored = channel(clock)
    restored.restore(through_json(c.snapshot()))
    drain(restored, alice.peer_id)
    waiting = restored.wait(alice.peer_id)  # alice comes back and waits; bob and carol do not
    clock.advance(TIMEOUT)
    assert restored.peer_count == 1
    told = result(waiting)
    result(restored.ack(alice.peer_id, told.n))
    assert [told.item.body] + [body for _, body, _ in drain(restored, alice.peer_id)] == [
        b"bob,%d,0\n" % bob.peer_id, b"carol,%d,0\n" % carol.peer_id]
    assert restored.queued_bytes == 0  # bob's messages left with him


@pytest.mark.parametrize("damage", [
    lambda s: s["members"][0].update(id=0),
    lambda s: s["members"][0].update(token=""),
    lambda s: s["members"][1].update(id=s["members"][0]["id"]),
    lambda s: s["members"][0]["items"][0].update(body="not base64!"),
    lambda s: s["members"][0]["items"][0].pop("subject"),
    lambda s: s["members"][0].pop("name"),
    lambda s: s["members"].append("nonsense"),
])
def test_a_malformed_snapshot_changes_nothing(busy, damage):
    c = busy[0]
    snapshot = through_json(c.snapshot())
    damage(snapshot)
    restored = channel()
    with pytest.raises((ValueError, KeyError, TypeError)):
        restored.restore(snapshot)
    assert (restored.peer_count, restored.queued_count, restored.queued_bytes) == (0, 0, 0)


# -- the file --------------------------------------------------------------------------


@pytest.fixture
def events():
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def texts(events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_namespace") == "pcsignal.state"]


def test_saved_atomically_loaded_once(busy, tmp_path, events):
    c = busy[0]
    path = str(tmp_path / "state.json")
    state.save(path, c)
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left
    with open(path) as f:
        document = json.load(f)
    assert (document["format"], document["version"]) == ("pcsignal-state", 1)
    restored = channel()
    assert state.load(path, restored)
    assert restored.peer_count == 3
    assert not os.path.exists(path)  # a crash later cannot bring it back
    assert texts(events)[-1] == "state restored from %s: 3 peers, 8 queued items" % (path,)
    assert not state.load(path, channel())  # nothing there now: start empty


@pytest.mark.parametrize("content, problem", [
    (lambda text: text[: len(text) // 2], r"not a complete JSON document"),
    (lambda text: "", r"not a complete JSON document"),
    (lambda text: '{"format": "something else"}', r"not a pcsignal state file"),
    (lambda text: text.replace('"version":1', '"version":99'),
     r"state format version 99, this pcsignal reads version 1"),
    (lambda text: text.replace('"id":1,', '"id":"one",'), r"malformed state \(ValueError"),
])
def test_an_unusable_file_is_moved_aside_and_the_server_starts_empty(
        busy, tmp_path, events, content, problem):
    import re

    path = str(tmp_path / "state.json")
    state.save(path, busy[0])
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(content(text))
    restored = channel()
    assert not state.load(path, restored)
    assert restored.peer_count == 0
    [aside] = os.listdir(tmp_path)
    assert re.fullmatch(r"state\.json\.bad-\d{8}T\d{6}", aside)
    line = texts(events)[-1]
    assert re.fullmatch(r"state file %s unusable, starting empty: %s.*; moved to %s"
                        % (re.escape(path), problem, re.escape(str(tmp_path / aside))), line), line


def test_an_unreadable_file_is_moved_aside(tmp_path, events):
    path = str(tmp_path / "state.json")
    os.mkdir(path)  # reading it fails even as root
    assert not state.load(path, channel())
    assert "cannot read it: Is a directory" in texts(events)[-1]
    assert not os.path.exists(path)


def test_a_failed_write_is_one_line_and_leaves_no_temporary_file(busy, tmp_path, events):
    path = str(tmp_path / "gone" / "state.json")
    state.save(path, busy[0])
    assert texts(events)[-1].startswith("cannot write the state file %s: " % (path,))
    assert os.listdir(tmp_path) == []
