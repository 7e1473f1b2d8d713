"""
RedisChannel: the signaling channel with its state in Redis, shared by any
number of pcsignal processes on any number of hosts.

Every operation is one Lua script (``lua/*.lua``, each prefixed with
``lua/common.lua``), run with EVALSHA: one Redis round trip, atomic, however
many members a sign-in notifies.  Under the prefix (``--redis-prefix``):

==================  ========================================================
``order``           sorted set: member ids by sign-in sequence
``p:ID``            hash: name, token, n (last item number handed out),
                    count and bytes (items and message bytes held), void
                    (cancelled notifications still in ``q:``), wait
                    (``SESSION|SERIAL|WINDOW`` of its parked wait), holder
                    (the session its in-flight items were handed to)
``q:ID``            list: the mailbox, not yet handed out; requeued items
                    come back at its head with their numbers (``N#...``)
``f:ID``            list: in flight, ``N#ITEM``
``u:ID``            hash: untold notifications by subject (coalescing)
``deadlines``       sorted set: peers without a parked wait, by deadline
``sessions``        sorted set: live instance sessions, by deadline
``parked:SESSION``  set: peers with a wait parked on a session
``held:SESSION``    set: peers with items in flight handed to a session
``items, bytes``    counters for every mailbox together (the limits)
``ids, seq``        counters: sequential ids, sign-in order and item serials
==================  ========================================================

Items are ``m<from> <body bytes> <type bytes> <type><body>`` (``-`` for no
type) and ``p<subject> <serial> <entry>``.

An instance subscribes to one channel of its own, ``i:UID`` (not one per
peer, so subscriptions grow with instances): a script that hands an item to
a wait parked on another instance publishes it there in the same round
trip, and so do removals and replaced waits.  A *session* is one unbroken
stay of an instance on Redis: it ends when a link drops or the instance
dies, and whatever was handed to it and not acked is put back for the next
wait, by the instance itself when it returns or by whichever instance notices
first (a publish nobody receives, or a session past its deadline).  Parked
waits survive an outage of Redis: they are parked again in the new session.

Time (deadlines, the reaper's timer) comes from the injected clock; the
link's back-off and command deadlines run on the reactor.
"""

from __future__ import annotations

import hmac
import itertools
import json
import os
import secrets
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
SCRIPTS = ("sign_in", "sign_out", "post", "wait", "unpark", "ack", "requeue", "tick",
           "resume", "retire")


def load_scripts() -> dict[str, str]:
    with open(os.path.join(_LUA, "common.lua"), encoding="utf-8") as f:
        common = f.read()
    scripts = {}
    for name in SCRIPTS:
        with open(os.path.join(_LUA, name + ".lua"), encoding="utf-8") as f:
            scripts[name] = common + "\n" + f.read()
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


class _Waiter:
    __slots__ = ("d", "serial", "window")

    def __init__(self, serial: int, window: int):
        self.serial = serial
        self.window = window
        self.d: Optional[Deferred] = None


_REASONS = {
    "timeout": None,  # formatted with the timeout in force
    "sign-out": "sign-out",
    "dropped (mailbox full)": "dropped (mailbox full)",
}


