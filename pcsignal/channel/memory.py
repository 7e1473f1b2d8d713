"""
MemoryChannel: the signaling channel with all state in this process.

Every operation is O(1) in the number of peers, except the two that are
O(peers) by nature: the sign-in answer (it lists everyone) and the
sign-in/sign-out notifications (everyone gets one).

A member's items pass through three queues: ``mailbox`` (not yet handed
out), ``in_flight`` (handed out, not yet settled) and ``returned`` (handed
out, then requeued: served again before the mailbox, keeping their numbers).
"""

from __future__ import annotations

import base64
import hmac
import secrets
from collections import deque
from typing import Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from pcsignal import logs, protocol
from pcsignal.channel import (
    Delivery,
    IChannel,
    Item,
    Limits,
    MailboxFull,
    ServerBusy,
    ServerFull,
    ShuttingDown,
    SignedIn,
    UnknownPeer,
    WaitReplaced,
    notification,
    random_ids,
)

# A module-level logger: as a class attribute, a Logger renames itself after the class.
log = logs.logger("pcsignal.channel")

# Rebuild a mailbox once this many cancelled notifications sit in it (and
# they outnumber the live items), so churn cannot grow it without bound.
_COMPACT_AFTER = 64


class _Member:
    __slots__ = ("peer_id", "name", "entry", "token", "mailbox", "in_flight", "returned",
                 "next_n", "presence", "cancelled", "waiter", "window", "timeout")

    def __init__(self, peer_id: int, name: str, token: str):
        self.peer_id = peer_id
        self.name = name
        self.entry = protocol.format_entry(name, peer_id, True)
        self.token = token
        self.mailbox: deque[Item] = deque()
        self.in_flight: deque[tuple[int, Item]] = deque()
        self.returned: deque[tuple[int, Item]] = deque()
        self.next_n = 1
        # Untold notifications in the mailbox, by the peer they are about;
        # a notification in the mailbox that is not here was cancelled.
        self.presence: dict[int, Item] = {}
        self.cancelled = 0
        self.waiter: Optional[Deferred] = None
        self.window = 1
        self.timeout = None  # IDelayedCall while no wait is parked

    def held(self) -> int:
        return len(self.mailbox) - self.cancelled + len(self.in_flight) + len(self.returned)

    def ready(self) -> bool:
        """An item can be handed out now."""
        return (bool(self.returned) or len(self.mailbox) > self.cancelled) and \
            len(self.in_flight) < self.window

    def live(self, item: Item) -> bool:
        return item.sender is not None or self.presence.get(item.subject) is item

    def take(self) -> Delivery:
        """Hand out the oldest item: it is in flight until settled."""
        if self.returned:
            n, item = self.returned.popleft()
        else:
            while True:
                item = self.mailbox.popleft()
                if item.sender is not None:
                    break
                if self.presence.get(item.subject) is item:
                    del self.presence[item.subject]
                    break
                self.cancelled -= 1
            n = self.next_n
            self.next_n += 1
        self.in_flight.append((n, item))
        return Delivery(item, n)

    def compact(self) -> None:
        if self.cancelled > _COMPACT_AFTER and self.cancelled * 2 > len(self.mailbox):
            self.mailbox = deque(item for item in self.mailbox if self.live(item))
            self.cancelled = 0

    def items(self):
        """Every item held for this member."""
        yield from (item for item in self.mailbox if self.live(item))
        yield from (item for _, item in self.in_flight)
        yield from (item for _, item in self.returned)


