"""
Hostile and long-running load for pcsignal-bench: ``fuzz``, ``churn`` and
``soak``.

- ``fuzz``: seeded mutated HTTP requests, each on its own connection (sent,
  our side shut, the answer read until the server closes); counts answers
  by status and checks between batches that the server still answers
  ``/healthz``.  Exit status 1 if it stops answering.
- ``churn``: relay among P pairs undisturbed, then again while one client
  signs in and out as fast as it can (in its own process, from its own
  source address, so that the server's per-address sign-in limit sees it
  apart from the relaying peers); both rates in one run.
- ``soak``: relay, plus silent clients (connect, send nothing), slow
  clients (a header byte a second), a sign-in/out churn and a trickle of
  fuzz, for ``--duration`` seconds; the server's RSS sampled with psutil
  (``--server-pid``).

Everything is bounded in count and time, speaks only HTTP, and works
against any server at a URL; the per-address parts assume a loopback
server (``127.0.0.2`` and ``127.0.0.3`` are this machine's too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from typing import Optional
from urllib.parse import urlsplit

import aiohttp
import psutil

import pcsignal
from pcsignal.bench.peers import FAILURES, describe
from pcsignal.options import non_negative_float, positive_float, positive_int

SCENARIOS = ("fuzz", "churn", "soak")
CHURN_SOURCE = "127.0.0.2"
FUZZ_SOURCE = "127.0.0.3"


# -- mutated requests --------------------------------------------------------------

TEMPLATES = [
    b"GET /sign_in?alice HTTP/1.0\r\n\r\n",
    b"GET /sign_in?bob%20smith HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /sign_in?carol HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET /wait?peer_id=1 HTTP/1.0\r\n\r\n",
    b"GET /sign_out?peer_id=2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /message?peer_id=1&to=2 HTTP/1.0\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    b"POST /message?peer_id=3&to=3 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 26\r\n\r\n{\"type\": \"offer\", \"sdp\": 1}",
    b"POST /message?peer_id=1&to=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"OPTIONS /message HTTP/1.1\r\nHost: x\r\nOrigin: http://example.org\r\n"
    b"Access-Control-Request-Method: POST\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n",
    b"GET /app.js HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n",
    b"HEAD /style.css HTTP/1.0\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /index.html HTTP/1.1\r\nHost: x\r\nRange: bytes=0-10\r\n\r\n",
]
TOKENS = [
    b"%00", b"%zz", b"%", b"%f", b"%ff", b"%c3%28", b"\xff", b"\xc3\x28", b"\x00", b"\r\n",
    b"\n", b"\r", b" ", b"\t", b":", b"?", b"&", b"=", b"/", b"..", b"%2e%2e%2f", b"%2f",
    b"\r\n\r\n", b"HTTP/1.1", b"HTTP/0.9", b"Content-Length: ", b"Transfer-Encoding: chunked",
    b"Expect: 100-continue", b"Connection: keep-alive", b"-1", b"0", b"2147483648",
    b"99999999999999999999", b"\xe2\x80\xae", b"\xf0\x9f\x98\x80", b"<img src=x onerror=alert(1)>",
]
RUN_LENGTHS = [64, 600, 5000, 9000, 17000]


def mutated_request(rng: random.Random) -> bytes:
    """A valid request from TEMPLATES with 1 to 4 random mutations."""
    data = bytearray(rng.choice(TEMPLATES))
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a bit
            at = min(at, len(data) - 1)
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:  # replace a byte
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind in (2, 3):  # insert a token that parsers trip on
            data[at:at] = rng.choice(TOKENS)
        elif kind == 4:  # insert a long run
            data[at:at] = bytes([rng.choice(b"Aa%/ \r\n0")]) * rng.choice(RUN_LENGTHS)
        elif kind == 5:  # delete a range
            del data[at:at + rng.randint(1, 16)]
        elif kind == 6 and data:  # duplicate a range
            end = min(len(data), at + rng.randint(1, 64))
            data[at:at] = data[at:end]
        else:  # cut short, or splice another template on
            if rng.random() < 0.5:
                del data[at:]
            else:
                data[at:] = rng.choice(TEMPLATES)
    return bytes(data)


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port or 80


def loopback_source(url: str, source: str) -> Optional[str]:
    """A separate source address for a hostile client, where the server is on loopback."""
    return source if address(url)[0].startswith("127.") else None


async def exchange(host: str, port: int, data: bytes, timeout: float,
                   source: Optional[str] = None) -> Optional[bytes]:
    """
    Send data on a new connection, shut our side, read until the server
    closes: what it sent (b"" for a close without an answer), or None if it
    did neither within timeout.
    """
    try:
        return await asyncio.wait_for(_exchange(host, port, data, source), timeout)
    except asyncio.TimeoutError:
        return None


async def _exchange(host, port, data, source) -> bytes:
    local = (source, 0) if source else None
    try:
        reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    except OSError as e:
        raise ConnectionRefusedError(str(e)) from e
    received = []
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            received.append(chunk)
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server hung up on garbage: that counts as a close
    finally:
        writer.close()
    return b"".join(received)


def status_of(answer: Optional[bytes]) -> str:
    """The status code of the first answer, or what happened instead."""
    if answer is None:
        return "timeout"
    if not answer:
        return "closed"
    line = answer.split(b"\r\n", 1)[0].split(b" ")
    if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit():
        return line[1].decode("ascii")
    return "garbled"


async def healthy(host: str, port: int, timeout: float = 10.0) -> bool:
    """The server answers GET /healthz with 200 (twice tried)."""
    for _ in range(2):
        try:
            answer = await exchange(host, port, b"GET /healthz HTTP/1.0\r\n\r\n", timeout)
        except ConnectionRefusedError:
            answer = None
        if status_of(answer) == "200":
            return True
    return False


def rss_mib(pid: Optional[int]) -> Optional[float]:
    if pid is None:
        return None
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


# -- fuzz --------------------------------------------------------------------------


async def fuzz(url: str, requests: int, seed: int, concurrency: int, timeout: float,
               check_every: int, source: Optional[str], server_pid: Optional[int]) -> dict:
    host, port = address(url)
    statuses: Counter = Counter()
    errors: list[str] = []
    sent = 0
    rss_before = rss_mib(server_pid)

    async def one(index: int) -> None:
        request = mutated_request(random.Random("%d-%d" % (seed, index)))
        try:
            answer = await exchange(host, port, request, timeout, source)
        except ConnectionRefusedError as e:
            statuses["refused"] += 1
            errors.append("request %d: connection refused: %s" % (index, e))
            return
        statuses[status_of(answer)] += 1

    started = time.monotonic()
    answering = True
    while sent < requests and answering:
        batch = range(sent, min(requests, sent + check_every))
        limit = asyncio.Semaphore(concurrency)

        async def limited(index):
            async with limit:
                await one(index)

        await asyncio.gather(*(limited(i) for i in batch))
        sent = batch.stop
        answering = await healthy(host, port, timeout)
        if not answering:
            errors.append("the server stopped answering /healthz after %d requests" % (sent,))
    elapsed = time.monotonic() - started
    if statuses["timeout"]:
        errors.append("%d requests neither answered nor closed within %gs"
                      % (statuses["timeout"], timeout))
    result = {
        "scenario": "fuzz",
        "url": url,
        "seed": seed,
        "requests": sent,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "answers": dict(sorted(statuses.items())),
        "server_answering": answering,
        "errors": len(errors),
        "error_samples": errors[:10],
    }
    if server_pid is not None:
        result["server_rss_mib"] = {"before": rss_before, "after": rss_mib(server_pid)}
    return result


# -- churn -------------------------------------------------------------------------


async def sign_in_and_out(session: aiohttp.ClientSession, base: str, name: str,
                          statuses: Counter) -> bool:
    """Sign in, and out again if that worked; count the answers by request and status."""
    async with session.get(base + "/sign_in?" + name) as response:
        await response.read()
        statuses["sign_in %d" % (response.status,)] += 1
        peer_id = response.headers.get("Pragma") if response.status == 200 else None
    if peer_id is None:
        return False
    async with session.get(base + "/sign_out?peer_id=" + peer_id) as response:
        await response.read()
        statuses["sign_out %d" % (response.status,)] += 1
    return True


async def churner(url: str, seconds: float, source: Optional[str]) -> dict:
    """
    One client: sign in, sign out, again, as fast as it can (429s and all),
    for seconds or until its standard input closes.
    """
    base = url.rstrip("/")
    statuses: Counter = Counter()
    errors: list[str] = []
    cycles = 0
    stopped = asyncio.Event()
    stdin = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    watching = asyncio.ensure_future(stdin.read())
    watching.add_done_callback(lambda _: stopped.set())
    connector = aiohttp.TCPConnector(limit=1, local_addr=(source, 0) if source else None)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at and not stopped.is_set():
            try:
                cycles += await sign_in_and_out(session, base, "churner", statuses)
            except FAILURES as e:
                errors.append(describe(e))
                await asyncio.sleep(0.1)
    watching.cancel()
    return {"scenario": "churner", "cycles": cycles, "answers": dict(statuses),
            "errors": len(errors), "error_samples": errors[:10]}


def _child_env() -> dict:
    env = dict(os.environ)
    # The child imports this very checkout or installation.
    root = os.path.dirname(os.path.dirname(os.path.abspath(pcsignal.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def start_churner(url: str, seconds: float, source: Optional[str]):
    # Not a scenario users see: started by churn itself (see the end of this module).
    argv = [sys.executable, "-m", "pcsignal.bench.hostile", url, str(seconds), source or ""]
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=_child_env())


async def churner_result(process) -> dict:
    """Stop the churner (close its input) and read its result."""
    out, _ = await process.communicate(b"")
    try:
        return json.loads(out)
    except ValueError:
        return {"cycles": 0, "answers": {}, "errors": 1,
                "error_samples": ["churner exited %s" % (process.returncode,)]}


async def churn(url: str, pairs: int, seconds: float, size: int, timeout: float,
                source: Optional[str], server=None) -> dict:
    """Relay undisturbed, then relay while a churner runs; msgs/s of both."""
    from pcsignal.bench.signaling import relay  # the relay scenario, run twice

    quiet = await relay(url, pairs, seconds, None, size, timeout, server)
    # The churner runs through the second relay's sign-ins and volleys.
    process = await start_churner(url, seconds + 2 * timeout, source)
    try:
        disturbed = await relay(url, pairs, seconds, None, size, timeout, server)
    finally:
        churned = await churner_result(process)
    ratio = (disturbed["messages_per_second"] / quiet["messages_per_second"]
             if quiet["messages_per_second"] else 0.0)
    errors = (quiet["error_samples"] + disturbed["error_samples"]
              + ["churner: " + e for e in churned["error_samples"]])
    return {
        "scenario": "churn",
        "url": url,
        "pairs": pairs,
        "undisturbed": quiet,
        "with_churner": disturbed,
        "ratio": round(ratio, 3),
        "churner": churned,
        "errors": quiet["errors"] + disturbed["errors"] + churned["errors"],
        "error_samples": errors[:10],
    }


# -- soak --------------------------------------------------------------------------


class _Lifetimes:
    """How long the server let connections live before it closed them."""

    def __init__(self):
        self.seconds: list[float] = []

    def summary(self) -> dict:
        ordered = sorted(self.seconds)
        return {
            "closed_by_server": len(ordered),
            "p50_s": round(ordered[len(ordered) // 2], 2) if ordered else None,
            "max_s": round(ordered[-1], 2) if ordered else None,
        }


async def _silent_client(host, port, stop_at, lifetimes: _Lifetimes, dribble: Optional[float]):
    """Connect and send nothing (or a request head one byte per ``dribble`` s) until cut."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: 1\r\n" * 1000
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        opened = time.monotonic()
        closed = False
        try:
            sent = 0
            while time.monotonic() < stop_at:
                try:
                    data = await asyncio.wait_for(reader.read(1024), dribble or 1.0)
                except asyncio.TimeoutError:
                    if writer.is_closing():
                        closed = True
                        break
                    if dribble:
                        writer.write(head[sent:sent + 1])
                        sent += 1
                    continue
                if not data:
                    closed = True
                    break
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        finally:
            writer.close()
        if closed:
            lifetimes.seconds.append(time.monotonic() - opened)


