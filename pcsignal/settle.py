"""
Delivered means read: a ``/wait`` answer leaves its peer's mailbox only on
evidence that the client read it, and goes back to the head of the mailbox
on evidence that it did not.

The channel keeps each item it hands to a ``/wait`` *in flight*; this module
settles it with ``channel.ack`` (read) or ``channel.requeue`` (not read) from
what the answer's connection shows.  The evidence, each named as in the
``pcsignal_deliveries_settled_total`` metric:

read
    ``next_request``: the client sent more bytes on that connection (its next
    request, keep-alive).  ``closed``: it closed the connection cleanly (FIN)
    once its kernel had acknowledged the whole answer, or with TLS's
    close_notify.  ``new_wait``: the peer's next ``/wait`` came on another
    connection while this one is still open (a browser's fetch pool).
    ``quiet``: none of the above within QUIET_SECONDS of the answer: the
    connection is alive, and a silent partition, the one case no server can
    see, looks the same.  ``shutdown``: the server stopped while the
    connection was open.  ``tls_lost``: a TLS connection ended without
    close_notify; Twisted's TLS layer reports a reset and such a close alike,
    and many clients never send close_notify, so this counts as read rather
    than send their last answer again.
not read
    ``reset``: the connection was reset (the client closed it with the answer
    unread, or was killed: RST) or writing the answer failed.  ``new_wait``,
    ``shutdown``: the same, found on the socket.  ``gone``: the client had
    left before the answer could be written.

HTTP ``/wait`` takes items one at a time (window 1): the peer's next
``/wait`` is parked by the channel until the previous item is settled, so
nothing is answered twice or out of order.  The web layer calls in at four
points: an item is about to be written (``Deliveries.handed``), a ``/wait``
arrives (``new_wait``), the server stops (``settle_all``), and its connection
reports bytes, FIN, flush-and-half-close or loss (the ``Answer`` methods).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Optional

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, ISystemHandle
from twisted.python.failure import Failure

from pcsignal import logs
from pcsignal.channel import ChannelError

# How long a connection may say nothing after an answer before the answer
# counts as read.  A client that read it says something much sooner (its
# next request, its close); a vanished one resets at once.  Long enough for
# a loaded machine and a slow link to flush a 64 KiB answer, short enough
# that a peer with an unusual client waits little for its next item.
QUIET_SECONDS = 1.5
# After a FIN that did not acknowledge the whole answer, how often to look
# whether the rest is acknowledged (read) or the connection reset (not).
_RECHECK_SECONDS = 0.02

_log = logs.logger("pcsignal.web")

READ, UNREAD = True, False
OPEN, CLOSED, RESET = "open", "closed", "reset"
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # once: IntFlag's | is slow


def os_socket(transport) -> Optional[socket.socket]:
    """The operating system's socket under a transport, also beneath TLS; None without one."""
    while transport is not None:
        if ISystemHandle.providedBy(transport):
            handle = transport.getHandle()
            if isinstance(handle, socket.socket):
                return handle
        # A TLS layer is a protocol wrapper: its own transport is the socket's.
        transport = getattr(transport, "transport", None)
    return None


def socket_state(sock: Optional[socket.socket]) -> str:
    """OPEN, CLOSED (the client sent FIN) or RESET, peeking without reading anything."""
    if sock is None:
        return OPEN  # nothing to look at: no evidence against reading
    try:
        data = sock.recv(1, _PEEK)
    except BlockingIOError:
        return OPEN
    except (OSError, ValueError):  # ECONNRESET, or already closed
        return RESET
    if data:
        return OPEN
    # After a FIN, recv reports the end of the stream even if a reset followed.
    return RESET if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) else CLOSED


def unacknowledged(sock: Optional[socket.socket]) -> int:
    """
    Bytes sent that the other end's kernel has not acknowledged (Linux's
    SIOCOUTQ; a FIN counts one).  0 where that cannot be known.
    """
    if sock is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


