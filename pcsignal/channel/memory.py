"""
MemoryChannel: the signaling channel with all state in this process.

Every operation is O(1) in the number of peers, except the two that are
O(peers) by nature: the sign-in answer (it lists everyone) and the
sign-in/sign-out notifications (everyone gets one).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from pcsignal import logs, protocol
from pcsignal.channel import (
    IChannel,
    Item,
    MailboxFull,
    ServerBusy,
    ServerFull,
    ShuttingDown,
    UnknownPeer,
    WaitReplaced,
    random_ids,
)


class _Member:
    __slots__ = ("peer_id", "name", "entry", "mailbox", "waiter", "timeout")

    def __init__(self, peer_id: int, name: str):
        self.peer_id = peer_id
        self.name = name
        self.entry = protocol.format_entry(name, peer_id, True)
        self.mailbox: deque[Item] = deque()
        self.waiter: Optional[Deferred] = None
        self.timeout = None  # IDelayedCall while no wait is parked



@implementer(IChannel)
class MemoryChannel:
    """
    All state in this process's memory.

    A member either has a parked wait, or a liveness timer running: a peer
    whose wait has not been re-issued within ``peer_timeout`` seconds is
    dropped exactly as if it had signed out.
    """

    log = logs.logger('pcsignal.channel')

    def __init__(
        self,
        clock: IReactorTime,
        peer_timeout: float = 30.0,
        max_peers: int = 10000,
        max_queue: int = 1000,
        max_queued_bytes: int = 256 * 1024 * 1024,
        new_id: Optional[Callable[[], int]] = None,
        metrics=None,
    ):
        self._clock = clock
        self._peer_timeout = peer_timeout
        self._max_peers = max_peers
        self._max_queue = max_queue
        # Mailboxes hold at most max_queue items each, but bodies are what
        # weigh: this caps them all together, so memory is bounded for real.
        self._max_queued_bytes = max_queued_bytes
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
        if len(self._members) >= self._max_peers:
            return fail(ServerFull(self._max_peers))
        peer_id = self._allocate_id()
        member = _Member(peer_id, protocol.clean_name(raw_name, peer_id))
        body = b"".join([member.entry] + [m.entry for m in self._members.values()])
        dropped = self._notify_all(member.entry)
        self._members[peer_id] = member
        self._arm_timeout(member)
        self._drop_slow(dropped)
        self.log.info("sign-in {name!r} as {peer_id} ({count} peers)",
                      name=member.name, peer_id=peer_id, count=len(self._members))
        if self.metrics:
            self.metrics.sign_ins.inc()
        return succeed((peer_id, body))

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

    def post(self, from_id: int, to_id: int, content_type: Optional[bytes], body: bytes) -> Deferred:
        target = self._members.get(to_id)
        if from_id not in self._members or target is None:
            return fail(UnknownPeer(to_id))
        if target.waiter is None and self.queued_bytes + len(body) > self._max_queued_bytes:
            return fail(ServerBusy(self._max_queued_bytes))
        if not self._deliver(target, Item(from_id, body, content_type)):
            return fail(MailboxFull(to_id, self._max_queue))
        if logs.debug:
            self.log.debug("message {from_id} -> {to_id}: {size} bytes",
                           from_id=from_id, to_id=to_id, size=len(body))
        if self.metrics:
            self.metrics.messages.inc()
            self.metrics.message_bytes.inc(len(body))
        return succeed(None)

    def wait(self, peer_id: int) -> Deferred:
        member = self._members.get(peer_id)
        if member is None:
            return fail(UnknownPeer(peer_id))
        if member.mailbox:
            item = member.mailbox.popleft()
            self.queued_count -= 1
            if item.sender is not None:
                self.queued_bytes -= len(item.body)
            self._arm_timeout(member)  # answered now; it has peer_timeout to come back
            return succeed(item)
        if member.waiter is not None:
            self._unpark(member).errback(WaitReplaced())
        elif member.timeout is not None:
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

    def _deliver(self, member: _Member, item: Item) -> bool:
        """Hand the item to the parked wait, or queue it; False if full."""
        if member.waiter is not None:
            d = self._unpark(member)
            # Timer first: the callback may park the next wait at once.
            self._arm_timeout(member)
            d.callback(item)
            return True
        if len(member.mailbox) >= self._max_queue:
            return False
        member.mailbox.append(item)
        self.queued_count += 1
        if item.sender is not None:
            self.queued_bytes += len(item.body)
        return True

    def _notify_all(self, entry: bytes) -> list[_Member]:
        """Queue a notification for every member; return those that were full."""
        full = []
        item = Item(None, entry, b"text/plain")  # one for all: memory is O(1) per event
        for member in self._members.values():
            if not self._deliver(member, item):
                full.append(member)
        return full

    def _drop_slow(self, members: list[_Member]) -> None:
        # Never lose a notification silently: a peer whose mailbox is full is
        # not keeping up, so it is dropped (its next /wait says so).
        for member in members:
            self._remove(member, "dropped (mailbox full)")

    def _arm_timeout(self, member: _Member) -> None:
        if member.timeout is None or not member.timeout.active():
            member.timeout = self._clock.callLater(self._peer_timeout, self._expire, member)
        else:
            member.timeout.reset(self._peer_timeout)

    def _expire(self, member: _Member) -> None:
        member.timeout = None
        if self._members.get(member.peer_id) is member:
            if self.metrics:
                self.metrics.timeouts.inc()
            self._remove(member, "timed out after %gs without /wait" % (self._peer_timeout,))

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
            self.queued_count -= len(member.mailbox)
            self.queued_bytes -= sum(len(i.body) for i in member.mailbox if i.sender is not None)
            member.mailbox.clear()
            self.log.info("{why}: {name!r} ({peer_id}), {count} peers left",
                          why=why, name=member.name, peer_id=member.peer_id,
                          count=len(self._members))
            entry = protocol.format_entry(member.name, member.peer_id, False)
            for slow in self._notify_all(entry):
                pending.append((slow, "dropped (mailbox full)"))