@implementer(IChannel)
class MemoryChannel:
    """
    All state in this process's memory.

    A member either has a parked wait, or a liveness timer running: a peer
    whose wait has not been re-issued within ``peer_timeout`` seconds is
    dropped exactly as if it had signed out.
    """

    problem = None  # nothing outside this process can fail it

    def __init__(
        self,
        clock: IReactorTime,
        limits: Optional[Limits] = None,
        new_id: Optional[Callable[[], int]] = None,
        metrics=None,
    ):
        self._clock = clock
        self.limits = limits or Limits()
        self._new_id = new_id or random_ids()
        self._members: dict[int, _Member] = {}  # insertion order = sign-in order
        self.metrics = metrics
        self.waiting_count = 0
        self.queued_count = 0
        self.queued_bytes = 0  # message bodies; notifications are shared and small
        self._closed = False

    @property
    def peer_count(self) -> int:
        return len(self._members)

    # -- IChannel ---------------------------------------------------------------

    def sign_in(self, raw_name: bytes) -> Deferred:
        if self._closed:
            return fail(ShuttingDown())
        if len(self._members) >= self.limits.max_peers:
            return fail(ServerFull(self.limits.max_peers))
        peer_id = self._allocate_id()
        member = _Member(peer_id, protocol.clean_name(raw_name, peer_id), secrets.token_urlsafe(18))
        body = b"".join([member.entry] + [m.entry for m in self._members.values()])
        dropped = self._notify_all(notification(member.name, peer_id, True))
        self._members[peer_id] = member
        self._arm_timeout(member)
        self._drop_slow(dropped)
        log.info("sign-in {name!r} as {peer_id} ({count} peers)",
                      name=logs.clip(member.name), peer_id=peer_id, count=len(self._members))
        if self.metrics:
            self.metrics.sign_ins.inc()
        return succeed(SignedIn(peer_id, body, member.token))

    def sign_out(self, peer_id: int) -> Deferred:
        member = self._members.get(peer_id)
        if member is None:
            return fail(UnknownPeer(peer_id))
        self._remove(member, "sign-out")
        if self.metrics:
            self.metrics.sign_outs.inc()
        return succeed(None)

    def check(self, peer_id: int) -> Deferred:
        if peer_id in self._members:
            return succeed(None)
        return fail(UnknownPeer(peer_id))

    def check_token(self, peer_id: int, token: str) -> Deferred:
        member = self._members.get(peer_id)
        if member is None or not hmac.compare_digest(member.token, token):
            return fail(UnknownPeer(peer_id))
        return succeed(None)

    def post(self, from_id: int, to_id: int, content_type: Optional[bytes], body: bytes) -> Deferred:
        if self._closed:
            return fail(ShuttingDown())
        target = self._members.get(to_id)
        if from_id not in self._members or target is None:
            return fail(UnknownPeer(to_id))
        limits = self.limits
        if self.queued_bytes + len(body) > limits.max_queued_bytes:
            return fail(ServerBusy(limits.max_queued_bytes))
        if target.held() >= limits.max_queue:
            return fail(MailboxFull(to_id, limits.max_queue))
        target.mailbox.append(Item(from_id, body, content_type))
        self.queued_count += 1
        self.queued_bytes += len(body)
        self._hand_out(target)
        if logs.debug:
            log.debug("message {from_id} -> {to_id}: {size} bytes",
                           from_id=from_id, to_id=to_id, size=len(body))
        if self.metrics:
            self.metrics.messages.inc()
            self.metrics.message_bytes.inc(len(body))
        return succeed(None)

    def wait(self, peer_id: int, window: int = 1) -> Deferred:
        if self._closed:
            return fail(ShuttingDown())
        member = self._members.get(peer_id)
        if member is None:
            return fail(UnknownPeer(peer_id))
        if member.waiter is not None:
            self._unpark(member).errback(WaitReplaced())
        member.window = window
        if member.ready():
            self._arm_timeout(member)  # answered now; it has peer_timeout to come back
            return succeed(member.take())
        if member.timeout is not None:
            member.timeout.cancel()
            member.timeout = None

        def cancel(d):
            # The client went away before an item arrived: nothing consumed.
            if member.waiter is d:
                self._unpark(member)
                self._arm_timeout(member)

        d = Deferred(cancel)
        member.waiter = d
        self.waiting_count += 1
        return d

    def ack(self, peer_id: int, n: int) -> Deferred:
        member = self._members.get(peer_id)
        if member is not None:
            for queue in (member.in_flight, member.returned):
                while queue and queue[0][0] <= n:
                    self._forget(queue.popleft()[1])
            self._hand_out(member)
        return succeed(None)

    def requeue(self, peer_id: int) -> Deferred:
        member = self._members.get(peer_id)
        if member is not None and member.in_flight:
            if self.metrics:
                self.metrics.requeued.inc(len(member.in_flight))
            member.returned.extendleft(reversed(member.in_flight))
            member.in_flight.clear()
            self._hand_out(member)
        return succeed(None)

    # -- state across a restart (--state-file) ------------------------------------

    def snapshot(self) -> dict:
        """
        Everything needed to carry on after a restart, as a JSON-able dict:
        members in sign-in order with their names, tokens and items (in
        flight and requeued ones first, with their numbers: not known to be
        read, so they will be handed out again), and the id allocator's
        position.  Parked waits and timers are not kept.
        """
        members = []
        for m in self._members.values():
            handed = [_item_state(item, n) for n, item in (*m.in_flight, *m.returned)]
            untold = [_item_state(item) for item in m.mailbox if m.live(item)]
            members.append({"id": m.peer_id, "name": m.name, "token": m.token,
                            "next_n": m.next_n, "items": handed + untold})
        return {"members": members, "next_id": getattr(self._new_id, "next_id", None)}

    def restore(self, snapshot: dict) -> None:
        """
        Take the members and items of a ``snapshot()`` into this (empty)
        channel.  Each restored member has ``peer_timeout`` to come back
        with a /wait, or leaves as usual.  Raises ValueError (or KeyError,
        TypeError) on a malformed snapshot, having changed nothing.
        """
        if self._members:
            raise ValueError("restore into a channel that has members")
        shared: dict = {}  # one Item per notification, as when it was made
        restored = []
        for state in snapshot["members"]:
            peer_id, name, token = int(state["id"]), state["name"], state["token"]
            if not (0 < peer_id <= protocol.MAX_PEER_ID and isinstance(name, str)
                    and isinstance(token, str) and token):
                raise ValueError("bad member %r" % (peer_id,))
            if any(m.peer_id == peer_id for m in restored):
                raise ValueError("member %d twice" % (peer_id,))
            member = _Member(peer_id, name, token)
            member.next_n = int(state["next_n"])
            for item_state in state["items"]:
                n, item = _item_from_state(item_state, shared)
                if n is not None:
                    member.returned.append((n, item))
                else:
                    member.mailbox.append(item)
                    if item.sender is None:
                        member.presence[item.subject] = item
            restored.append(member)
        next_id = snapshot.get("next_id")
        if next_id is not None and hasattr(self._new_id, "next_id"):
            self._new_id.next_id = max(self._new_id.next_id, int(next_id))
        for member in restored:
            self._members[member.peer_id] = member
            for item in member.items():
                self.queued_count += 1
                if item.sender is not None:
                    self.queued_bytes += len(item.body)
            self._arm_timeout(member)

    def close(self) -> Deferred:
        self._closed = True
        for member in list(self._members.values()):
            if member.timeout is not None:
                member.timeout.cancel()
                member.timeout = None
            if member.waiter is not None:
                self._unpark(member).errback(ShuttingDown())
        return succeed(None)

    # -- internals --------------------------------------------------------------

    def _allocate_id(self) -> int:
        while True:
            peer_id = self._new_id()
            if peer_id not in self._members:
                return peer_id

    def _unpark(self, member: _Member) -> Deferred:
        d, member.waiter = member.waiter, None
        self.waiting_count -= 1
        return d

    def _hand_out(self, member: _Member) -> None:
        """Give the parked wait an item, if one can be handed out."""
        if member.waiter is not None and member.ready():
            d = self._unpark(member)
            d.callback(member.take())
            # A transport that re-parks at once (WebSocket) never needs the timer.
            if member.waiter is None and self._members.get(member.peer_id) is member:
                self._arm_timeout(member)

    def _forget(self, item: Item) -> None:
        self.queued_count -= 1
        if item.sender is not None:
            self.queued_bytes -= len(item.body)

    def _notify_all(self, item: Item) -> list[_Member]:
        """Queue a notification for every member; return those that were full."""
        full = []
        subject = item.subject
        for member in self._members.values():
            untold = member.presence.pop(subject, None)
            if untold is not None:
                # This change replaces the untold one; joined and left before
                # the member was told is nothing at all.
                member.cancelled += 1
                self.queued_count -= 1
                member.compact()
                if untold.joined and not item.joined:
                    continue
            if member.held() >= self.limits.max_queue:
                full.append(member)
                continue
            member.mailbox.append(item)  # one Item for all: memory is O(1) per event
            member.presence[subject] = item
            self.queued_count += 1
            self._hand_out(member)
        return full

    def _drop_slow(self, members: list[_Member]) -> None:
        # Never lose a notification silently: a peer whose mailbox is full is
        # not keeping up, so it is dropped (its next /wait says so).
        for member in members:
            self._remove(member, "dropped (mailbox full)")

    def _arm_timeout(self, member: _Member) -> None:
        timeout = self.limits.peer_timeout
        if member.timeout is None or not member.timeout.active():
            member.timeout = self._clock.callLater(timeout, self._expire, member)
        else:
            member.timeout.reset(timeout)

    def _expire(self, member: _Member) -> None:
        member.timeout = None
        if self._members.get(member.peer_id) is member:
            if self.metrics:
                self.metrics.timeouts.inc()
            self._remove(member, "timed out after %gs without /wait" % (self.limits.peer_timeout,))

    def _remove(self, member: _Member, why: str) -> None:
        # Iterative, because notifying others may drop further slow peers.
        pending = [(member, why)]
        while pending:
            member, why = pending.pop()
            if self._members.get(member.peer_id) is not member:
                continue
            del self._members[member.peer_id]
            if self.metrics and why.startswith("dropped"):
                self.metrics.slow_peers_dropped.inc()
            if member.timeout is not None:
                if member.timeout.active():
                    member.timeout.cancel()
                member.timeout = None
            if member.waiter is not None:
                self._unpark(member).errback(UnknownPeer(member.peer_id))
            for item in member.items():
                self._forget(item)
            member.mailbox.clear()
            member.in_flight.clear()
            member.returned.clear()
            member.presence.clear()
            log.info("{why}: {name!r} ({peer_id}), {count} peers left",
                          why=why, name=logs.clip(member.name), peer_id=member.peer_id,
                          count=len(self._members))
            for slow in self._notify_all(notification(member.name, member.peer_id, False)):
                pending.append((slow, "dropped (mailbox full)"))


def _item_state(item: Item, n: Optional[int] = None) -> dict:
    state = {"sender": item.sender, "body": base64.b64encode(item.body).decode("ascii")}
    if item.content_type is not None:
        state["type"] = item.content_type.decode("latin-1")
    if item.subject is not None:
        state["subject"] = item.subject
    if n is not None:
        state["n"] = n
    return state


def _item_from_state(state: dict, shared: dict) -> tuple[Optional[int], Item]:
    sender, subject, n = state["sender"], state.get("subject"), state.get("n")
    content_type = state.get("type")
    item = Item(
        None if sender is None else int(sender),
        base64.b64decode(state["body"], validate=True),
        None if content_type is None else content_type.encode("latin-1"),
        None if subject is None else int(subject),
    )
    if item.sender is None:
        if item.subject is None:
            raise ValueError("a notification about nobody")
        item = shared.setdefault((item.body, item.subject), item)
    return (None if n is None else int(n)), item
