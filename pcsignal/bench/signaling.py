"""
pcsignal-bench: a load generator for peerconnection signaling servers.

It speaks only the wire protocol (through pcsignal.protocol) with aiohttp on
asyncio, so it measures any server at a URL -- pcsignal, the reference C++
peerconnection_server, or another rebuild -- and stays independent of the
server's framework.  Every simulated peer behaves like a real client (see
pcsignal.bench.peers).  Three scenarios:

- ``relay``: P pairs ping-pong messages; relayed messages/s and one-way
  latency (POST sent -> receiver's /wait answered); per receiver, every
  message received once and in order, also when a fraction of the waits
  are abandoned (``--abandon``).
  With ``--second-url`` each pair has a peer on each of two servers
  (instances sharing one Redis), so every message crosses from one to the
  other.
- ``storm``: N peers sign in one after another, each parking its /wait at
  once, until every peer knows every other; seconds and notification
  pushes/s, errors, peers the server timed out or forgot.
- ``hold``: N peers parked; server RSS (``--server-pid``) and the delivery
  latency of messages to random peers.

Storm and hold keep their parked peers in worker processes (see
pcsignal.bench.workers).  Every run is bounded by timeouts and signs its
peers out at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sys
import time
from typing import Callable, NamedTuple, Optional

import aiohttp
import psutil

from pcsignal.bench import hostile
from pcsignal.bench.peers import (
    FAILURES,
    BenchPeer,
    Crowd,
    SignalingError,
    describe,
    message_body,
    message_seq,
    new_session,
    sent_at,
)
from pcsignal.bench.percentiles import percentile
from pcsignal.bench.processes import ProcessStats
from pcsignal.bench.sockets import PeerJSBenchPeer, WebSocketBenchPeer
from pcsignal.bench.workers import WorkerPool, own_cpu_seconds
from pcsignal.fds import raise_open_files_limit as raise_fd_limit  # one socket per peer
from pcsignal.options import fraction, positive_float, positive_int


# -- measurements ----------------------------------------------------------------


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


def delivery_check(sent: list[int], received: list[int]) -> dict:
    """
    What one receiver got, against what was sent to it (sequence numbers,
    each list in its order): received (distinct), lost, duplicated (extra
    copies), out of order (arrived after a later one).
    """
    seen: set[int] = set()
    duplicated = out_of_order = 0
    latest = None
    for seq in received:
        if seq in seen:
            duplicated += 1
            continue
        seen.add(seq)
        if latest is not None and seq < latest:
            out_of_order += 1
        latest = seq if latest is None else max(latest, seq)
    return {
        "sent": len(sent),
        "received": len(seen),
        "lost": len(set(sent) - seen),
        "duplicated": duplicated,
        "out_of_order": out_of_order,
    }


def _prefix(scenario: str) -> str:
    return "bench-%s-%d" % (scenario, os.getpid())


def _share(total: Optional[int], parts: int, index: int) -> Optional[int]:
    """Part index of total split as evenly as possible (None: unlimited)."""
    if total is None:
        return None
    return total // parts + (1 if index < total % parts else 0)


# -- scenarios -------------------------------------------------------------------


class CpuMeter:
    """CPU seconds spent by processes on this machine (servers, redis-server) since start()."""

    def __init__(self, processes: list[ProcessStats]):
        self.processes = processes
        self._before = 0.0

    def _total(self) -> float:
        return sum(p.cpu_seconds() for p in self.processes)

    def start(self) -> None:
        self._before = self._total()

    def seconds(self) -> float:
        return round(self._total() - self._before, 2)


# What relay's --transport names: the simulated client, and whether the
# server tells peers about each other (PeerJS does not).
TRANSPORTS = {
    "http": (BenchPeer, True),
    "ws": (WebSocketBenchPeer, True),
    "peerjs": (PeerJSBenchPeer, False),
}


async def relay(
    url: str,
    pairs: int,
    seconds: float,
    messages: Optional[int],
    size: int,
    timeout: float = 30.0,
    server: Optional[ProcessStats] = None,
    abandon: float = 0.0,
    abandon_after: float = 0.005,
    seed: Optional[int] = None,
    second_url: Optional[str] = None,
    extras: Optional[CpuMeter] = None,
    transport: str = "http",
) -> dict:
    """
    P pairs ping-pong one message at a time each, for seconds or messages.
    Each receiver's messages are checked at the end: every one received,
    once, in order.  With ``abandon``, that fraction of the waits are
    abandoned (see BenchPeer).  With second_url, each pair's second peer
    uses that server.
    """
    peer_class, presence = TRANSPORTS[transport]
    loop = asyncio.get_running_loop()
    async with new_session() as session:
        crowd = Crowd(session, url, _prefix("relay"), peer_class)
        peers = crowd.add_many(2 * pairs, (url, second_url) if second_url else (url,))
        await crowd.sign_in_one_by_one(peers)
        settled = await crowd.until_everyone_knows_everyone(timeout, timeout) if presence else True
        latencies: list[float] = []
        errors = list(crowd.errors)
        if not settled:
            errors.append("peers did not learn about each other before the volleys")
        chance = random.Random(seed)
        sent: dict[int, list[int]] = {}  # by receiver id: sequence numbers sent to it
        received: dict[int, list[int]] = {}  # by receiver id: as they arrived
        distinct: dict[int, set[int]] = {}  # by receiver id
        arrivals: dict[tuple[int, int], asyncio.Future] = {}  # (receiver, seq) awaited
        outstanding = 0  # sent, not yet received
        all_in = asyncio.Event()

        def deliver(peer, sender_id, body, received_at):
            nonlocal outstanding
            seq = message_seq(body)
            received[peer.peer_id].append(seq)
            if seq not in distinct[peer.peer_id]:
                distinct[peer.peer_id].add(seq)
                outstanding -= 1
                if not outstanding:
                    all_in.set()
            arrived = arrivals.pop((peer.peer_id, seq), None)
            if arrived is not None and not arrived.done():
                arrived.set_result((sender_id, received_at))

        for peer in peers:
            peer.on_message = deliver
            peer.chance = chance
            sent[peer.peer_id] = []
            received[peer.peer_id] = []
            distinct[peer.peer_id] = set()
        # Abandoning starts with the volleys: the crowd has parked its waits.
        for peer in peers:
            peer.abandon, peer.abandon_after = abandon, abandon_after

        def acked(post: asyncio.Future) -> None:
            if not post.cancelled() and post.exception() is not None:
                errors.append("message POST: %s" % (describe(post.exception()),))

        posts: set[asyncio.Future] = set()

        async def volley(a: BenchPeer, b: BenchPeer, stop_at: float, budget: Optional[int]):
            nonlocal outstanding
            sender, receiver = a, b
            seq = 0
            missed = 0
            while time.monotonic() < stop_at and (budget is None or seq < budget):
                # The answer goes back as soon as the message arrives, even
                # if the POST's own 200 is still on its way.
                arrived = arrivals[receiver.peer_id, seq] = loop.create_future()
                sent[receiver.peer_id].append(seq)
                outstanding += 1
                all_in.clear()
                body = message_body(seq, size)
                post = asyncio.ensure_future(sender.send(receiver.peer_id, body))
                post.add_done_callback(acked)
                posts.add(post)
                post.add_done_callback(posts.discard)
                try:
                    from_id, received_at = await asyncio.wait_for(arrived, timeout)
                except asyncio.TimeoutError:
                    arrivals.pop((receiver.peer_id, seq), None)
                    errors.append(
                        "%s -> %s: message %d not delivered within %ss"
                        % (sender.name, receiver.name, seq, timeout)
                    )
                    missed += 1
                    if missed == 3:
                        return  # the server stopped delivering
                else:
                    missed = 0
                    if from_id != sender.peer_id:
                        errors.append(
                            "%s got a message from %d, expected %d"
                            % (receiver.name, from_id, sender.peer_id)
                        )
                        return
                    latencies.append(received_at - sent_at(body))
                seq += 1
                sender, receiver = receiver, sender

        server_cpu = server.cpu_seconds() if server else None
        if extras:
            extras.start()
        client_cpu = own_cpu_seconds()
        started = time.monotonic()
        if settled and not crowd.errors:
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
        extra_cpu = extras.seconds() if extras else None
        if posts:
            await asyncio.wait(posts, timeout=timeout)
        if outstanding:
            # Late ones still count as received (out of order, if they are).
            try:
                await asyncio.wait_for(all_in.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        abandoned = sum(peer.abandoned for peer in peers)
        lost = list(crowd.lost)
        for peer in peers:
            errors.extend(getattr(peer, "errors", ()))  # error frames (WebSocket)
        errors.extend(await crowd.sign_out_all())
    checks = {peer.name: delivery_check(sent[peer.peer_id], received[peer.peer_id])
              for peer in peers if peer.peer_id is not None}
    delivery = {key: sum(check[key] for check in checks.values())
                for key in ("sent", "received", "lost", "duplicated", "out_of_order")}
    for name, check in checks.items():
        if check["lost"] or check["duplicated"] or check["out_of_order"]:
            errors.append("%s: %d lost, %d duplicated, %d out of order" % (
                name, check["lost"], check["duplicated"], check["out_of_order"]))
    delivery["per_receiver"] = checks
    delivery["abandoned_waits"] = abandoned
    result = {
        "scenario": "relay",
        "transport": transport,
        "url": url,
        "second_url": second_url,
        "pairs": pairs,
        "message_bytes": size,
        "seconds": round(elapsed, 3),
        "messages": len(latencies),
        "messages_per_second": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency": latency_summary(latencies),
        "delivery": delivery,
        "errors": len(errors) + len(lost),
        "error_samples": (lost + errors)[:10],  # a lost peer explains its missing messages
        "client_cpu_seconds": round(client_cpu, 2),
    }
    if abandon:
        result["abandon"] = {"fraction": abandon, "after_seconds": abandon_after}
    if server is not None:
        result["server_cpu_seconds"] = round(server_cpu, 2)
        result["server_cpu_us_per_message"] = (
            round(server_cpu / len(latencies) * 1e6, 1) if latencies else None)
        result["server_rss_mib"] = server.rss_mib()
    if extras:
        result["extra_cpu_seconds"] = extra_cpu
        result["extra_cpu_us_per_message"] = (
            round(extra_cpu / len(latencies) * 1e6, 1) if latencies else None)
    return result


class Target(NamedTuple):
    """One server a relay comparison runs against."""

    label: str
    url: str
    transport: str
    server: Optional[ProcessStats] = None
    extras: Optional[CpuMeter] = None


async def compare(
    targets: list[Target],
    rounds: int,
    baseline: Optional[str] = None,
    **relay_args,
) -> dict:
    """
    The relay scenario against several targets in one run: round after
    round, each target in turn, so that whatever else loads the machine
    loads them alike.  Per target: the median of its rounds; with a
    baseline (a target's label), every other target's msgs/s as a ratio
    of the baseline's, round by round and their median.
    """
    runs: dict[str, list[dict]] = {target.label: [] for target in targets}
    for _ in range(rounds):
        for target in targets:
            runs[target.label].append(await relay(
                target.url, server=target.server, transport=target.transport,
                extras=target.extras, **relay_args))

    def median(label, *path):
        values = []
        for run in runs[label]:
            value = run
            for key in path:
                value = value.get(key) if value is not None else None
            if value is not None:
                values.append(value)
        return percentile(values, 0.5)

    summary = {
        label: {
            "messages_per_second": median(label, "messages_per_second"),
            "p50_ms": median(label, "latency", "p50_ms"),
            "p99_ms": median(label, "latency", "p99_ms"),
            "server_cpu_us_per_message": median(label, "server_cpu_us_per_message"),
            "extra_cpu_us_per_message": median(label, "extra_cpu_us_per_message"),
            "errors": sum(run["errors"] for run in runs[label]),
        }
        for label in runs
    }
    if baseline is not None:
        for label, row in summary.items():
            if label == baseline:
                continue
            ratios = [
                round(run["messages_per_second"] / base["messages_per_second"], 3)
                for run, base in zip(runs[label], runs[baseline])
                if base["messages_per_second"]
            ]
            row["ratios_to_baseline"] = ratios
            row["ratio_to_baseline"] = percentile(ratios, 0.5) if ratios else None
    errors = [sample for label in runs for run in runs[label] for sample in run["error_samples"]]
    return {
        "scenario": "relay-compare",
        "rounds": rounds,
        "pairs": relay_args["pairs"],
        "message_bytes": relay_args["size"],
        "baseline": baseline,
        "summary": summary,
        "runs": runs,
        "errors": sum(item["errors"] for item in summary.values()),
        "error_samples": errors[:10],
    }


async def _sign_in_and_hand_over(
    session: aiohttp.ClientSession, url: str, prefix: str, count: int, pool: WorkerPool
) -> tuple[list[int], list[str]]:
    """Sign count peers in one after another, each parked by a worker at once."""
    ids: list[int] = []
    errors: list[str] = []
    for i in range(count):
        peer = BenchPeer(session, url.rstrip("/"), "%s-%d" % (prefix, i))
        try:
            await peer.sign_in()
        except FAILURES + (SignalingError,) as e:
            errors.append("%s: sign_in: %s" % (peer.name, describe(e)))
            continue
        pool.park(peer)
        ids.append(peer.peer_id)
    return ids, errors


async def storm(
    url: str,
    peers: int,
    timeout: float,
    idle_timeout: float,
    processes: int = 1,
    loop: str = "asyncio",
    server: Optional[ProcessStats] = None,
    extras: Optional[CpuMeter] = None,
) -> dict:
    """N peers sign in one after another until every peer knows every other."""
    pool = WorkerPool(url, processes, loop)
    await pool.start()
    async with new_session() as session:
        server_cpu = server.cpu_seconds() if server else None
        if extras:
            extras.start()
        client_cpu = own_cpu_seconds()
        started = time.monotonic()
        ids, errors = await _sign_in_and_hand_over(session, url, _prefix("storm"), peers, pool)
        signed_in = time.monotonic() - started
        complete = await pool.until_everyone_knows_everyone(
            ids, max(0.0, timeout - signed_in), idle_timeout
        )
        elapsed = time.monotonic() - started
        server_cpu = server.cpu_seconds() - server_cpu if server else None
        extra_cpu = extras.seconds() if extras else None
        incomplete = pool.incomplete()
        pushes = pool.pushes
        peak_rss = server.peak_rss_mib() if server else None
        totals = await pool.finish()
        # Workers started before the clock, and their sign-outs come after
        # it; the sign-outs are a small part of their CPU time.
        client_cpu = own_cpu_seconds() - client_cpu + totals["cpu"]
    errors += totals["errors"]
    lost = totals["lost"]
    result = {
        "scenario": "storm",
        "url": url,
        "peers": peers,
        "processes": processes,
        "complete": complete and not lost and bool(ids),
        "seconds": round(elapsed, 3),
        "sign_in_seconds": round(signed_in, 3),
        "pushes": pushes,
        "pushes_per_second": round(pushes / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": len(errors),
        "timed_out_peers": len(lost),
        "peers_announced_gone": len(totals["dropped"]),
        "peers_not_knowing_everyone": incomplete,
        "error_samples": (errors + lost)[:10],
        "client_cpu_seconds": round(client_cpu, 2),
    }
    if server is not None:
        result["server_cpu_seconds"] = round(server_cpu, 2)
        result["server_peak_rss_mib"] = peak_rss
    if extras:
        result["extra_cpu_seconds"] = extra_cpu
    return result


async def hold(
    url: str,
    peers: int,
    messages: int,
    size: int,
    timeout: float,
    processes: int = 1,
    loop: str = "asyncio",
    server: Optional[ProcessStats] = None,
    seed: Optional[int] = None,
) -> dict:
    """
    Park N peers, then send messages one at a time from one more peer to
    random parked peers, each after the previous was delivered.
    """
    chooser = random.Random(seed)
    deliveries: dict[int, asyncio.Future] = {}

    def delivered(to_id: int, sender_id: int, latency: float) -> None:
        waiter = deliveries.pop(to_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result((sender_id, latency))

    pool = WorkerPool(url, processes, loop)
    pool.on_delivered = delivered
    await pool.start()
    async with new_session() as session:
        rss_before = server.rss_mib() if server else None
        # The sender signs in first, so every parked peer knows it already.
        sender = BenchPeer(session, url.rstrip("/"), _prefix("hold") + "-sender")
        errors: list[str] = []
        try:
            await sender.sign_in()
            sender.start_waiting()
        except FAILURES + (SignalingError,) as e:
            errors.append("%s: sign_in: %s" % (sender.name, describe(e)))
        started = time.monotonic()
        ids, sign_in_errors = await _sign_in_and_hand_over(
            session, url, _prefix("hold"), peers, pool
        )
        errors += sign_in_errors
        everyone = ids + ([sender.peer_id] if sender.peer_id is not None else [])
        settled = await pool.until_everyone_knows_everyone(everyone, timeout, timeout)
        parked_seconds = time.monotonic() - started
        if not settled:
            errors.append(
                "%d peers did not learn about every other within %ss"
                % (pool.incomplete(), timeout)
            )
        rss_parked = server.rss_mib() if server else None
        latencies: list[float] = []
        loop_ = asyncio.get_running_loop()
        for seq in range(messages if ids and sender.peer_id is not None else 0):
            target = chooser.choice(ids)
            waiter = deliveries[target] = loop_.create_future()
            try:
                await sender.send(target, message_body(seq, size))
                from_id, latency = await asyncio.wait_for(waiter, timeout)
            except FAILURES + (SignalingError,) as e:
                errors.append("message %d to %d: %s" % (seq, target, describe(e)))
                deliveries.pop(target, None)
                continue
            if from_id != sender.peer_id:
                errors.append("message %d to %d came from %d" % (seq, target, from_id))
                continue
            latencies.append(latency)
        rss_after = server.rss_mib() if server else None
        peak_rss = server.peak_rss_mib() if server else None
        await sender.stop_waiting()
        totals = await pool.finish()
        if sender.peer_id is not None:
            try:
                await sender.sign_out()
            except FAILURES + (SignalingError,) as e:
                errors.append("%s: sign_out: %s" % (sender.name, describe(e)))
    errors += totals["errors"]
    lost = totals["lost"] + ([sender.name + ": " + sender.lost] if sender.lost else [])
    result = {
        "scenario": "hold",
        "url": url,
        "peers": peers,
        "processes": processes,
        "parked": len(ids) - len(totals["lost"]),
        "parked_seconds": round(parked_seconds, 3),
        "message_bytes": size,
        "delivery_latency": latency_summary(latencies),
        "errors": len(errors) + len(lost),
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


def _comparison(result: dict) -> list[str]:
    """A relay-compare result: one row per target, and each as a ratio of the baseline's."""
    lines = ["relay, %d pairs, %d-byte messages, median of %d round(s):"
             % (result["pairs"], result["message_bytes"], result["rounds"]),
             "%-24s %10s %9s %9s %18s %16s" % (
                 "", "msgs/s", "p50 ms", "p99 ms", "server CPU us/msg", "extra CPU us/msg")]
    for label, row in result["summary"].items():
        lines.append("%-24s %10s %9s %9s %18s %16s" % (
            label, row["messages_per_second"], row["p50_ms"], row["p99_ms"],
            row["server_cpu_us_per_message"],
            "-" if row["extra_cpu_us_per_message"] is None else row["extra_cpu_us_per_message"]))
    baseline = result.get("baseline")
    base = result["summary"].get(baseline)
    for label, row in result["summary"].items():
        if label == baseline or not base:
            continue
        ratios = []
        if row.get("ratio_to_baseline") is not None:
            ratios.append("%.2fx its msgs/s (rounds: %s)" % (
                row["ratio_to_baseline"], ", ".join("%.2f" % r for r in row["ratios_to_baseline"])))
        if row["server_cpu_us_per_message"] and base["server_cpu_us_per_message"]:
            ratios.append("%.2fx its CPU per message" % (
                row["server_cpu_us_per_message"] / base["server_cpu_us_per_message"],))
        if ratios:
            lines.append("%s against %s: %s" % (label, baseline, ", ".join(ratios)))
    return lines


def summary(result: dict) -> str:
    """The result as a few human-readable lines."""
    scenario = result["scenario"]
    lines = []
    if scenario in hostile.SCENARIOS:
        lines.extend(hostile.summary(result))
    elif scenario == "relay":
        latency = result["latency"]
        lines.append(
            "relay (%s): %d pairs, %d messages in %.2fs = %.1f msgs/s"
            % (result.get("transport", "http"), result["pairs"], result["messages"], result["seconds"],
               result["messages_per_second"])
        )
        lines.append(_latency_line("one-way latency", latency))
        if "delivery" in result:
            delivery = result["delivery"]
            lines.append(
                "delivery: %d sent, %d received, %d lost, %d duplicated, %d out of order; "
                "%d waits abandoned"
                % (delivery["sent"], delivery["received"], delivery["lost"],
                   delivery["duplicated"], delivery["out_of_order"], delivery["abandoned_waits"])
            )
        if result.get("server_cpu_us_per_message") is not None:
            lines.append("server CPU per relayed message: %s us"
                         % (result["server_cpu_us_per_message"],))
    elif scenario == "relay-compare":
        lines.extend(_comparison(result))
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
        lines.append(_latency_line("delivery latency", latency))
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
        if "extra_cpu_seconds" in result:
            cpu += ", --extra-pid CPU: %.2fs" % (result["extra_cpu_seconds"],)
        lines.append(cpu)
    if scenario == "relay" and "server_rss_mib" in result:
        lines.append("server RSS: %s MiB" % (result["server_rss_mib"],))
    if scenario == "storm" and "server_peak_rss_mib" in result:
        lines.append("server peak RSS: %s MiB" % (result["server_peak_rss_mib"],))
    return "\n".join(lines)


def _latency_line(what: str, latency: dict) -> str:
    if not latency["count"]:
        return "%s: none measured (no message was delivered)" % (what,)
    return "%s: p50 %s ms, p99 %s ms, max %s ms" % (what, latency["p50_ms"], latency["p99_ms"], latency["max_ms"])


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
    parser.add_argument("url", type=base_url, help="base URL of the signaling server, e.g. http://127.0.0.1:8888")
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
        "--extra-pid",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="pid of another process that serves (redis-server, a second instance; repeatable): "
        "relay and storm report their CPU time added up",
    )
    common.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the benchmark itself (default auto: uvloop if installed, else asyncio)",
    )
    # Storm and hold park their peers in worker processes.
    crowd_options = argparse.ArgumentParser(add_help=False)
    crowd_options.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="worker processes holding the parked peers (default 1); more use more cores",
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    relay_parser = scenarios.add_parser(
        "relay",
        parents=[common],
        help="P pairs ping-pong messages: msgs/s relayed, one-way latency p50/p99"
    )
    relay_parser.add_argument("--pairs", type=positive_int, default=8, help="peer pairs (default 8)")
    how_long = relay_parser.add_mutually_exclusive_group()
    how_long.add_argument("--seconds", type=positive_float, default=10.0, help="run this long (default 10)")
    how_long.add_argument("--messages", type=positive_int, help="relay this many messages in all, then stop")
    relay_parser.add_argument("--size", type=positive_int, default=200, help="message bytes (default 200, an ICE candidate's size)")
    relay_parser.add_argument("--timeout", type=positive_float, default=30.0, help="give up waiting for a message after this many seconds (default 30); a pair stops after three in a row")
    relay_parser.add_argument(
        "--abandon",
        type=fraction,
        default=0.0,
        metavar="FRACTION",
        help="abandon this fraction of the waits (0..1, default 0), as clients killed mid-wait "
        "do: each on its own connection, reset after --abandon-after without reading the "
        "answer, then the next /wait goes out. Whatever the server does, every message must "
        "still arrive once and in order",
    )
    relay_parser.add_argument("--abandon-after", type=positive_float, default=0.005, metavar="SECONDS", help="seconds from sending an abandoned /wait to resetting its connection (default 0.005)")
    relay_parser.add_argument("--seed", type=int, help="random seed for choosing the waits to abandon")
    relay_parser.add_argument(
        "--second-url",
        metavar="URL",
        help="a second server (another instance on the same Redis): each pair has a peer on "
        "each, so every message crosses from one to the other",
    )
    relay_parser.add_argument(
        "--transport", choices=("http", "ws"), action="append",
        help="hanging GETs (http, the default) or pcsignal's WebSocket (ws); given twice, "
             "both in one run")
    relay_parser.add_argument(
        "--peerjs", metavar="URL",
        help="also relay through a PeerJS server (npm peer) at this URL, e.g. "
             "http://127.0.0.1:9000 (its --path), in the same run")
    relay_parser.add_argument("--peerjs-pid", type=int, metavar="PID",
                              help="pid of that PeerJS server: report its CPU time")
    relay_parser.add_argument(
        "--baseline", metavar="URL", type=base_url,
        help="also relay through this server in the same run, rounds alternating, and "
             "report URL's msgs/s as a ratio of its (e.g. URL on Redis, the baseline in "
             "memory)")
    relay_parser.add_argument("--baseline-pid", type=int, metavar="PID",
                              help="pid of the baseline server: report its CPU time")
    relay_parser.add_argument(
        "--rounds", type=positive_int, default=1,
        help="with several targets (--baseline, --peerjs, two --transport): run them in "
             "turn this many times, report the medians (default 1)")

    storm_parser = scenarios.add_parser(
        "storm",
        parents=[common, crowd_options],
        help="N peers sign in one after another until every peer knows every other: seconds, pushes/s",
    )
    storm_parser.add_argument("--peers", type=positive_int, default=1000, help="peers (default 1000)")
    storm_parser.add_argument("--timeout", type=positive_float, default=180.0, help="give up after this many seconds (default 180)")
    storm_parser.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=40.0,
        help="give up when no notification arrived for this many seconds (default 40, above the 30 s liveness timeout)",
    )

    hold_parser = scenarios.add_parser(
        "hold",
        parents=[common, crowd_options],
        help="N peers parked: server RSS (--server-pid), delivery latency to random peers"
    )
    hold_parser.add_argument("--peers", type=positive_int, default=1000, help="parked peers (default 1000)")
    hold_parser.add_argument("--messages", type=positive_int, default=1000, help="messages to random parked peers (default 1000)")
    hold_parser.add_argument("--size", type=positive_int, default=200, help="message bytes (default 200)")
    hold_parser.add_argument("--timeout", type=positive_float, default=180.0, help="give up parking or delivering after this many seconds (default 180)")
    hold_parser.add_argument("--seed", type=int, help="random seed for picking receivers")
    hostile.add_parsers(scenarios, common)  # fuzz, churn, soak
    return parser


