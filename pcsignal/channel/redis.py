"""
RedisChannel: the signaling channel with its state in Redis, shared by any
number of pcsignal processes on any number of hosts.

Every operation that changes state is one Lua script (``lua/*.lua``, each
prefixed with ``lua/common.lua``), run with EVALSHA: one Redis round trip,
atomic, however many members a sign-in notifies.  Under the prefix
(``--redis-prefix``):

==================  ========================================================
``order``           sorted set: member ids by sign-in sequence
``p:ID``            hash: name, token, n (last item number handed out), void
                    (cancelled notifications still in ``q:``; the items held
                    are ``q:`` less these, plus ``f:``), wait (the
                    registration, ``SESSION|SERIAL|WINDOW|GEN``: where the
                    peer's items go), live (``SESSION|SERIAL`` while that
                    instance has said a wait is parked), holder (the session
                    its in-flight items were handed to)
``q:ID``            list: the mailbox, not yet handed out; requeued items
                    come back at its head with their numbers (``N#...``)
``f:ID``            list: in flight, ``N#ITEM``
``u:ID``            hash: untold notifications by subject (coalescing)
``deadlines``       sorted set: peers registered nowhere, by deadline
``sessions``        sorted set: live instance sessions, by deadline
``parked:SESSION``  set: peers registered with a session
``held:SESSION``    set: peers whose items in flight went to a session
``items, bytes``    counters for every mailbox together (the limits)
``ids, seq``        counters: sequential ids, sign-in order and item serials
==================  ========================================================

Items are ``m<from> <body bytes> <type bytes> <type><body>`` (``-`` for no
type) and ``p<subject> <serial> <entry>``.

*Registrations are sticky.*  A peer's first ``/wait`` on an instance
registers it there (a script); from then on every item the peer may have
(within its window) is handed to that instance as soon as it exists, and the
peer's next waits on the same instance park locally, without a round trip.
The instance keeps the peer's liveness timer while no wait is parked, and
holds messages that arrive between two waits for the next one.  A
notification goes out only to a parked wait (``live``: until then it can
still be coalesced); the instance says so with its next script, or at once
when a script nudges it.  A wait on another instance moves the registration
(the old one hears that and gives back what it holds); a balancer that
keeps a client on one instance (``etc/haproxy/haproxy.cfg``) makes moves
rare.

*Acks ride along.*  ``ack`` records the number here and answers once a
script carrying it has run: every script carries every ack (and parked-wait
mark) this instance holds, applied first, and a short timer (``ack_delay``)
sends them alone if no script goes sooner; a script that finds a peer's next
item held up by an unacked one, or a notification by a wait Redis does not
know is parked, nudges the instance that can tell.  A relayed message
thus costs one script: the POST's, which also carries the sender's ack of the
message it answers.  Acks held when the link drops are applied when it comes
back, before anything is put back; an instance that dies loses the acks it
held, and those items, already read, are delivered again.

An instance subscribes to one channel of its own, ``i:UID`` (not one per
peer, so subscriptions grow with instances): a script publishes there the
events (delivery, registration moved, peer removed, nudge) for that
instance's sessions, in the same round trip, and returns those for its
caller in its reply.  A *session* is one unbroken stay of an
instance on Redis: it ends when a link drops or the instance dies, and
whatever was handed to it and not acked is put back for the next wait, by
the instance itself when it returns or by whichever instance notices first
(a publish nobody receives, or a session past its deadline).  Parked waits
survive an outage of Redis: they are registered again in the new session.

Time (liveness timers, deadlines, the reaper's timer) comes from the
injected clock; the link's back-off, command deadlines and the ack delay
(which only batches I/O) run on the reactor.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
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
    StoreUnavailable,
    UnknownPeer,
    WaitReplaced,
    random_ids,
)
from pcsignal.channel.redis_link import RedisAddress, RedisLink

_LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")
SCRIPTS = ("sign_in", "sign_out", "post", "wait", "ack", "requeue", "expire", "tick",
           "resume", "retire")


def load_scripts() -> dict[str, tuple[str, bytes]]:
    """Each script with the common prologue: name -> (sha1, source)."""
    with open(os.path.join(_LUA, "common.lua"), encoding="utf-8") as f:
        common = f.read()
    scripts = {}
    for name in SCRIPTS:
        with open(os.path.join(_LUA, name + ".lua"), encoding="utf-8") as f:
            source = (common + "\n" + f.read()).encode("utf-8")
        scripts[name] = (hashlib.sha1(source).hexdigest(), source)
    return scripts


def parse_item(raw: bytes) -> Delivery:
    """A handed-out item, ``N#ITEM``, as a Delivery."""
    n, _, raw = raw.partition(b"#")
    if raw[:1] == b"p":
        subject, _, rest = raw[1:].partition(b" ")
        entry = rest.partition(b" ")[2]
        return Delivery(Item(None, entry, b"text/plain", int(subject)), int(n))
    sender, _, type_bytes, rest = raw[1:].split(b" ", 3)
    if type_bytes == b"-":
        return Delivery(Item(int(sender), rest, None), int(n))
    k = int(type_bytes)
    return Delivery(Item(int(sender), rest[k:], rest[:k]), int(n))