async def _churn_slowly(url, stop_at, rate, source, statuses: Counter):
    connector = aiohttp.TCPConnector(limit=1, local_addr=(source, 0) if source else None)
    base = url.rstrip("/")
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                await sign_in_and_out(session, base, "soak-churn", statuses)
            except FAILURES:
                statuses["failed"] += 1
            await asyncio.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))


async def _fuzz_slowly(host, port, stop_at, rate, seed, source, statuses: Counter):
    index = 0
    while time.monotonic() < stop_at:
        started = time.monotonic()
        request = mutated_request(random.Random("%d-%d" % (seed, index)))
        index += 1
        try:
            statuses[status_of(await exchange(host, port, request, 30.0, source))] += 1
        except ConnectionRefusedError:
            statuses["refused"] += 1
        await asyncio.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))


async def soak(url: str, duration: float, pairs: int, silent: int, slow: int, churn_rate: float,
               fuzz_rate: float, sample: float, seed: int, server=None,
               server_pid: Optional[int] = None) -> dict:
    """Mixed load for duration seconds, the server's RSS sampled throughout."""
    from pcsignal.bench.signaling import relay

    host, port = address(url)
    stop_at = time.monotonic() + duration
    silent_lives, slow_lives = _Lifetimes(), _Lifetimes()
    churned: Counter = Counter()
    fuzzed: Counter = Counter()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()

    async def sample_rss():
        while time.monotonic() < stop_at:
            samples.append((round(time.monotonic() - started, 1), rss_mib(server_pid)))
            await asyncio.sleep(sample)

    others = [asyncio.ensure_future(c) for c in (
        [_silent_client(host, port, stop_at, silent_lives, None) for _ in range(silent)]
        + [_silent_client(host, port, stop_at, slow_lives, 1.0) for _ in range(slow)]
        + ([_churn_slowly(url, stop_at, churn_rate, loopback_source(url, CHURN_SOURCE), churned)]
           if churn_rate else [])
        + ([_fuzz_slowly(host, port, stop_at, fuzz_rate, seed, loopback_source(url, FUZZ_SOURCE),
                         fuzzed)] if fuzz_rate else [])
        + ([sample_rss()] if server_pid is not None else [])
    )]
    relayed = await relay(url, pairs, duration, None, 200, 30.0, server)
    await asyncio.gather(*others)
    errors = list(relayed["error_samples"])
    answering = await healthy(host, port)
    if not answering:
        errors.append("the server stopped answering /healthz")
    result = {
        "scenario": "soak",
        "url": url,
        "duration": duration,
        "relay": {key: relayed[key] for key in ("pairs", "messages", "messages_per_second",
                                                "latency", "errors")},
        "silent_clients": dict(silent_lives.summary(), clients=silent),
        "slow_clients": dict(slow_lives.summary(), clients=slow),
        "churn": dict(churned),
        "fuzz": dict(sorted(fuzzed.items())),
        "server_answering": answering,
        "errors": relayed["errors"] + (0 if answering else 1),
        "error_samples": errors[:10],
    }
    if samples:
        rss = [mib for _, mib in samples]
        # The first fifth warms up (imports, first connections): compare after it.
        settled = rss[len(rss) // 5:] or rss
        result["server_rss_mib"] = {
            "first": rss[0], "max": max(rss), "last": rss[-1],
            "settled_min": min(settled), "settled_max": max(settled),
            "series": samples[:: max(1, len(samples) // 20)],
        }
    return result


# -- command line ------------------------------------------------------------------


def add_parsers(scenarios, common: argparse.ArgumentParser) -> None:
    fuzz_parser = scenarios.add_parser(
        "fuzz", parents=[common],
        help="seeded mutated requests, one connection each: answers by status; "
             "exit 1 if the server stops answering")
    fuzz_parser.add_argument("--requests", type=positive_int, default=10000,
                             help="mutated requests in all (default 10000)")
    fuzz_parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    fuzz_parser.add_argument("--concurrency", type=positive_int, default=16,
                             help="connections at once (default 16)")
    fuzz_parser.add_argument("--timeout", type=positive_float, default=15.0,
                             help="seconds for the server to answer or close (default 15)")
    fuzz_parser.add_argument("--check-every", type=positive_int, default=1000,
                             help="check /healthz after every this many requests (default 1000)")
    fuzz_parser.add_argument("--source-address", default=None,
                             help="local address to send from (default %s for a loopback "
                                  "server: its own sign-in rate limit)" % (FUZZ_SOURCE,))

    churn_parser = scenarios.add_parser(
        "churn", parents=[common],
        help="relay msgs/s undisturbed, then while one client signs in and out as fast as it can")
    churn_parser.add_argument("--pairs", type=positive_int, default=4, help="peer pairs (default 4)")
    churn_parser.add_argument("--seconds", type=positive_float, default=10.0,
                              help="seconds of each relay phase (default 10)")
    churn_parser.add_argument("--size", type=positive_int, default=200,
                              help="message bytes (default 200)")
    churn_parser.add_argument("--timeout", type=positive_float, default=30.0,
                              help="give up on a message after this many seconds (default 30)")
    churn_parser.add_argument("--source-address", default=None,
                              help="the churner's local address (default %s for a loopback "
                                   "server)" % (CHURN_SOURCE,))

    soak_parser = scenarios.add_parser(
        "soak", parents=[common],
        help="relay plus silent, slow, churning and fuzzing clients for --duration seconds; "
             "server RSS over time (--server-pid)")
    soak_parser.add_argument("--duration", type=positive_float, default=60.0,
                             help="seconds (default 60)")
    soak_parser.add_argument("--pairs", type=positive_int, default=4,
                             help="relaying peer pairs (default 4)")
    soak_parser.add_argument("--silent", type=int, default=50,
                             help="clients that connect and send nothing (default 50)")
    soak_parser.add_argument("--slow", type=int, default=20,
                             help="clients that send a request head a byte a second (default 20)")
    soak_parser.add_argument("--churn-rate", type=non_negative_float, default=5.0,
                             help="sign-in/sign-out cycles a second (default 5)")
    soak_parser.add_argument("--fuzz-rate", type=non_negative_float, default=20.0,
                             help="mutated requests a second (default 20)")
    soak_parser.add_argument("--sample", type=positive_float, default=1.0,
                             help="seconds between RSS samples (default 1)")
    soak_parser.add_argument("--seed", type=int, default=1, help="fuzz seed (default 1)")



async def run(args: argparse.Namespace, server) -> dict:
    if args.scenario == "fuzz":
        source = args.source_address or loopback_source(args.url, FUZZ_SOURCE)
        return await fuzz(args.url, args.requests, args.seed, args.concurrency, args.timeout,
                          args.check_every, source, args.server_pid)
    if args.scenario == "churn":
        source = args.source_address or loopback_source(args.url, CHURN_SOURCE)
        return await churn(args.url, args.pairs, args.seconds, args.size, args.timeout, source,
                           server)
    return await soak(args.url, args.duration, args.pairs, args.silent, args.slow,
                      args.churn_rate, args.fuzz_rate, args.sample, args.seed, server,
                      args.server_pid)


def summary(result: dict) -> list[str]:
    """The result as a few human-readable lines (errors are added by the caller)."""
    scenario = result["scenario"]
    if scenario == "fuzz":
        answers = ", ".join("%s: %d" % item for item in result["answers"].items())
        lines = [
            "fuzz: %d mutated requests (seed %d) in %.2fs = %.1f/s"
            % (result["requests"], result["seed"], result["seconds"],
               result["requests_per_second"]),
            "answers: " + answers,
            "server still answering: %s" % ("yes" if result["server_answering"] else "NO"),
        ]
        if "server_rss_mib" in result:
            lines.append("server RSS: %(before)s MiB before, %(after)s MiB after"
                         % result["server_rss_mib"])
        return lines
    if scenario == "churn":
        quiet, disturbed, churned = result["undisturbed"], result["with_churner"], result["churner"]
        return [
            "churn: %d pairs relay %.1f msgs/s undisturbed, %.1f msgs/s with the churner (%.0f %%)"
            % (result["pairs"], quiet["messages_per_second"], disturbed["messages_per_second"],
               100 * result["ratio"]),
            "churner: %d sign-in/out cycles; answers %s" % (
                churned["cycles"], ", ".join("%s: %d" % i for i in sorted(churned["answers"].items()))),
        ]
    lines = [
        "soak: %gs; relay %d pairs, %.1f msgs/s, %d errors"
        % (result["duration"], result["relay"]["pairs"], result["relay"]["messages_per_second"],
           result["relay"]["errors"]),
    ]
    for kind in ("silent_clients", "slow_clients"):
        lives = result[kind]
        lines.append("%s: %d, closed by the server %d times, after p50 %s s, max %s s"
                     % (kind.replace("_", " "), lives["clients"], lives["closed_by_server"],
                        lives["p50_s"], lives["max_s"]))
    lines.append("churn: " + ", ".join("%s: %d" % i for i in sorted(result["churn"].items())))
    lines.append("fuzz: " + ", ".join("%s: %d" % i for i in result["fuzz"].items()))
    if "server_rss_mib" in result:
        lines.append("server RSS: %(first)s MiB first, settled %(settled_min)s-%(settled_max)s "
                     "MiB, %(last)s MiB last" % result["server_rss_mib"])
    lines.append("server still answering: %s" % ("yes" if result["server_answering"] else "NO"))
    return lines


if __name__ == "__main__":
    # The churner of the churn scenario: URL SECONDS SOURCE; prints its result as JSON.
    url, seconds, source = sys.argv[1:4]
    print(json.dumps(asyncio.run(churner(url, float(seconds), source or None))))