def base_url(text: str) -> str:
    """The URL argument: http:// or https://, with a hint for a bare host:port."""
    if text.startswith(("http://", "https://")):
        return text.rstrip("/")
    if "://" in text:
        raise argparse.ArgumentTypeError("%r: only http:// and https:// URLs" % (text,))
    raise argparse.ArgumentTypeError("%r is not a URL: did you mean http://%s ?" % (text, text))


async def unreachable(url: str, timeout: float = 10.0) -> Optional[str]:
    """Why nothing answers HTTP at url (any answer will do), or None."""
    try:
        async with new_session() as session:
            async with session.get(url + "/", timeout=aiohttp.ClientTimeout(total=timeout)) as answer:
                await answer.read()
    except asyncio.TimeoutError:
        return "no answer within %g s" % (timeout,)
    except aiohttp.ClientConnectorError as e:
        error = e.os_error
        return os.strerror(error.errno) if error.errno else describe(error)
    except (aiohttp.ClientError, OSError) as e:
        return describe(e)
    return None


async def run(args: argparse.Namespace, loop: str) -> dict:
    for url in filter(None, [args.url, getattr(args, "baseline", None)]):
        problem = await unreachable(url)
        if problem is not None:
            raise SystemExit("pcsignal-bench: cannot reach %s: %s" % (url, problem))
    server = ProcessStats(args.server_pid) if args.server_pid else None
    extras = CpuMeter([ProcessStats(pid) for pid in args.extra_pid]) if args.extra_pid else None
    if args.scenario in hostile.SCENARIOS:
        return await hostile.run(args, server)
    if args.scenario == "relay":
        transports = args.transport or ["http"]
        relay_args = dict(pairs=args.pairs, seconds=args.seconds, messages=args.messages,
                          size=args.size, timeout=args.timeout, abandon=args.abandon,
                          abandon_after=args.abandon_after, seed=args.seed)
        if len(transports) == 1 and not (args.peerjs or args.baseline):
            return await relay(args.url, server=server, transport=transports[0],
                               second_url=args.second_url, extras=extras, **relay_args)
        if args.baseline:
            baseline = ProcessStats(args.baseline_pid) if args.baseline_pid else None
            targets = [Target(args.url, args.url, transports[0], server, extras),
                       Target(args.baseline, args.baseline, transports[0], baseline)]
            return await compare(targets, args.rounds, baseline=args.baseline, **relay_args)
        targets = [Target("pcsignal-" + t, args.url, t, server, extras)
                   for t in dict.fromkeys(transports)]
        if args.peerjs:
            peerjs = ProcessStats(args.peerjs_pid) if args.peerjs_pid else None
            targets.append(Target("peerjs", args.peerjs, "peerjs", peerjs))
        return await compare(targets, args.rounds, baseline="peerjs" if args.peerjs else None,
                             **relay_args)
    if args.scenario == "storm":
        return await storm(
            args.url, args.peers, args.timeout, args.idle_timeout, args.processes, loop, server,
            extras,
        )
    return await hold(
        args.url, args.peers, args.messages, args.size, args.timeout, args.processes, loop,
        server, args.seed,
    )


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scenario == "relay":
        transports = set(args.transport or ())
        if args.baseline == args.url:
            parser.error("--baseline is URL itself: give another server")
        if args.baseline and (args.peerjs or len(transports) > 1):
            parser.error("--baseline compares two servers on one transport: "
                         "not with --peerjs or two --transport")
        if args.second_url and (args.baseline or args.peerjs or len(transports) > 1):
            parser.error("--second-url is for a single relay: "
                         "not with --baseline, --peerjs or two --transport")
    pids = [args.server_pid, getattr(args, "peerjs_pid", None), getattr(args, "baseline_pid", None)]
    for pid in filter(None, pids + args.extra_pid):
        if not psutil.pid_exists(pid):
            print("pcsignal-bench: no process %d on this machine" % (pid,), file=sys.stderr)
            return 2
    raise_fd_limit()
    loop_name, run_loop = event_loop_runner(args.loop)
    result = run_loop(run(args, loop_name))
    result["client"] = {
        "event_loop": loop_name,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
    }
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(summary(result))
    return 0 if succeeded(result) else 1


def succeeded(result: dict) -> bool:
    """No errors, no peer timed out, and a storm that completed."""
    if result["errors"] or result.get("timed_out_peers"):
        return False
    return result.get("complete", True)


if __name__ == "__main__":
    sys.exit(main())