# Kinds of event (lua/common.lua has the same numbers); a sync is ours alone.
_SYNC, _DELIVERY, _MOVED, _REMOVED, _NUDGE = 0, 1, 2, 3, 4


class _Registration:
    """A peer whose waits come to this instance (this session)."""

    __slots__ = ("serial", "window", "gen", "waiter", "held", "timer", "live", "asked",
                 "notified")

    def __init__(self, serial: int, window: int, gen: int):
        self.serial = serial
        self.window = window
        self.gen = gen  # deliveries from before the last requeue carry an older one
        self.waiter: Optional[Deferred] = None  # the parked wait
        self.held: deque[Delivery] = deque()  # handed to us between two waits
        self.timer = None  # liveness, while no wait is parked
        self.live = False  # Redis was told a wait is parked (notifications may come)
        self.asked = False  # a notification waits for word of a parked wait
        self.notified = False  # the last item was a notification: more may follow


@implementer(IChannel)
class RedisChannel:
    """
    Members, mailboxes and liveness in Redis; registrations (parked waits,
    items between two waits, liveness timers) in this process.

    ``ready`` is False while Redis cannot be used (requests get
    StoreUnavailable); ``problem`` then says why, for /healthz.
    """

    log = logs.logger("pcsignal.channel")
    session_ttl = 10.0  # an instance silent this long is taken for dead
    tick_interval = 1.0  # the reaper runs at least this often
    reap_batch = 500
    ack_delay = 0.005  # an ack waits this long for a script to ride with

    def __init__(
        self,
        clock: IReactorTime,
        address: RedisAddress,
        limits: Optional[Limits] = None,
        new_id: Optional[Callable[[], int]] = None,
        sequential: bool = False,
        prefix: str = "pcsignal:",
        metrics=None,
        reactor=None,
        command_timeout: float = 2.0,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self._clock = clock
        self.limits = limits or Limits()
        self._new_id = None if sequential else (new_id or random_ids())
        self.prefix = prefix
        self.metrics = metrics
        self.uid = secrets.token_hex(6)
        self._channel = (prefix + "i:" + self.uid).encode()
        self._epoch = itertools.count(1)
        self._session = ""
        self._session_bytes = b""
        self._old_sessions: list[str] = []
        self._serials = itertools.count(1)
        self._regs: dict[int, _Registration] = {}
        self._acks: dict[int, int] = {}  # peer -> highest number read, not yet sent
        self._marks: dict[int, tuple[int, int]] = {}  # peer -> (serial, wait parked 1|0)
        self._ack_waiters: list[Deferred] = []
        self._flush_call = None
        self._flush_at = None  # when the acks and marks held must go at the latest
        self._script_counters = {}  # script name -> its pcsignal_redis_scripts_total
        self._limits_args = (None, [])  # Limits, and their script arguments
        self._syncs: dict[str, Deferred] = {}
        self._starting: list[Deferred] = []
        self._started = False
        self._tick_call = None
        self._closed = False
        self.ready = False
        self.peer_count = 0
        self.waiting_count = 0
        self.queued_count = 0
        self.queued_bytes = 0
        self.link = RedisLink(address, [self._channel], reactor, self._on_message,
                              self._on_link, command_timeout)
        self.link.scripts.update(load_scripts())
        self._give_up_starting = None
        # Not before the reactor runs: twistd may still fork to daemonize.
        reactor.callWhenRunning(self._start)

    def _start(self):
        if self._closed:
            return
        self.link.start()
        self._give_up_starting = self.link.reactor.callLater(
            self.link.command_timeout, self._not_started)

    def _stop_starting(self):
        if self._give_up_starting is not None and self._give_up_starting.active():
            self._give_up_starting.cancel()

    @property
    def problem(self) -> Optional[str]:
        """Why the channel cannot serve now; None when it can."""
        if self.ready or not self._started:
            return None  # starting: requests are held for a moment, not refused
        return "Redis unavailable (%s)" % (self.link.reason or "starting",)

    # -- IChannel ---------------------------------------------------------------

    def sign_in(self, raw_name: bytes) -> Deferred:
        if self._closed:
            return fail(ShuttingDown())
        name = protocol.clean_name(raw_name, 0)
        if protocol.clean_name(raw_name, 1) != name:
            name = ""  # the default, peer_<id>, once the id is known
        return self._sign_in(name.encode("utf-8"), secrets.token_urlsafe(18))

    def _sign_in(self, name: bytes, token: str) -> Deferred:
        candidate = "" if self._new_id is None else str(self._new_id())

        def done(r):
            status = r[0]
            if status == b"taken":
                return self._sign_in(name, token)
            if status == b"full":
                raise ServerFull(self.limits.max_peers)
            peer_id, body = r[1], r[2]
            self.log.info("sign-in {name!r} as {peer_id} ({count} peers)",
                          name=logs.clip(body.partition(b"\n")[0].rsplit(b",", 2)[0]
                                         .decode("utf-8")),
                          peer_id=peer_id, count=self.peer_count)
            if self.metrics:
                self.metrics.sign_ins.inc()
            return SignedIn(peer_id, body, token)

        return self._run("sign_in", name, token, candidate).addCallback(done)

    def sign_out(self, peer_id: int) -> Deferred:
        def done(r):
            if r[0] == b"unknown":
                raise UnknownPeer(peer_id)
            if self.metrics:
                self.metrics.sign_outs.inc()

        return self._run("sign_out", peer_id).addCallback(done)

    def check(self, peer_id: int) -> Deferred:
        def done(exists):
            if not exists:
                raise UnknownPeer(peer_id)

        return self._command("EXISTS", self._key("p:", peer_id)).addCallback(done)

    def check_token(self, peer_id: int, token: str) -> Deferred:
        def done(stored):
            if stored is None or not hmac.compare_digest(stored, token.encode("utf-8")):
                raise UnknownPeer(peer_id)

        return self._command("HGET", self._key("p:", peer_id), "token").addCallback(done)

    def post(self, from_id: int, to_id: int, content_type: Optional[bytes], body: bytes) -> Deferred:
        if self._closed:
            return fail(ShuttingDown())

        def done(r):
            status = r[0]
            if status == b"ok":
                if logs.debug:
                    self.log.debug("message {from_id} -> {to_id}: {size} bytes",
                                   from_id=from_id, to_id=to_id, size=len(body))
                if self.metrics:
                    self.metrics.messages.inc()
                    self.metrics.message_bytes.inc(len(body))
                return None
            if status == b"unknown":
                raise UnknownPeer(to_id)
            if status == b"busy":
                raise ServerBusy(self.limits.max_queued_bytes)
            raise MailboxFull(to_id, self.limits.max_queue)

        has_type = content_type is not None
        return self._run("post", from_id, to_id, "1" if has_type else "0",
                         content_type if has_type else b"", body).addCallback(done)

    def wait(self, peer_id: int, window: int = 1) -> Deferred:
        if self._closed:
            return fail(ShuttingDown())
        if not self.ready:
            if not self._started:
                return self._when_started(self.wait, (peer_id, window))
            return fail(StoreUnavailable())
        reg = self._regs.get(peer_id)
        if reg is None:
            reg = self._regs[peer_id] = _Registration(next(self._serials), window,
                                                      next(self._serials))
            d = self._park(peer_id, reg)
            self._register(peer_id, reg, fresh=True)
            return d
        if reg.waiter is not None:
            self._unpark(reg).errback(WaitReplaced())
        if reg.held:
            delivery = reg.held.popleft()
            d = succeed(delivery)
            self._not_parked(peer_id, reg)
            self._arm(peer_id, reg)  # answered now; it has peer_timeout to come back
        else:
            # Registered here already: its messages come here as they exist,
            # its notifications once Redis hears that a wait is parked.
            d = self._park(peer_id, reg)
            if reg.asked or reg.notified:
                # A notification waits, or may soon (sign-ins come in
                # bursts): say a wait is parked, with the acks held.
                self._tell_parked(peer_id, reg)
                self._flush_soon(self.ack_delay)
        if reg.window != window:
            reg.window = window
            self._register(peer_id, reg, fresh=False)
        return d

    def ack(self, peer_id: int, n: int) -> Deferred:
        if self._closed:
            return fail(ShuttingDown())
        if n > self._acks.get(peer_id, 0):
            self._acks[peer_id] = n
        reg = self._regs.get(peer_id)
        if reg is not None:
            while reg.held and reg.held[0].n <= n:
                reg.held.popleft()  # read already (a client resuming says so)
        d = Deferred()
        self._ack_waiters.append(d)
        self._flush_soon(self.ack_delay)
        return d

    def requeue(self, peer_id: int) -> Deferred:
        reg = self._regs.get(peer_id)
        serial = ""
        if reg is not None:
            # What arrived for the next wait goes back too; what is still on
            # its way will carry the old gen and be ignored.
            reg.held.clear()
            reg.gen = next(self._serials)
            serial = reg.serial

        def done(r):
            if r[0] and self.metrics:
                self.metrics.requeued.inc(r[0])
            if (not r[1] and reg is not None and self._regs.get(peer_id) is reg
                    and reg.serial == serial and reg.waiter is None):
                # Its waits go to another instance since (a resume there,
                # say, whose news is still on its way): the next wait here
                # registers afresh instead of parking on what is stale, and
                # that news, when it comes, finds nothing of it.
                self._drop(peer_id, reg)

        return self._run("requeue", peer_id, serial,
                         reg.gen if reg is not None else 0).addCallback(done)

    def close(self) -> Deferred:
        self._closed = True
        self._stop_ticking()
        self._stop_starting()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        if not self._started:
            self._not_started()  # requests held for the first connection: refused now
        for reg in list(self._regs.values()):
            self._disarm(reg)
            if reg.waiter is not None:
                self._unpark(reg).errback(ShuttingDown())
        self._regs.clear()
        # The acks held go with the retirement; best effort: if Redis is
        # away, the session expires on its own.
        d = self._script("retire") if self.ready else succeed(None)
        d.addErrback(lambda f: None)
        d.addCallback(lambda _: self.link.stop())
        return d

    def flush(self) -> Deferred:
        """Send the acks and marks held now; fires once they are applied (tests settle on it)."""
        if not (self._acks or self._marks):
            return succeed(None)
        d = Deferred()
        self._ack_waiters.append(d)
        if self.ready and not self._closed:
            self._forget("ack")
        return d

    def sync(self) -> Deferred:
        """
        Fire once every event published to this instance before the call
        has been handled (a round trip through Redis and back; tests settle on it).
        """
        token = secrets.token_hex(8)
        d = self._syncs[token] = Deferred()
        published = self._command("PUBLISH", self._channel, json.dumps([[_SYNC, token]]))
        published.addErrback(lambda f: (self._syncs.pop(token, None), f)[1])
        return published.addCallback(lambda _: d)

    # -- internals: calls -------------------------------------------------------------

    def _key(self, kind: str, peer_id: int) -> str:
        return "%s%s%d" % (self.prefix, kind, peer_id)

    def _command(self, *args) -> Deferred:
        if not self._started:
            return self._when_started(self._command, args)
        return self.link.command(*args)

    def _run(self, script: str, *args) -> Deferred:
        """One script for a request; fires with its own results."""
        if not self._started:
            return self._when_started(self._run, (script,) + args)
        if self._closed:
            return fail(ShuttingDown())
        if not self.ready:
            return fail(StoreUnavailable())
        return self._script(script, *args)

    def _script(self, script: str, *args) -> Deferred:
        """One script in this session, ready or still resuming, carrying the acks and marks held."""
        acks, marks, waiters = self._acks, self._marks, self._ack_waiters
        carried = bool(acks or marks or waiters)
        if carried:
            self._acks, self._marks, self._ack_waiters = {}, {}, []
            self._flush_at = None  # its timer, if any, finds nothing to do
        if self.metrics is not None:
            counter = self._script_counters.get(script)
            if counter is None:
                counter = self._script_counters[script] = self.metrics.redis_scripts.labels(script)
            counter.inc()
        limits = self.limits
        if limits is not self._limits_args[0]:
            self._limits_args = (limits, [
                repr(float(limits.peer_timeout)), limits.max_queue, limits.max_queued_bytes,
                limits.max_peers])
        d = self.link.script(script, [
            self.prefix, repr(self._clock.seconds()), self._session, *self._limits_args[1],
            " ".join(["%d %d" % a for a in acks.items()]) if acks else b"",
            " ".join(["%d %d %d" % (peer_id, serial, on)
                      for peer_id, (serial, on) in marks.items()]) if marks else b"", *args])
        d.addCallbacks(self._counted, self._not_carried, (waiters if carried else None,), None,
                       (acks, marks, waiters if carried else None))
        return d

    def _counted(self, r, ack_waiters):
        self.peer_count, self.queued_count, self.queued_bytes = r[0], r[1], r[2]
        removed = r[3]
        for i in range(0, len(removed), 3):
            self._log_removal(int(removed[i]), removed[i + 1].decode("utf-8"),
                              removed[i + 2].decode("ascii"))
        if r[4]:
            self._handle(r[4], self._session_bytes, bytes)
        if ack_waiters:
            for d in ack_waiters:
                d.callback(None)
        return r[5:]

    def _not_carried(self, failure, acks, marks, waiters):
        """A script failed: the acks it carried are held again (applied twice is harmless)."""
        if waiters is not None:
            if failure.check(StoreUnavailable):
                for peer_id, n in acks.items():
                    if n > self._acks.get(peer_id, 0):
                        self._acks[peer_id] = n
                for peer_id, mark in marks.items():
                    self._marks.setdefault(peer_id, mark)  # unless a newer one is held
                if self.ready:
                    self._flush_soon(self.ack_delay)
            for d in waiters:
                d.errback(failure)
        return failure

    def _flush_soon(self, delay: float) -> None:
        """Send the acks and marks held within delay, with a script or alone."""
        reactor = self.link.reactor
        at = reactor.seconds() + delay
        if self._flush_at is None or at < self._flush_at:
            self._flush_at = at
        # One timer, moved only to fire earlier: no cancel and re-arm per ack.
        call = self._flush_call
        if call is None or not call.active():
            self._flush_call = reactor.callLater(delay, self._flush)
        elif call.getTime() > at:
            call.reset(delay)

    def _flush(self) -> None:
        """Send the acks and marks held, alone: no other script went in time."""
        self._flush_call = None
        if self._flush_at is None or not (self._acks or self._marks or self._ack_waiters):
            return
        wait = self._flush_at - self.link.reactor.seconds()
        if wait > 0:
            self._flush_call = self.link.reactor.callLater(wait, self._flush)
        elif self.ready and not self._closed:
            self._forget("ack")

    def _when_started(self, method, args) -> Deferred:
        """Before the first connection: hold requests for a moment, not refuse them."""
        d = Deferred()
        self._starting.append(d)
        return d.addCallback(lambda _: method(*args))

    def _not_started(self):
        self._started = True
        starting, self._starting = self._starting, []
        for d in starting:
            d.callback(None)

    def _forget(self, script: str, *args) -> None:
        """A call whose answer nobody waits for; a failure is logged."""
        self._script(script, *args).addErrback(self._log_failure, script)

    def _log_failure(self, failure, what):
        if failure.check(StoreUnavailable):
            return None  # the link's state change is logged already
        self.log.failure("Redis {what} failed", failure, what=what)

    def _log_removal(self, peer_id: int, name: str, why: str) -> None:
        if why == "timeout":
            why = "timed out after %gs without /wait" % (self.limits.peer_timeout,)
            if self.metrics:
                self.metrics.timeouts.inc()
        elif why.startswith("dropped") and self.metrics:
            self.metrics.slow_peers_dropped.inc()
        self.log.info("{why}: {name!r} ({peer_id}), {count} peers left",
                      why=why, name=logs.clip(name), peer_id=peer_id, count=self.peer_count)

    # -- internals: registrations -----------------------------------------------------

    def _park(self, peer_id: int, reg: _Registration) -> Deferred:
        def cancel(d):
            # The client went away: nothing consumed, its timer starts.
            if reg.waiter is d:
                self._unpark(reg)
                if self._regs.get(peer_id) is reg:
                    self._not_parked(peer_id, reg)
                    self._arm(peer_id, reg)

        self._disarm(reg)
        d = reg.waiter = Deferred(cancel)
        self.waiting_count += 1
        return d

    def _not_parked(self, peer_id: int, reg: _Registration) -> None:
        """No wait parked any more: if Redis was told there is one, say it is gone."""
        if reg.live:
            reg.live = False
            self._marks[peer_id] = (reg.serial, 0)
            self._flush_soon(self.ack_delay)

    def _unpark(self, reg: _Registration) -> Deferred:
        d, reg.waiter = reg.waiter, None
        self.waiting_count -= 1
        return d

    def _arm(self, peer_id: int, reg: _Registration) -> None:
        """No wait parked: the peer has peer_timeout to send the next."""
        if reg.timer is not None and reg.timer.active():
            reg.timer.reset(self.limits.peer_timeout)
        else:
            reg.timer = self._clock.callLater(self.limits.peer_timeout, self._expire,
                                              peer_id, reg)

    @staticmethod
    def _disarm(reg: _Registration) -> None:
        if reg.timer is not None:
            if reg.timer.active():
                reg.timer.cancel()
            reg.timer = None

    def _expire(self, peer_id: int, reg: _Registration) -> None:
        reg.timer = None
        if self._regs.get(peer_id) is reg:
            self._drop(peer_id, reg)
            if self.ready:
                self._forget("expire", peer_id, reg.serial)
            # Else the session's end gave the peer a deadline in Redis.

    def _drop(self, peer_id: int, reg: _Registration) -> None:
        del self._regs[peer_id]
        self._marks.pop(peer_id, None)
        self._disarm(reg)

    def _register(self, peer_id: int, reg: _Registration, fresh: bool,
                  contest: bool = False) -> None:
        self._marks.pop(peer_id, None)  # the registration says it
        reg.live = reg.waiter is not None
        d = self._script("wait", peer_id, reg.serial, reg.window, reg.gen,
                         1 if fresh else 0, 1 if contest else 0, 1 if reg.live else 0)
        d.addCallbacks(self._registered, self._not_registered, (peer_id, reg), None,
                       (peer_id, reg))

    def _registered(self, r, peer_id: int, reg: _Registration) -> None:
        # Its items, if any, came with the reply as events.
        if r[0] == b"unknown" and self._regs.get(peer_id) is reg:
            self._drop(peer_id, reg)
            if reg.waiter is not None:
                self._unpark(reg).errback(UnknownPeer(peer_id))

    def _not_registered(self, failure, peer_id: int, reg: _Registration) -> None:
        if self._regs.get(peer_id) is reg:
            self._drop(peer_id, reg)
            if reg.waiter is not None:
                self._unpark(reg).errback(failure)
                return
        self._log_failure(failure, "wait")

    # -- internals: events ------------------------------------------------------------

    def _on_message(self, message: bytes) -> None:
        """Events published to this instance (JSON; binary bodies as latin-1)."""
        self._handle(json.loads(message.decode("latin-1")), self._session,
                     lambda text: text.encode("latin-1"))

    def _handle(self, events: list, session, as_bytes) -> None:
        """Events for this session (those of a session that ended were settled when it was retired)."""
        flush = False
        for event in events:
            kind = event[0]
            if kind == _SYNC:
                d = self._syncs.pop(event[1], None)
                if d is not None:
                    d.callback(None)
            elif event[1] != session:
                continue
            elif kind == _DELIVERY:
                self._delivered(event[2], event[3], event[4], as_bytes(event[5]))
            elif kind == _NUDGE:
                flush = self._nudged(event[2]) or flush
            elif kind == _MOVED:
                self._replaced(event[2], event[3], event[4], event[5])
            elif kind == _REMOVED:
                self._removed(event[2], event[3])
        if flush:
            self._flush_soon(0)

    def _delivered(self, peer_id: int, serial: int, gen: int, raw: bytes) -> None:
        reg = self._regs.get(peer_id)
        if reg is None or reg.serial != serial or reg.gen != gen:
            # Registered elsewhere, or requeued, since: a script that came
            # after this delivery has put its item back.
            return
        delivery = parse_item(raw)
        reg.notified = delivery.item.sender is None
        if reg.waiter is not None:
            d = self._unpark(reg)
            reg.live = False  # Redis knows it is answered
            self._marks.pop(peer_id, None)
            # Timer first: the callback may park the next wait at once.
            self._arm(peer_id, reg)
            d.callback(delivery)
        else:
            reg.held.append(delivery)

    def _nudged(self, peer_id: int) -> bool:
        """
        An item for the peer waits on us: on an ack we hold, or (a
        notification) on word that a wait is parked here.  True: flush now.
        """
        reg = self._regs.get(peer_id)
        if reg is not None:
            # Redis does not see a parked wait (whatever we told it before).
            if reg.waiter is not None:
                self._tell_parked(peer_id, reg)
            else:
                reg.asked = True  # the next wait parked here says so at once
        return peer_id in self._acks or peer_id in self._marks

    def _tell_parked(self, peer_id: int, reg: _Registration) -> None:
        reg.live, reg.asked = True, False
        self._marks[peer_id] = (reg.serial, 1)

    def _replaced(self, peer_id: int, serial: int, held: int, contest: int) -> None:
        """The peer's waits go to another instance now."""
        reg = self._regs.get(peer_id)
        if reg is None or reg.serial != serial:
            return
        if reg.waiter is not None and not contest and reg.window == 1:
            # The wait parked here may be the newer one (the other's news
            # came late; an HTTP client has one /wait at a time): claim the
            # peer back, once; the other gives in.  A wait of a larger window
            # stands (a WebSocket re-parks it after each delivery), so it
            # says nothing about which is newer: it gives in to the
            # newcomer (a resume, an HTTP /wait), as in one process.
            reg.serial, reg.gen = next(self._serials), next(self._serials)
            reg.held.clear()
            self._register(peer_id, reg, fresh=True, contest=True)
            return
        self._drop(peer_id, reg)
        if reg.waiter is not None:
            self._unpark(reg).errback(WaitReplaced())
        if held:
            # Give back what this instance holds, so the other can hand it out.
            self._script("requeue", peer_id, "", 0).addErrback(self._log_failure, "requeue")

    def _removed(self, peer_id: int, serial: int) -> None:
        self._acks.pop(peer_id, None)
        reg = self._regs.get(peer_id)
        if reg is not None and reg.serial == serial:
            self._drop(peer_id, reg)
            if reg.waiter is not None:
                self._unpark(reg).errback(UnknownPeer(peer_id))

    # -- internals: sessions ----------------------------------------------------------

    def _on_link(self, up: bool, reason: str) -> None:
        if self._closed:
            return
        if not up:
            if self.ready:
                self.log.warn("Redis link down ({reason}): requests answer 503 until it "
                              "is back; reconnecting", reason=reason)
            elif not self._old_sessions and not self._session:
                self.log.warn("Redis at {address} not reachable ({reason}): requests "
                              "answer 503 until it is; connecting",
                              address=str(self.link.address), reason=reason)
                if not self._started:
                    self._stop_starting()
                    self._not_started()
            self._end_session()
            return
        self._begin_session()

    def _end_session(self):
        """
        Deliveries to this session are void (it is retired, its items put
        back); parked waits stay, to be registered again.
        """
        self.ready = False
        self._stop_ticking()
        if self._session:
            self._old_sessions.append(self._session)
            self._session, self._session_bytes = "", b""
        self._marks.clear()  # waits parked are registered afresh
        for peer_id, reg in list(self._regs.items()):
            reg.held.clear()
            if reg.waiter is None:
                self._drop(peer_id, reg)

    def _begin_session(self):
        """Links up: a new session; the old ones are retired and the waits registered again."""
        self._session = "%s.%d" % (self.uid, next(self._epoch))
        self._session_bytes = self._session.encode("ascii")
        old, regs = list(self._old_sessions), list(self._regs.items())
        args = [repr(self.session_ttl), len(old), *old]
        for peer_id, reg in regs:
            args += [peer_id, reg.serial, reg.window, reg.gen]
            reg.live = True  # each has a wait parked
        d = self._script("resume", *args)
        d.addCallbacks(self._resumed, self._resume_failed, (old, regs))

    def _resumed(self, r, old, regs):
        del self._old_sessions[:len(old)]
        self.ready = True
        self.log.info("Redis link up: {address}, prefix {prefix!r}, session {session}",
                      address=str(self.link.address), prefix=self.prefix,
                      session=self._session)
        for (peer_id, reg), answer in zip(regs, r[0]):
            if self._regs.get(peer_id) is not reg or answer == b"ok":
                continue
            self._drop(peer_id, reg)
            if reg.waiter is not None:
                self._unpark(reg).errback(
                    UnknownPeer(peer_id) if answer == b"unknown" else WaitReplaced())
        if not self._started:
            self._stop_starting()
            self._not_started()
        if self._acks:
            self._flush_soon(self.ack_delay)
        self._schedule_tick(0)

    def _resume_failed(self, failure):
        if not failure.check(StoreUnavailable):
            self.log.failure("Redis session could not start", failure)
        # The link drops or has dropped: the next one tries again.

    def _schedule_tick(self, delay: float) -> None:
        self._stop_ticking()
        if not self._closed:
            self._tick_call = self._clock.callLater(max(0.0, delay), self._tick)

    def _stop_ticking(self):
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None

    def _tick(self):
        self._tick_call = None
        session = self._session
        d = self._run("tick", repr(self.session_ttl), self.reap_batch)

        def done(r):
            if session != self._session or not self.ready:
                return
            registered, next_deadline = r[0], r[1]
            if not registered:
                # Taken for dead (a stall longer than session_ttl): start afresh.
                self.log.warn("Redis session {session} was retired by another "
                              "instance; starting a new one", session=session)
                self._end_session()
                self._begin_session()
                return
            delay = self.tick_interval
            if next_deadline:
                delay = min(delay, float(next_deadline) - self._clock.seconds())
            self._schedule_tick(delay)

        def failed(f):
            self._log_failure(f, "tick")
            if session == self._session and self.ready:
                self._schedule_tick(self.tick_interval)

        d.addCallbacks(done, failed)