class Deliveries:
    """
    The site's ``/wait`` answers in flight (at most one per peer), and the
    one place that settles them.
    """

    def __init__(self, channel, clock: IReactorTime, metrics=None,
                 quiet_seconds: float = QUIET_SECONDS):
        self.channel = channel
        self.clock = clock
        self.metrics = metrics
        self.quiet_seconds = quiet_seconds
        self.in_flight: dict[int, Answer] = {}  # by peer id, oldest first
        self._counters: dict[tuple[bool, str], object] = {}
        # One timer for the oldest answer's deadline, not one per answer:
        # nearly every answer is settled long before.
        self._sweep = None

    def __len__(self) -> int:
        return len(self.in_flight)

    def handed(self, connection, peer_id: int, n: int) -> None:
        """Item n is about to be written on connection as peer_id's answer."""
        Answer(self, connection, peer_id, n)
        if self._sweep is None:
            self._sweep = self.clock.callLater(self.quiet_seconds, self._quiet)

    def _quiet(self) -> None:
        """Settle the answers whose connections said nothing for quiet_seconds."""
        self._sweep = None
        now = self.clock.seconds()
        while self.in_flight:
            answer = next(iter(self.in_flight.values()))
            if answer.deadline > now:
                self._sweep = self.clock.callLater(answer.deadline - now, self._quiet)
                return
            answer.settle(READ, "quiet")

    def new_wait(self, peer_id: int) -> None:
        """
        A new ``/wait`` of peer_id: settle its answer in flight now from the
        old connection's socket, so the new one is not held up.  A client
        issuing its next ``/wait`` has read the previous answer, unless that
        connection was reset.
        """
        answer = self.in_flight.get(peer_id)
        if answer is not None:
            answer.look("new_wait")

    def settle_all(self) -> Deferred:
        """
        At shutdown: settle every answer in flight from its socket now; one
        whose client sent FIN is judged as its connection reports that FIN
        (by its deadline at the latest).  Fires once each is settled.
        """
        settled = []
        for answer in list(self.in_flight.values()):
            d = answer.look("shutdown")
            if self.in_flight.get(answer.peer_id) is answer:
                d = answer.settled = Deferred()
            settled.append(d)
        return gatherResults(settled)

    def settle(self, peer_id: int, n: int, read: bool, evidence: str) -> Deferred:
        if logs.debug:
            _log.debug("answer {n} to {peer_id}: {outcome} ({evidence})", n=n, peer_id=peer_id,
                       outcome="read" if read else "unread", evidence=evidence)
        d = self.channel.ack(peer_id, n) if read else self.channel.requeue(peer_id)
        if self.metrics is not None:
            counter = self._counters.get((read, evidence))
            if counter is None:
                counter = self._counters[read, evidence] = self.metrics.deliveries_settled.labels(
                    "read" if read else "unread", evidence)
            counter.inc()
        d.addErrback(self._failed, peer_id, read)
        return d

    def _failed(self, failure: Failure, peer_id: int, read: bool) -> None:
        if failure.check(ChannelError):
            # A refusal (the store is away, the server stops): the channel
            # logged its state once; an ack it holds is applied when it can.
            return
        _log.failure("settling the answer to {peer_id} as {outcome} failed", failure,
                     peer_id=peer_id, outcome="read" if read else "unread")


class Answer:
    """
    One item written as a ``/wait`` answer, in flight until its connection
    (``connection.answer`` meanwhile) shows whether the client read it.
    """

    __slots__ = ("deliveries", "connection", "peer_id", "n", "deadline", "recheck", "settled")

    def __init__(self, deliveries: Deliveries, connection, peer_id: int, n: int):
        self.deliveries = deliveries
        self.connection = connection
        self.peer_id = peer_id
        self.n = n
        self.deadline = deliveries.clock.seconds() + deliveries.quiet_seconds
        self.recheck = None  # after a FIN, see closed_by_client
        self.settled: Optional[Deferred] = None  # a shutdown waiting for this one
        connection.answer = self
        deliveries.in_flight[peer_id] = self

    # -- evidence ------------------------------------------------------------

    def next_request(self) -> None:
        self.settle(READ, "next_request")

    def look(self, evidence: str) -> Deferred:
        """Settle from the socket's state now, unless it shows a FIN: that
        is judged by ``closed_by_client``, which the connection calls next."""
        state = socket_state(os_socket(self.connection.transport))
        if state == CLOSED:
            return succeed(None)
        return self.settle(state == OPEN, evidence)

    def closed_by_client(self) -> None:
        """
        The client sent FIN, and all of the answer went to the kernel.  A
        FIN is evidence of reading only once the client's kernel has
        acknowledged the whole answer: a client that closed with the answer
        unread resets instead, and one that closed before the answer reached
        it will reset when it does.
        """
        sock = os_socket(self.connection.transport)
        # First the reset: Twisted also reports a reset as an end of
        # stream when epoll flags the error before the socket's shutdown.
        if socket_state(sock) == RESET:
            self.settle(UNREAD, "reset")
        elif unacknowledged(sock) <= 1:  # at most our own FIN
            self.settle(READ, "closed")
        elif self.deliveries.clock.seconds() < self.deadline:  # else the sweep settles it
            self.recheck = self.deliveries.clock.callLater(_RECHECK_SECONDS, self._recheck)

    def lost(self, reason: Failure, tls: bool) -> None:
        """The connection is gone: cleanly (read), by a reset (not read)."""
        if reason.check(ConnectionDone):
            self.settle(READ, "closed")
        elif tls:
            self.settle(READ, "tls_lost")
        else:
            self.settle(UNREAD, "reset")

    def _recheck(self) -> None:
        self.recheck = None
        self.closed_by_client()

    # -- settling ------------------------------------------------------------

    def settle(self, read: bool, evidence: str) -> Deferred:
        if self.recheck is not None:
            self.recheck.cancel()
            self.recheck = None
        deliveries = self.deliveries
        if deliveries.in_flight.get(self.peer_id) is self:
            del deliveries.in_flight[self.peer_id]
        self.connection.answer = None
        self.connection.answer_settled()
        d = deliveries.settle(self.peer_id, self.n, read, evidence)
        if self.settled is not None:
            d.chainDeferred(self.settled)
        return d