@implementer(IChannel)
class RedisChannel:
    """
    Members, mailboxes and liveness in Redis; parked waits in this process.

    ``ready`` is False while Redis cannot be used (requests get
    StoreUnavailable); ``problem`` then says why, for /healthz.
    """

    log = logs.logger("pcsignal.channel")
    session_ttl = 10.0  # an instance silent this long is taken for dead
    tick_interval = 1.0  # the reaper runs at least this often
    reap_batch = 500

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
        self._old_sessions: list[str] = []
        self._serials = itertools.count(1)
        self._parked: dict[int, _Waiter] = {}
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
        self.link.scripts.update(_loaded(load_scripts()))
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
        if self.ready:
            return None
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
                          name=body.partition(b"\n")[0].rsplit(b",", 2)[0].decode("utf-8"),
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
        old = self._parked.pop(peer_id, None)
        if old is not None:
            self.waiting_count -= 1
            old.d.errback(WaitReplaced())
        waiter = _Waiter(next(self._serials), window)

        def cancel(d):
            # The client went away: nothing consumed, its timer starts.
            if self._parked.get(peer_id) is waiter:
                self._unpark(peer_id)
                self._forget("unpark", peer_id, waiter.serial)

        waiter.d = Deferred(cancel)
        self._parked[peer_id] = waiter
        self.waiting_count += 1
        d = waiter.d
        self._run("wait", peer_id, waiter.serial, window).addCallbacks(
            self._waited, self._wait_failed, (peer_id, waiter), None, (peer_id, waiter))
        return d

    def ack(self, peer_id: int, n: int) -> Deferred:
        return self._run("ack", peer_id, n).addCallback(lambda _: None)

    def requeue(self, peer_id: int) -> Deferred:
        return self._requeue(peer_id, 0)

    def close(self) -> Deferred:
        self._closed = True
        self._stop_ticking()
        self._stop_starting()
        if not self._started:
            self._not_started()  # requests held for the first connection: refused now
        for peer_id in list(self._parked):
            self._unpark(peer_id).errback(ShuttingDown())
        d = self._script("retire") if self.ready else succeed(None)
        # Best effort: if Redis is away, the session expires on its own.
        d.addErrback(lambda f: None)
        d.addCallback(lambda _: self.link.stop())
        return d

    def sync(self) -> Deferred:
        """
        Fire once every event published to this instance before the call
        has been handled (a round trip through Redis and back; tests settle on it).
        """
        token = secrets.token_hex(8)
        d = self._syncs[token] = Deferred()
        published = self._command("PUBLISH", self._channel, json.dumps([["z", token]]))
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
        """One script in this session, ready or still resuming."""
        limits = self.limits
        d = self.link.script(script, [
            self.prefix, repr(self._clock.seconds()), self._session,
            repr(float(limits.peer_timeout)), limits.max_queue, limits.max_queued_bytes,
            limits.max_peers, *args])
        return d.addCallback(self._counted)

    def _counted(self, r):
        self.peer_count, self.queued_count, self.queued_bytes = r[0], r[1], r[2]
        removed = r[3]
        for i in range(0, len(removed), 3):
            self._log_removal(int(removed[i]), removed[i + 1].decode("utf-8"),
                              removed[i + 2].decode("ascii"))
        return r[4:]

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

    def _requeue(self, peer_id: int, from_n: int, run=None) -> Deferred:
        def done(r):
            if r[0] and self.metrics:
                self.metrics.requeued.inc(r[0])

        return (run or self._run)("requeue", peer_id, from_n).addCallback(done)

    def _log_removal(self, peer_id: int, name: str, why: str) -> None:
        if why == "timeout":
            why = "timed out after %gs without /wait" % (self.limits.peer_timeout,)
            if self.metrics:
                self.metrics.timeouts.inc()
        elif why.startswith("dropped") and self.metrics:
            self.metrics.slow_peers_dropped.inc()
        self.log.info("{why}: {name!r} ({peer_id}), {count} peers left",
                      why=why, name=name, peer_id=peer_id, count=self.peer_count)

    # -- internals: waits -------------------------------------------------------------

    def _unpark(self, peer_id: int) -> Deferred:
        waiter = self._parked.pop(peer_id)
        self.waiting_count -= 1
        return waiter.d

    def _current(self, peer_id: int, waiter: _Waiter) -> bool:
        return self._parked.get(peer_id) is waiter

    def _waited(self, r, peer_id: int, waiter: _Waiter):
        status = r[0]
        if status == b"parked":
            # If it was cancelled meanwhile, its canceller's unpark follows
            # this script on the same connection; if it was answered (the
            # publish overtook this reply), the answer consumed the park.
            pass
        elif status == b"unknown":
            if self._current(peer_id, waiter):
                self._unpark(peer_id).errback(UnknownPeer(peer_id))
        else:
            self._deliver(peer_id, waiter.serial, r[1])

    def _wait_failed(self, failure, peer_id: int, waiter: _Waiter):
        if self._current(peer_id, waiter):
            self._unpark(peer_id).errback(failure)
        elif not failure.check(StoreUnavailable):
            self._log_failure(failure, "wait")

    def _deliver(self, peer_id: int, serial: int, raw: bytes) -> None:
        delivery = parse_item(raw)
        waiter = self._parked.get(peer_id)
        if waiter is not None and waiter.serial == serial:
            self._unpark(peer_id).callback(delivery)
        else:
            # Handed to a wait that is gone: back to the head, for the next one.
            self._requeue(peer_id, delivery.n, self._script).addErrback(
                self._log_failure, "requeue")

    def _on_message(self, message: bytes) -> None:
        session = self._session
        for event in json.loads(message.decode("latin-1")):
            kind = event[0]
            if kind == "z":
                d = self._syncs.pop(event[1], None)
                if d is not None:
                    d.callback(None)
                continue
            if event[1] != session:
                continue  # for a session that ended: settled when it was retired
            peer_id, serial = event[2], event[3]
            if kind == "d":
                self._deliver(peer_id, serial, event[4].encode("latin-1"))
                continue
            waiter = self._parked.get(peer_id)
            if waiter is not None and waiter.serial == serial:
                self._unpark(peer_id).errback(
                    UnknownPeer(peer_id) if kind == "x" else WaitReplaced())

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
            self._end_session()
            return
        self._begin_session()

    def _end_session(self):
        self.ready = False
        self._stop_ticking()
        if self._session:
            self._old_sessions.append(self._session)
            self._session = ""

    def _begin_session(self):
        """Links up: a new session; the old ones are retired and the waits parked again."""
        self._session = "%s.%d" % (self.uid, next(self._epoch))
        old, waits = list(self._old_sessions), list(self._parked.items())
        args = [repr(self.session_ttl), len(old), *old]
        for peer_id, waiter in waits:
            args += [peer_id, waiter.serial, waiter.window]
        d = self._script("resume", *args)
        d.addCallbacks(self._resumed, self._resume_failed, (old, waits))

    def _resumed(self, r, old, waits):
        del self._old_sessions[:len(old)]
        self.ready = True
        self.log.info("Redis link up: {address}, prefix {prefix!r}, session {session}",
                      address=str(self.link.address), prefix=self.prefix,
                      session=self._session)
        for (peer_id, waiter), answer in zip(waits, r[0]):
            if not self._current(peer_id, waiter) or answer == b"parked":
                continue
            if answer == b"unknown":
                self._unpark(peer_id).errback(UnknownPeer(peer_id))
            elif answer == b"replaced":
                self._unpark(peer_id).errback(WaitReplaced())
            else:
                self._deliver(peer_id, waiter.serial, answer)
        if not self._started:
            self._stop_starting()
            self._not_started()
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


def _loaded(scripts: dict[str, str]) -> dict[str, tuple[str, bytes]]:
    import hashlib

    return {name: (hashlib.sha1(source.encode("utf-8")).hexdigest(), source.encode("utf-8"))
            for name, source in scripts.items()}
