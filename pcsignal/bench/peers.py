"""
Simulated signaling clients for pcsignal-bench, on aiohttp and asyncio.

A BenchPeer behaves like a real client of the peerconnection protocol: it
signs in, keeps exactly one hanging ``GET /wait`` parked and re-issues it
right after each answer, and POSTs its messages one at a time.  A Crowd is
a group of them that knows when every member has learned about every other
member (from sign-in lists and notifications).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import time
from typing import Callable, Iterable, Optional

import aiohttp
from yarl import URL

from pcsignal.protocol import Entry, parse_entries

# A parked /wait may legitimately stay open for as long as a scenario runs,
# and a per-request timer would cost on the hot path: every scenario bounds
# its whole run instead, and cancelling a wait closes its connection.
WAIT_TIMEOUT = aiohttp.ClientTimeout(total=None)
# Everything else is answered at once by a healthy server.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
SIGN_OUT_CONCURRENCY = 64

FAILURES = (aiohttp.ClientError, asyncio.TimeoutError)


class SignalingError(Exception):
    """The server answered a request with something a client cannot use."""


def new_session() -> aiohttp.ClientSession:
    """One keep-alive session for many peers."""
    # limit=0: every peer keeps its own parked /wait connection open.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    # Requests as lean as the native client's: no cookies, no compression,
    # only the header HTTP/1.1 needs (Host) -- cheaper on both ends.
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    )


def describe(error: BaseException) -> str:
    return str(error) or error.__class__.__name__


def message_body(seq: int, size: int) -> bytes:
    """
    A JSON message carrying its send time, padded to about size bytes.
    CLOCK_MONOTONIC is system-wide, so any process on this machine can
    compute the one-way latency on receipt.
    """
    head = '{"seq": %d, "sent": %.9f, "pad": "' % (seq, time.monotonic())
    pad = max(0, size - len(head) - 2)
    return (head + "x" * pad + '"}').encode("ascii")


def sent_at(body: bytes) -> float:
    return json.loads(body)["sent"]


def message_seq(body: bytes) -> int:
    return json.loads(body)["seq"]


def _ignore(*args) -> None:
    pass


def _pragma_id(response: aiohttp.ClientResponse) -> Optional[int]:
    pragma = response.headers.get("Pragma")
    if pragma is None:
        return None
    try:
        return int(pragma.strip())
    except ValueError:
        return None


class BenchPeer:
    """
    One signaling client: sign in, one parked /wait re-issued after each
    answer, POSTs one at a time, sign out.

    Answers to /wait are handed to ``on_notification(peer, entry, received)``
    or ``on_message(peer, sender_id, body, received)``; ``received`` is the
    monotonic time the answer was read.  A non-200 answer to /wait means
    the server dropped the peer: it stops waiting and ``on_lost(peer,
    reason)`` is called.

    With ``abandon`` > 0, that fraction of its waits are abandoned, as by a
    client killed mid-wait: sent on a connection of their own, which is
    reset (``SO_LINGER`` 0) ``abandon_after`` seconds later without reading
    anything; then the next ``/wait`` goes out as usual.
    """

    abandon = 0.0
    abandon_after = 0.005
    abandoned = 0  # waits abandoned so far
    chance: random.Random = random.Random()

    def __init__(self, session: aiohttp.ClientSession, base: str, name: str):
        self.session = session
        self.base = base
        self.name = name
        self.peer_id: Optional[int] = None
        self.known: set[int] = set()  # ids of the other connected peers
        self.lost: Optional[str] = None
        self.on_notification: Callable[[BenchPeer, Entry, float], None] = _ignore
        self.on_message: Callable[[BenchPeer, int, bytes, float], None] = _ignore
        self.on_lost: Callable[[BenchPeer, str], None] = _ignore
        self._send_lock = asyncio.Lock()
        self._waiting: Optional[asyncio.Task] = None
        self._wait_url: Optional[URL] = None

    def _url(self, path_and_query: str) -> URL:
        # encoded=True: the sign-in name goes on the wire exactly as given.
        return URL(self.base + path_and_query, encoded=True)

    async def sign_in(self) -> list[Entry]:
        async with self.session.get(
            self._url("/sign_in?%s" % (self.name,)), timeout=REQUEST_TIMEOUT
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise SignalingError("sign_in answered %d" % (response.status,))
            peer_id = _pragma_id(response)
        if peer_id is None:
            raise SignalingError("sign_in answer has no usable Pragma id")
        entries = parse_entries(body)
        self.adopt(peer_id, (e.peer_id for e in entries if e.connected))
        return entries

    def adopt(self, peer_id: int, connected: Iterable[int]) -> None:
        """Take on an identity signed in (here or in another process)."""
        self.peer_id = peer_id
        self._wait_url = self._url("/wait?peer_id=%d" % (peer_id,))
        self.known = set(connected)
        self.known.discard(peer_id)

    def start_waiting(self) -> None:
        self._waiting = asyncio.ensure_future(self._wait_forever())

    async def stop_waiting(self) -> None:
        """Abandon the parked /wait (closes its connection) and stop."""
        task, self._waiting = self._waiting, None
        await cancel(task)

    async def _wait_forever(self) -> None:
        while True:
            if self.abandon and self.chance.random() < self.abandon:
                try:
                    await self._abandon_one_wait()
                except OSError as e:
                    self._lose("abandoned /wait failed: %s" % (describe(e),))
                    return
                continue
            try:
                async with self.session.get(self._wait_url, timeout=WAIT_TIMEOUT) as response:
                    body = await response.read()
                    received = time.monotonic()
                    status = response.status
                    pragma = _pragma_id(response)
            except FAILURES as e:
                self._lose("/wait failed: %s" % (describe(e),))
                return
            if status != 200:
                self._lose("/wait answered %d" % (status,))
                return
            if pragma == self.peer_id:
                for entry in parse_entries(body):
                    if entry.connected:
                        self.known.add(entry.peer_id)
                    else:
                        self.known.discard(entry.peer_id)
                    self.on_notification(self, entry, received)
            elif pragma is not None:
                self.on_message(self, pragma, body, received)
            else:
                self._lose("/wait answer without a Pragma id")
                return

    async def _abandon_one_wait(self) -> None:
        loop = asyncio.get_running_loop()
        url = self._wait_url
        family, kind, proto, _, address = (
            await loop.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM))[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            await loop.sock_sendall(sock, b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (
                url.raw_path_qs.encode("ascii"), url.raw_authority.encode("ascii")))
            await asyncio.sleep(self.abandon_after)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()  # with SO_LINGER 0: a reset, whatever the server sent
        self.abandoned += 1

    def _lose(self, reason: str) -> None:
        self.lost = reason
        self.on_lost(self, reason)

    async def send(self, to: int, body: bytes) -> None:
        """POST one message; the next waits for this one's answer."""
        async with self._send_lock:
            async with self.session.post(
                self._url("/message?peer_id=%d&to=%d" % (self.peer_id, to)),
                data=body,
                headers={"Content-Type": "text/plain"},
                timeout=REQUEST_TIMEOUT,
            ) as response:
                await response.read()
                if response.status != 200:
                    raise SignalingError("message answered %d" % (response.status,))

    async def sign_out(self) -> None:
        if self.peer_id is None:
            return
        async with self.session.get(
            self._url("/sign_out?peer_id=%d" % (self.peer_id,)), timeout=REQUEST_TIMEOUT
        ) as response:
            await response.read()
            if response.status != 200:
                raise SignalingError("sign_out answered %d" % (response.status,))


