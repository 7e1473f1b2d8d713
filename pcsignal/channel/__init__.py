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
from typing import Callable, Optional

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


@dataclass(frozen=True)
class Item:
    """
    One mailbox item, delivered as one /wait answer.

    ``sender`` is the id of the peer that posted a message, and None for a
    notification from the server, so that one notification Item is shared by
    every mailbox it goes to.  The Pragma header carries the sender's id for
    a message and the receiver's own id for a notification (``pragma_for``).
    """

    sender: Optional[int]
    body: bytes
    content_type: Optional[bytes]

    @property
    def notification(self) -> bool:
        return self.sender is None

    def pragma_for(self, receiver: int) -> int:
        return receiver if self.sender is None else self.sender


class IChannel(Interface):
    """
    The signaling state behind the HTTP resources.

    Every method returns a Deferred; failures are ChannelError subclasses
    whose text is meant for the client.
    """

    peer_count = Attribute("Number of signed-in peers.")
    waiting_count = Attribute("Number of parked waits.")
    queued_count = Attribute("Number of items in all mailboxes.")
    queued_bytes = Attribute("Bytes of message bodies in all mailboxes.")

    def sign_in(raw_name: bytes) -> Deferred:
        """
        Add a peer.  Fires with (peer_id, body) where body is the peer list,
        the new peer first.  Every other peer is notified.
        """

    def sign_out(peer_id: int) -> Deferred:
        """Remove a peer; everyone else is notified."""

    def check(peer_id: int) -> Deferred:
        """Fire with None if the peer is signed in, fail with UnknownPeer if not."""

    def post(from_id: int, to_id: int, content_type: Optional[bytes], body: bytes) -> Deferred:
        """Queue a message for to_id (or hand it to its parked wait)."""

    def wait(peer_id: int) -> Deferred:
        """
        Fire with the peer's oldest Item, at once or when one arrives.
        Cancelling the Deferred un-parks the wait without consuming an item.
        """

    def close() -> Deferred:
        """Answer every parked wait with ShuttingDown and stop all timers."""


def random_ids(rng=None) -> Callable[[], int]:
    """Unpredictable ids in 1..2**31-1, so a stranger cannot guess one."""
    rng = rng or random.SystemRandom()
    return lambda: rng.randint(1, protocol.MAX_PEER_ID)


def sequential_ids() -> Callable[[], int]:
    """The reference server's numbering: 1, 2, 3, ..."""
    counter = iter(range(1, protocol.MAX_PEER_ID + 1))
    return lambda: next(counter)
