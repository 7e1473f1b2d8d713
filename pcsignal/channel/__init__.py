"""
The signaling channel: members, mailboxes, parked waits and liveness.

No HTTP here.  A transport (``pcsignal.web`` for hanging GETs) turns
requests into calls on an IChannel and Deferred results into answers, so
implementations can replace one another without touching the transports:

- ``memory.MemoryChannel``: everything in this process (the default);

This module holds what every implementation shares: the interface, the
refusals (ChannelError and its subclasses, whose text goes to the client),
the mailbox Item and the id allocators.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from pcsignal import protocol


class ChannelError(Exception):
    """A request the channel refuses; str() is the text sent to the client."""


class UnknownPeer(ChannelError):
    def __init__(self, peer_id=None):
        super().__init__("Peer most likely gone.")
        self.peer_id = peer_id


class ServerFull(ChannelError):
    def __init__(self, max_peers):
        super().__init__("Server full: %d peers signed in, try again later." % (max_peers,))


class MailboxFull(ChannelError):
    def __init__(self, peer_id, max_queue):
        super().__init__(
            "Mailbox of peer %d is full (%d items); message not queued, retry later."
            % (peer_id, max_queue)
        )


class ServerBusy(ChannelError):
    def __init__(self, max_queued_bytes):
        super().__init__(
            "Server busy: %d bytes of messages wait to be picked up; message not queued, "
            "retry later." % (max_queued_bytes,)
        )


class ShuttingDown(ChannelError):
    def __init__(self):
        super().__init__("Server shutting down.")


class WaitReplaced(ChannelError):
    def __init__(self):
        super().__init__("Replaced by a newer /wait for this peer.")


class StoreUnavailable(ChannelError):
    """The shared store (Redis) cannot be reached or refuses for now."""

    def __init__(self):
        super().__init__("Service unavailable: the signaling store cannot be reached; "
                         "try again shortly.")


@dataclass(frozen=True)
class Limits:
    """
    The channel's limits.  Frozen, and read at each use: assigning a new
    Limits to ``channel.limits`` (a reload) applies it from then on.
    """

    peer_timeout: float = 30.0
    max_peers: int = 10000
    max_queue: int = 1000
    max_queued_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class Item:
    """
    One mailbox item, delivered as one /wait answer.

    ``sender`` is the id of the peer that posted a message, and None for a
    notification from the server, so that one notification Item is shared by
    every mailbox it goes to.  The Pragma header carries the sender's id for
    a message and the receiver's own id for a notification (``pragma_for``).
    A notification's ``subject`` is the peer it is about (for coalescing).
    """

    sender: Optional[int]
    body: bytes
    content_type: Optional[bytes]
    subject: Optional[int] = None

    @property
    def notification(self) -> bool:
        return self.sender is None

    @property
    def joined(self) -> bool:
        """For a notification: the peer signed in (else it left)."""
        return self.body.endswith(b",1\n")

    def pragma_for(self, receiver: int) -> int:
        return receiver if self.sender is None else self.sender


def notification(name: str, peer_id: int, connected: bool) -> Item:
    """The presence notification ``name,id,connected`` about peer_id."""
    return Item(None, protocol.format_entry(name, peer_id, connected), b"text/plain", peer_id)


class SignedIn(NamedTuple):
    peer_id: int
    body: bytes  # the peer list, the new peer first
    token: str  # proves the peer's identity when it resumes (WebSocket)


class Delivery(NamedTuple):
    """An item handed to a receiver, and its number for that receiver."""

    item: Item
    n: int


class IChannel(Interface):
    """
    The signaling state behind the transports.

    Every method returns a Deferred; failures are ChannelError subclasses
    whose text is meant for the client.

    Delivery is settled by evidence: an item handed out by ``wait`` is *in
    flight* until the transport learns that the client read it (``ack``) or
    did not (``requeue``, which puts it back at the head of the mailbox).
    """

    limits = Attribute("The Limits in force; assign a new one to change them.")
    peer_count = Attribute("Number of signed-in peers.")
    waiting_count = Attribute("Number of parked waits.")
    queued_count = Attribute("Items held for all peers: queued, requeued or in flight.")
    queued_bytes = Attribute("Bytes of message bodies held for all peers.")
    problem = Attribute("None while the channel can serve; else why not, in a few words "
                        "(/healthz answers 503 with it).")

    def sign_in(raw_name: bytes) -> Deferred:
        """
        Add a peer.  Fires with a SignedIn: the new id, the peer list (the
        new peer first) and a token.  Every other peer is notified.
        """

    def sign_out(peer_id: int) -> Deferred:
        """Remove a peer; everyone else is notified."""

    def check(peer_id: int) -> Deferred:
        """Fire with None if the peer is signed in, fail with UnknownPeer if not."""

    def check_token(peer_id: int, token: str) -> Deferred:
        """Fire with None if the peer is signed in with this token, else fail with UnknownPeer."""

    def post(from_id: int, to_id: int, content_type: Optional[bytes], body: bytes) -> Deferred:
        """Queue a message for to_id (or hand it to its parked wait)."""

    def wait(peer_id: int, window: int = 1) -> Deferred:
        """
        Fire with a Delivery of the peer's oldest item not yet handed out,
        once fewer than ``window`` items are in flight for it; park until
        then.  A parked wait keeps the peer alive.  Cancelling un-parks
        without consuming anything; a newer wait fails the parked one with
        WaitReplaced.
        """

    def ack(peer_id: int, n: int) -> Deferred:
        """Items numbered up to n were read: forget them (in flight or requeued)."""

    def requeue(peer_id: int) -> Deferred:
        """Items in flight were not read: back to the head of the mailbox, in order."""

    def close() -> Deferred:
        """Answer every parked wait with ShuttingDown, stop all timers, refuse new work."""


def random_ids(rng=None) -> Callable[[], int]:
    """Unpredictable ids in 1..2**31-1, so a stranger cannot guess one."""
    rng = rng or random.SystemRandom()
    return lambda: rng.randint(1, protocol.MAX_PEER_ID)


class SequentialIds:
    """The reference server's numbering: 1, 2, 3, ...; ``next_id`` is kept
    across a restart by the state file."""

    def __init__(self, next_id: int = 1):
        self.next_id = next_id

    def __call__(self) -> int:
        if self.next_id > protocol.MAX_PEER_ID:
            raise StopIteration("no peer id left")
        peer_id, self.next_id = self.next_id, self.next_id + 1
        return peer_id


def sequential_ids() -> Callable[[], int]:
    """The reference server's numbering: 1, 2, 3, ..."""
    return SequentialIds()