async def cancel(task: Optional[asyncio.Future]) -> None:
    """Cancel a peer's reading task (if any) and wait until it has stopped."""
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


class Crowd:
    """
    Peers with parked waits, and whether every one of them knows every
    signed-in peer yet (from its sign-in list and notifications).
    """

    def __init__(self, session: aiohttp.ClientSession, base: str, prefix: str,
                 peer_class: Callable = BenchPeer):
        self.session = session
        self.base = base.rstrip("/")
        self.prefix = prefix
        self.peer_class = peer_class  # BenchPeer, or a WebSocket one (bench.sockets)
        self.peers: list[BenchPeer] = []
        self.errors: list[str] = []
        self.lost: list[str] = []
        self.dropped_ids: set[int] = set()  # ours, announced gone by the server
        self.pushes = 0
        self.last_push = time.monotonic()
        self._ids: set[int] = set()
        self._missing: dict[int, set[int]] = {}
        self._incomplete = 0
        self._complete = asyncio.Event()

    @property
    def signed_in(self) -> int:
        return len(self._ids)

    def add(self, name: str, base: Optional[str] = None) -> BenchPeer:
        """A new peer, speaking to the crowd's server or to ``base``."""
        peer = self.peer_class(self.session, (base or self.base).rstrip("/"), name)
        peer.on_notification = self._notified
        peer.on_lost = self._lost
        self.peers.append(peer)
        return peer

    def add_many(self, count: int, bases: Iterable[Optional[str]] = (None,)) -> list[BenchPeer]:
        """count new peers, spread in turn over the servers at bases (default: the crowd's)."""
        start = len(self.peers)
        bases = list(bases)
        return [self.add("%s-%d" % (self.prefix, start + i), bases[i % len(bases)])
                for i in range(count)]

    def park(self, peer: BenchPeer) -> None:
        """Count a signed-in peer in and park its first /wait."""
        self._ids.add(peer.peer_id)
        peer.start_waiting()

    async def sign_in_one_by_one(self, peers: list[BenchPeer]) -> None:
        """Each waits for its sign-in answer, then parks its /wait at once."""
        for peer in peers:
            try:
                await peer.sign_in()
            except FAILURES + (SignalingError,) as e:
                self.errors.append("%s: sign_in: %s" % (peer.name, describe(e)))
                continue
            self.park(peer)

    def _notified(self, peer: BenchPeer, entry: Entry, received: float) -> None:
        self.pushes += 1
        self.last_push = received
        if not entry.connected and entry.peer_id in self._ids:
            self.dropped_ids.add(entry.peer_id)
        missing = self._missing.get(peer.peer_id)
        if missing and entry.connected and entry.peer_id in missing:
            missing.discard(entry.peer_id)
            if not missing:
                self._one_more_complete()

    def _lost(self, peer: BenchPeer, reason: str) -> None:
        self.lost.append("%s (id %s): %s" % (peer.name, peer.peer_id, reason))
        if self._missing.pop(peer.peer_id, None):
            self._one_more_complete()  # it no longer waits to learn anyone

    def _one_more_complete(self) -> None:
        self._incomplete -= 1
        if not self._incomplete:
            self._complete.set()

    def track(self, ids: Optional[Iterable[int]] = None) -> None:
        """
        From now on, count which peers still miss one of ids (default: the
        peers this crowd signed in).
        """
        everyone = self._ids if ids is None else set(ids)
        self._missing = {
            peer.peer_id: everyone - peer.known - {peer.peer_id}
            for peer in self.peers
            if peer.peer_id is not None and peer.lost is None
        }
        self._incomplete = sum(1 for missing in self._missing.values() if missing)
        if self._incomplete:
            self._complete.clear()
        else:
            self._complete.set()

    def incomplete(self) -> int:
        """Tracked peers that do not know every other one yet."""
        return self._incomplete

    async def until_complete(self, timeout: float) -> bool:
        """True once every tracked peer knows everyone; False after timeout."""
        try:
            await asyncio.wait_for(self._complete.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def until_everyone_knows_everyone(self, timeout: float, idle_timeout: float) -> bool:
        """
        True once every signed-in peer knows all the others; False when the
        deadline passes or no notification arrived for idle_timeout seconds
        (a server that forgot peers never completes).
        """
        self.track()
        deadline = time.monotonic() + timeout
        self.last_push = time.monotonic()
        while not self._complete.is_set():
            now = time.monotonic()
            if now >= deadline or now - self.last_push >= idle_timeout:
                return False
            await self.until_complete(min(1.0, deadline - now))
        return True

    async def sign_out_all(self) -> list[str]:
        """Stop every /wait, then sign every peer out; returns failures."""
        await asyncio.gather(*(peer.stop_waiting() for peer in self.peers))
        failures: list[str] = []
        limit = asyncio.Semaphore(SIGN_OUT_CONCURRENCY)

        async def sign_out(peer):
            async with limit:
                if peer.lost is not None:
                    return  # the server already forgot it
                try:
                    await peer.sign_out()
                except FAILURES + (SignalingError,) as e:
                    failures.append("%s: sign_out: %s" % (peer.name, describe(e)))

        await asyncio.gather(*(sign_out(peer) for peer in self.peers))
        return failures
