"""
pcsignal-bench: a load generator for peerconnection signaling servers.

It speaks only the wire protocol (through pcsignal.protocol) with aiohttp on
plain asyncio, so it measures any server at a URL -- pcsignal, the reference
C++ peerconnection_server, or another rebuild -- and stays independent of the
server's framework.

Each simulated peer behaves like a real client: it signs in, keeps exactly
one hanging ``GET /wait`` parked and re-issues it right after each answer,
and POSTs its messages one at a time.  Three scenarios:

- ``relay``: P pairs ping-pong messages; relayed messages/s and one-way
  latency (POST sent -> receiver's /wait answered).
- ``storm``: N peers sign in one after another, each parking its /wait at
  once, until every peer knows every other; seconds and notification
  pushes/s, errors, peers the server timed out or forgot.
- ``hold``: N peers parked; server RSS (``--server-pid``) and the delivery
  latency of messages to random peers.

Every run is bounded by timeouts and signs its peers out at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import aiohttp
from yarl import URL

from pcsignal.protocol import Entry, parse_entries

# A parked /wait may legitimately stay open for as long as the scenario runs;
# every other request is answered at once by a healthy server.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
# No per-request timer on the hot path: each scenario bounds the whole run
# and cancelling a wait closes its connection.
WAIT_TIMEOUT = aiohttp.ClientTimeout(total=None)
SIGN_OUT_CONCURRENCY = 64


# -- measurements ----------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> Optional[float]:
    """Nearest-rank percentile (fraction in 0..1) of values; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(seconds: list[float]) -> dict:
    """p50/p99/max in milliseconds, rounded for humans and JSON alike."""

    def ms(value):
        return None if value is None else round(value * 1000.0, 3)

    return {
        "count": len(seconds),
        "p50_ms": ms(percentile(seconds, 0.50)),
        "p99_ms": ms(percentile(seconds, 0.99)),
        "max_ms": ms(max(seconds) if seconds else None),
    }


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit: one socket per peer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class ServerProcess:
    """
    Memory and CPU of a local server process, read from /proc, so it works
    for any server (ours or another) given its pid.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _status_kib(self, field_name: str) -> Optional[int]:
        with open("/proc/%d/status" % (self.pid,)) as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        return None

    def rss_mib(self) -> float:
        return round(self._status_kib("VmRSS") / 1024.0, 1)

    def peak_rss_mib(self) -> float:
        return round(self._status_kib("VmHWM") / 1024.0, 1)

    def cpu_seconds(self) -> float:
        with open("/proc/%d/stat" % (self.pid,)) as stat:
            # The command name (field 2) may contain spaces: split after it.
            fields = stat.read().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / self._ticks


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- a simulated peer ------------------------------------------------------------


class SignalingError(Exception):
    """The server answered a request with something a client cannot use."""


class BenchPeer:
    """
    One signaling client: sign in, one parked /wait re-issued after each
    answer, POSTs one at a time, sign out.

    Answers to /wait are handed to ``on_notification(peer, entry, received)``
    or ``on_message(peer, sender_id, body, received)``; ``received`` is the
    monotonic time the answer was read.  A non-200 answer to /wait means
    the server dropped the peer: it stops waiting and ``on_lost(peer,
    reason)`` is called.
    """

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
        self.peer_id = peer_id
        self._wait_url = self._url("/wait?peer_id=%d" % (peer_id,))
        entries = parse_entries(body)
        for entry in entries:
            if entry.peer_id != peer_id and entry.connected:
                self.known.add(entry.peer_id)
        return entries

    def start_waiting(self) -> None:
        self._waiting = asyncio.ensure_future(self._wait_forever())

    async def stop_waiting(self) -> None:
        """Abandon the parked /wait (closes its connection) and stop."""
        if self._waiting is not None:
            self._waiting.cancel()
            try:
                await self._waiting
            except asyncio.CancelledError:
                pass
            self._waiting = None

    async def _wait_forever(self) -> None:
        while True:
            try:
                async with self.session.get(self._wait_url, timeout=WAIT_TIMEOUT) as response:
                    body = await response.read()
                    received = time.monotonic()
                    status = response.status
                    pragma = _pragma_id(response)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                self._lose("/wait failed: %s" % (e.__class__.__name__,))
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


# -- a crowd of peers ------------------------------------------------------------


@dataclass
class Crowd:
    """
    Peers that sign in one after another and track whether every one of
    them knows every other one (from its sign-in list and notifications).
    """

    session: aiohttp.ClientSession
    base: str
    prefix: str
    peers: list[BenchPeer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    dropped_ids: set[int] = field(default_factory=set)
    pushes: int = 0
    last_push: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self._ids: set[int] = set()
        self._missing: dict[int, set[int]] = {}
        self._complete = asyncio.Event()

    def add(self, count: int) -> list[BenchPeer]:
        start = len(self.peers)
        added = [
            BenchPeer(self.session, self.base, "%s-%d" % (self.prefix, start + i))
            for i in range(count)
        ]
        for peer in added:
            peer.on_notification = self._notified
            peer.on_lost = self._lost
        self.peers.extend(added)
        return added

    async def sign_in_one_by_one(self, peers: list[BenchPeer]) -> None:
        """Each waits for its sign-in answer, then parks its /wait at once."""
        for peer in peers:
            try:
                await peer.sign_in()
            except (aiohttp.ClientError, asyncio.TimeoutError, SignalingError) as e:
                self.errors.append("%s: sign_in: %s" % (peer.name, _describe(e)))
                continue
            self._ids.add(peer.peer_id)
            peer.start_waiting()

    def _notified(self, peer: BenchPeer, entry: Entry, received: float) -> None:
        self.pushes += 1
        self.last_push = received
        if not entry.connected and entry.peer_id in self._ids:
            self.dropped_ids.add(entry.peer_id)
        missing = self._missing.get(peer.peer_id)
        if missing and entry.connected and entry.peer_id in missing:
            missing.discard(entry.peer_id)
            if not missing:
                self._check_complete()

    def _lost(self, peer: BenchPeer, reason: str) -> None:
        self.lost.append("%s (id %s): %s" % (peer.name, peer.peer_id, reason))
        if self._missing.pop(peer.peer_id, None):
            self._check_complete()

    def _check_complete(self) -> None:
        if not any(self._missing.values()):
            self._complete.set()

    @property
    def signed_in(self) -> int:
        return len(self._ids)

    def incomplete(self) -> int:
        """Signed-in peers that do not know every other signed-in peer yet."""
        return sum(1 for missing in self._missing.values() if missing)

    async def until_everyone_knows_everyone(self, timeout: float, idle_timeout: float) -> bool:
        """
        True once every signed-in peer knows all the others; False when the
        deadline passes or no notification arrived for idle_timeout seconds
        (a server that forgot peers never completes).
        """
        for peer in self.peers:
            if peer.peer_id is not None and peer.lost is None:
                self._missing[peer.peer_id] = self._ids - peer.known - {peer.peer_id}
        self._check_complete()
        deadline = time.monotonic() + timeout
        self.last_push = time.monotonic()
        while not self._complete.is_set():
            now = time.monotonic()
            if now >= deadline or now - self.last_push >= idle_timeout:
                return False
            try:
                await asyncio.wait_for(self._complete.wait(), min(1.0, deadline - now))
            except asyncio.TimeoutError:
                pass
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
                except (aiohttp.ClientError, asyncio.TimeoutError, SignalingError) as e:
                    failures.append("%s: sign_out: %s" % (peer.name, _describe(e)))

        await asyncio.gather(*(sign_out(peer) for peer in self.peers))
        return failures


def _describe(error: BaseException) -> str:
    return str(error) or error.__class__.__name__


def _new_session() -> aiohttp.ClientSession:
    # limit=0: every peer keeps its own parked /wait connection open.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    # Requests as lean as the native client's: no cookies, no compression,
    # only the headers HTTP/1.1 needs (Host) -- cheaper on both ends.
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    )


def _prefix(scenario: str) -> str:
    return "bench-%s-%d" % (scenario, os.getpid())


# -- scenarios -------------------------------------------------------------------


def _message_body(seq: int, size: int) -> bytes:
    """A JSON message carrying its send time, padded to about size bytes."""
    head = '{"seq": %d, "sent": %.9f, "pad": "' % (seq, time.monotonic())
    pad = max(0, size - len(head) - 2)
    return (head + "x" * pad + '"}').encode("ascii")


def _share(total: Optional[int], parts: int, index: int) -> Optional[int]:
    """Part index of total split as evenly as possible (None: unlimited)."""
    if total is None:
        return None
    return total // parts + (1 if index < total % parts else 0)


def _sent_at(body: bytes) -> float:
    return json.loads(body)["sent"]


async def relay(
    url: str,
    pairs: int,
    seconds: float,
    messages: Optional[int],
    size: int,
    timeout: float = 30.0,
    server: Optional[ServerProcess] = None,
) -> dict:
    """P pairs ping-pong one message at a time each, for seconds or messages."""
    async with _new_session() as session:
        crowd = Crowd(session, url.rstrip("/"), _prefix("relay"))
        peers = crowd.add(2 * pairs)
        inboxes: dict[int, asyncio.Queue] = {}
        await crowd.sign_in_one_by_one(peers)
        settled = await crowd.until_everyone_knows_everyone(timeout, timeout)
        latencies: list[float] = []
        errors = list(crowd.errors)
        if not settled:
            errors.append("peers did not learn about each other before the volleys")

        def deliver(peer, sender_id, body, received):
            inboxes[peer.peer_id].put_nowait((sender_id, body, received))

        for peer in peers:
            peer.on_message = deliver
            inboxes[peer.peer_id] = asyncio.Queue()

        acks: list[asyncio.Task] = []

        async def volley(a: BenchPeer, b: BenchPeer, stop_at: float, budget: Optional[int]):
            sender, receiver = a, b
            seq = 0
            while time.monotonic() < stop_at and (budget is None or seq < budget):
                acks.append(asyncio.ensure_future(sender.send(receiver.peer_id, _message_body(seq, size))))
                try:
                    from_id, body, received = await asyncio.wait_for(
                        inboxes[receiver.peer_id].get(), timeout
                    )
                except asyncio.TimeoutError:
                    errors.append("%s -> %s: message %d not delivered within %ss" % (sender.name, receiver.name, seq, timeout))
                    return
                if from_id != sender.peer_id:
                    errors.append("%s got a message from %d, expected %d" % (receiver.name, from_id, sender.peer_id))
                    return
                latencies.append(received - _sent_at(body))
                seq += 1
                sender, receiver = receiver, sender

        everyone_ok = settled and not crowd.errors
        server_cpu = server.cpu_seconds() if server else None
        client_cpu = own_cpu_seconds()
        started = time.monotonic()
        if everyone_ok:
            # With a message budget each delivery's own timeout bounds the run.
            stop_at = started + seconds if messages is None else math.inf
            await asyncio.gather(
                *(
                    volley(peers[2 * i], peers[2 * i + 1], stop_at, _share(messages, pairs, i))
                    for i in range(pairs)
                )
            )
        elapsed = time.monotonic() - started
        client_cpu = own_cpu_seconds() - client_cpu
        server_cpu = server.cpu_seconds() - server_cpu if server else None
        for ack in await asyncio.gather(*acks, return_exceptions=True):
            if isinstance(ack, BaseException):
                errors.append("message POST: %s" % (_describe(ack),))
        lost = list(crowd.lost)
        errors.extend(await crowd.sign_out_all())
    result = {
        "scenario": "relay",
        "url": url,
        "pairs": pairs,
        "message_bytes": size,
        "seconds": round(elapsed, 3),
        "messages": len(latencies),
        "messages_per_second": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency": latency_summary(latencies),
        "errors": len(errors) + len(lost),
        "error_samples": (errors + lost)[:10],
        "client_cpu_seconds": round(client_cpu, 2),
    }
    if server is not None:
        result["server_cpu_seconds"] = round(server_cpu, 2)
        result["server_rss_mib"] = server.rss_mib()
    return result


async def storm(
    url: str,
    peers: int,
    timeout: float,
    idle_timeout: float,
    server: Optional[ServerProcess] = None,
) -> dict:
    """N peers sign in one after another until every peer knows every other."""
    async with _new_session() as session:
        crowd = Crowd(session, url.rstrip("/"), _prefix("storm"))
        server_cpu = server.cpu_seconds() if server else None
        client_cpu = own_cpu_seconds()
        started = time.monotonic()
        await crowd.sign_in_one_by_one(crowd.add(peers))
        signed_in = time.monotonic() - started
        complete = await crowd.until_everyone_knows_everyone(
            max(0.0, timeout - signed_in), idle_timeout
        )
        elapsed = time.monotonic() - started
        client_cpu = own_cpu_seconds() - client_cpu
        server_cpu = server.cpu_seconds() - server_cpu if server else None
        incomplete = crowd.incomplete()
        pushes = crowd.pushes
        errors = list(crowd.errors)
        lost = list(crowd.lost)
        dropped = len(crowd.dropped_ids)
        peak_rss = server.peak_rss_mib() if server else None
        sign_out_failures = await crowd.sign_out_all()
    result = {
        "scenario": "storm",
        "url": url,
        "peers": peers,
        "complete": complete and not lost and crowd.signed_in > 0,
        "seconds": round(elapsed, 3),
        "sign_in_seconds": round(signed_in, 3),
        "pushes": pushes,
        "pushes_per_second": round(pushes / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": len(errors) + len(sign_out_failures),
        "timed_out_peers": len(lost),
        "peers_announced_gone": dropped,
        "peers_not_knowing_everyone": incomplete,
        "error_samples": (errors + lost + sign_out_failures)[:10],
        "client_cpu_seconds": round(client_cpu, 2),
    }
    if server is not None:
        result["server_cpu_seconds"] = round(server_cpu, 2)
        result["server_peak_rss_mib"] = peak_rss
    return result


async def hold(
    url: str,
    peers: int,
    messages: int,
    size: int,
    timeout: float,
    server: Optional[ServerProcess] = None,
    seed: Optional[int] = None,
) -> dict:
    """
    Park N peers, then send messages one at a time from one more peer to
    random parked peers, each after the previous was delivered.
    """
    chooser = random.Random(seed)
    async with _new_session() as session:
        crowd = Crowd(session, url.rstrip("/"), _prefix("hold"))
        rss_before = server.rss_mib() if server else None
        # The sender signs in first: every parked peer then knows it already.
        sender, *parked = crowd.add(peers + 1)
        started = time.monotonic()
        await crowd.sign_in_one_by_one([sender] + parked)
        settled = await crowd.until_everyone_knows_everyone(timeout, timeout)
        parked_seconds = time.monotonic() - started
        errors = list(crowd.errors)
        if not settled:
            errors.append(
                "%d peers did not learn about every other within %ss"
                % (crowd.incomplete(), timeout)
            )
        reachable = [p for p in parked if p.peer_id is not None and p.lost is None]
        rss_parked = server.rss_mib() if server else None

        deliveries: dict[int, asyncio.Future] = {}

        def deliver(peer, sender_id, body, received):
            waiter = deliveries.pop(peer.peer_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result((sender_id, body, received))

        for peer in parked:
            peer.on_message = deliver
        latencies: list[float] = []
        if sender.peer_id is not None and sender.lost is None:
            loop = asyncio.get_running_loop()
            for seq in range(messages if reachable else 0):
                target = chooser.choice(reachable)
                waiter = deliveries[target.peer_id] = loop.create_future()
                try:
                    await sender.send(target.peer_id, _message_body(seq, size))
                    from_id, body, received = await asyncio.wait_for(waiter, timeout)
                except (aiohttp.ClientError, asyncio.TimeoutError, SignalingError) as e:
                    errors.append("message %d to %s: %s" % (seq, target.name, _describe(e)))
                    deliveries.pop(target.peer_id, None)
                    continue
                if from_id != sender.peer_id:
                    errors.append("message %d to %s came from %d" % (seq, target.name, from_id))
                    continue
                latencies.append(received - _sent_at(body))
        rss_after = server.rss_mib() if server else None
        peak_rss = server.peak_rss_mib() if server else None
        lost = list(crowd.lost)
        errors.extend(await crowd.sign_out_all())
    result = {
        "scenario": "hold",
        "url": url,
        "peers": peers,
        "parked": sum(1 for p in reachable if p.lost is None),
        "parked_seconds": round(parked_seconds, 3),
        "message_bytes": size,
        "delivery_latency": latency_summary(latencies),
        "errors": len(errors),
        "timed_out_peers": len(lost),
        "error_samples": (errors + lost)[:10],
    }
    if server is not None:
        result["server_rss_mib"] = {
            "before": rss_before,
            "parked": rss_parked,
            "after_messages": rss_after,
            "peak": peak_rss,
        }
    return result


# -- command line ----------------------------------------------------------------


def summary(result: dict) -> str:
    """The result as a few human-readable lines."""
    scenario = result["scenario"]
    lines = []
    if scenario == "relay":
        latency = result["latency"]
        lines.append(
            "relay: %d pairs, %d messages in %.2fs = %.1f msgs/s"
            % (result["pairs"], result["messages"], result["seconds"], result["messages_per_second"])
        )
        lines.append(
            "one-way latency: p50 %s ms, p99 %s ms, max %s ms"
            % (latency["p50_ms"], latency["p99_ms"], latency["max_ms"])
        )
    elif scenario == "storm":
        lines.append(
            "storm: %d peers, %s in %.2fs (sign-ins took %.2fs), %d pushes = %.1f pushes/s"
            % (
                result["peers"],
                "everyone knows everyone" if result["complete"] else "INCOMPLETE",
                result["seconds"],
                result["sign_in_seconds"],
                result["pushes"],
                result["pushes_per_second"],
            )
        )
        lines.append(
            "timed-out peers: %d, announced gone: %d, not knowing everyone: %d"
            % (result["timed_out_peers"], result["peers_announced_gone"], result["peers_not_knowing_everyone"])
        )
    elif scenario == "hold":
        latency = result["delivery_latency"]
        lines.append(
            "hold: %d peers parked (%.2fs to park), %d messages delivered"
            % (result["parked"], result["parked_seconds"], latency["count"])
        )
        lines.append(
            "delivery latency: p50 %s ms, p99 %s ms, max %s ms"
            % (latency["p50_ms"], latency["p99_ms"], latency["max_ms"])
        )
        if "server_rss_mib" in result:
            rss = result["server_rss_mib"]
            lines.append(
                "server RSS: %s MiB before, %s MiB parked, %s MiB after messages, %s MiB peak"
                % (rss["before"], rss["parked"], rss["after_messages"], rss["peak"])
            )
        lines.append("timed-out peers: %d" % (result["timed_out_peers"],))
    lines.append("errors: %d" % (result["errors"],))
    lines.extend("  " + sample for sample in result["error_samples"])
    if "client_cpu_seconds" in result:
        cpu = "benchmark CPU: %.2fs" % (result["client_cpu_seconds"],)
        if "client" in result:
            cpu += " (%s)" % (result["client"]["event_loop"],)
        if "server_cpu_seconds" in result:
            cpu += ", server CPU: %.2fs" % (result["server_cpu_seconds"],)
        lines.append(cpu)
    if scenario == "relay" and "server_rss_mib" in result:
        lines.append("server RSS: %s MiB" % (result["server_rss_mib"],))
    if scenario == "storm" and "server_peak_rss_mib" in result:
        lines.append("server peak RSS: %s MiB" % (result["server_peak_rss_mib"],))
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcsignal-bench",
        description=(
            "Load generator for peerconnection signaling servers (pcsignal, the "
            "reference peerconnection_server, or any other). Every simulated peer "
            "acts like a real client: one hanging /wait parked at all times, "
            "messages POSTed one at a time."
        ),
        epilog=(
            "examples:\n"
            "  pcsignal-bench http://127.0.0.1:8888 relay --pairs 8 --seconds 10\n"
            "  pcsignal-bench http://127.0.0.1:8888 storm --peers 1000\n"
            "  pcsignal-bench http://127.0.0.1:8888 hold --peers 1000 --messages 1000 "
            "--server-pid PID"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="base URL of the signaling server, e.g. http://127.0.0.1:8888")
    # Options every scenario takes, accepted after the scenario name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as one JSON object")
    common.add_argument(
        "--server-pid",
        type=int,
        metavar="PID",
        help="pid of the server process when it runs on this machine: report its RSS and CPU time",
    )
    common.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the benchmark itself (default auto: uvloop if installed, else asyncio)",
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    relay_parser = scenarios.add_parser(
        "relay",
        parents=[common], help="P pairs ping-pong messages: msgs/s relayed, one-way latency p50/p99"
    )
    relay_parser.add_argument("--pairs", type=_positive_int, default=8, help="peer pairs (default 8)")
    how_long = relay_parser.add_mutually_exclusive_group()
    how_long.add_argument("--seconds", type=_positive_float, default=10.0, help="run this long (default 10)")
    how_long.add_argument("--messages", type=_positive_int, help="relay this many messages in all, then stop")
    relay_parser.add_argument("--size", type=_positive_int, default=200, help="message bytes (default 200, an ICE candidate's size)")
    relay_parser.add_argument("--timeout", type=_positive_float, default=30.0, help="give up on a message after this many seconds (default 30)")

    storm_parser = scenarios.add_parser(
        "storm",
        parents=[common],
        help="N peers sign in one after another until every peer knows every other: seconds, pushes/s",
    )
    storm_parser.add_argument("--peers", type=_positive_int, default=1000, help="peers (default 1000)")
    storm_parser.add_argument("--timeout", type=_positive_float, default=180.0, help="give up after this many seconds (default 180)")
    storm_parser.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=40.0,
        help="give up when no notification arrived for this many seconds (default 40, above the 30 s liveness timeout)",
    )

    hold_parser = scenarios.add_parser(
        "hold",
        parents=[common], help="N peers parked: server RSS (--server-pid), delivery latency to random peers"
    )
    hold_parser.add_argument("--peers", type=_positive_int, default=1000, help="parked peers (default 1000)")
    hold_parser.add_argument("--messages", type=_positive_int, default=1000, help="messages to random parked peers (default 1000)")
    hold_parser.add_argument("--size", type=_positive_int, default=200, help="message bytes (default 200)")
    hold_parser.add_argument("--timeout", type=_positive_float, default=180.0, help="give up parking or delivering after this many seconds (default 180)")
    hold_parser.add_argument("--seed", type=int, help="random seed for picking receivers")
    return parser


async def run(args: argparse.Namespace) -> dict:
    server = ServerProcess(args.server_pid) if args.server_pid else None
    if args.scenario == "relay":
        return await relay(args.url, args.pairs, args.seconds, args.messages, args.size, args.timeout, server)
    if args.scenario == "storm":
        return await storm(args.url, args.peers, args.timeout, args.idle_timeout, server)
    return await hold(args.url, args.peers, args.messages, args.size, args.timeout, server, args.seed)


def event_loop_runner(choice: str) -> tuple[str, Callable]:
    """
    (name, run function) for the --loop choice.  uvloop, where installed,
    makes the benchmark's own HTTP work cheaper, leaving more of the
    machine to the server under test.
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("pcsignal-bench: --loop uvloop needs uvloop installed")
        else:
            return "uvloop", uvloop.run
    return "asyncio", asyncio.run


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.server_pid and not os.path.exists("/proc/%d/status" % (args.server_pid,)):
        print("pcsignal-bench: no process %d on this machine" % (args.server_pid,), file=sys.stderr)
        return 2
    raise_fd_limit()
    loop_name, run_loop = event_loop_runner(args.loop)
    result = run_loop(run(args))
    result["client"] = {
        "event_loop": loop_name,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
    }
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(summary(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
