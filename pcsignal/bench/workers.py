"""
Parked peers in worker processes, for the storm and hold scenarios.

A thousand peers each re-issuing /wait after every notification is half a
million HTTP exchanges: more than one Python process can drive as fast as
the server answers.  So the coordinator (pcsignal-bench itself) signs every
peer in -- one after another, as a real crowd arriving would -- and hands
each signed-in peer at once to one of K worker processes, which parks its
/wait, keeps it parked, and tracks what it learns.

Coordinator and workers speak JSON lines over the workers' stdin/stdout:

- to a worker: ``park`` (name, id, ids in its sign-in list), ``track``
  (every signed-in id: report when all your peers know them all),
  ``finish`` (sign your peers out, report, exit);
- from a worker: ``progress`` (pushes, peers still incomplete, lost),
  ``delivered`` (a message reached a peer: its one-way latency), and a
  final ``result``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import pcsignal
from pcsignal.bench.peers import BenchPeer, Crowd, new_session, sent_at

PROGRESS_INTERVAL = 0.25
FINISH_TIMEOUT = 60.0


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- worker process ----------------------------------------------------------------


def _emit(**message) -> None:
    try:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # the coordinator is gone; the peers are still signed out


async def serve(url: str) -> None:
    """A worker's life: obey the coordinator's lines on stdin until finish."""
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)

    def delivered(peer, sender_id, body, received):
        _emit(op="delivered", to=peer.peer_id, sender=sender_id, latency=received - sent_at(body))

    async with new_session() as session:
        crowd = Crowd(session, url, "")
        reporting: Optional[asyncio.Task] = None
        while True:
            line = await commands.readline()
            if not line:
                break  # the coordinator is gone: clean up all the same
            command = json.loads(line)
            if command["op"] == "park":
                peer = crowd.add(command["name"])
                peer.adopt(command["id"], command["known"])
                peer.on_message = delivered
                crowd.park(peer)
            elif command["op"] == "track":
                crowd.track(command["ids"])
                reporting = asyncio.ensure_future(_report_progress(crowd))
            elif command["op"] == "finish":
                break
        if reporting is not None:
            reporting.cancel()
        _emit_progress(crowd)
        failures = await crowd.sign_out_all()
        _emit(
            op="result",
            lost=crowd.lost,
            dropped=sorted(crowd.dropped_ids),
            errors=failures,
            cpu=own_cpu_seconds(),
        )


def _emit_progress(crowd: Crowd) -> None:
    _emit(
        op="progress",
        pushes=crowd.pushes,
        incomplete=crowd.incomplete(),
        lost=len(crowd.lost),
        last_push=crowd.last_push,
    )


async def _report_progress(crowd: Crowd) -> None:
    """Every PROGRESS_INTERVAL, and at once when all our peers know everyone."""
    while True:
        complete = await crowd.until_complete(PROGRESS_INTERVAL)
        _emit_progress(crowd)
        if complete:
            return


# -- coordinator side ------------------------------------------------------------


@dataclass
class _Worker:
    process: asyncio.subprocess.Process
    pushes: int = 0
    incomplete: Optional[int] = None  # unknown until it reports after track
    lost: int = 0
    last_push: float = field(default_factory=time.monotonic)
    result: Optional[dict] = None
    reading: Optional[asyncio.Task] = None

    def send(self, **command) -> None:
        self.process.stdin.write(json.dumps(command).encode("ascii") + b"\n")


class WorkerPool:
    """
    K worker processes holding parked peers; the i-th peer handed over
    goes to worker i mod K.  ``on_delivered(to_id, sender_id, latency)``
    is called for every message a parked peer receives.
    """

    def __init__(self, url: str, count: int, loop: str):
        self.url = url
        self.count = count
        self.loop = loop
        self.on_delivered: Callable[[int, int, float], None] = lambda *args: None
        self._workers: list[_Worker] = []
        self._handed = 0
        self._changed = asyncio.Event()
        self._tracking = False

    async def start(self) -> None:
        env = dict(os.environ)
        # The workers import this very checkout or installation.
        root = os.path.dirname(os.path.dirname(os.path.abspath(pcsignal.__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        for _ in range(self.count):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pcsignal.bench.workers", self.url, self.loop,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                limit=2**24,
            )
            worker = _Worker(process)
            worker.reading = asyncio.ensure_future(self._read(worker))
            self._workers.append(worker)

    async def _read(self, worker: _Worker) -> None:
        while True:
            line = await worker.process.stdout.readline()
            if not line:
                break
            message = json.loads(line)
            if message["op"] == "delivered":
                self.on_delivered(message["to"], message["sender"], message["latency"])
                continue
            if message["op"] == "progress":
                worker.pushes = message["pushes"]
                worker.lost = message["lost"]
                worker.last_push = message["last_push"]
                if self._tracking:
                    worker.incomplete = message["incomplete"]
            elif message["op"] == "result":
                worker.result = message
            self._changed.set()
        self._changed.set()

    def park(self, peer: BenchPeer) -> None:
        """Hand a freshly signed-in peer to the next worker, which parks it."""
        worker = self._workers[self._handed % self.count]
        self._handed += 1
        worker.send(op="park", name=peer.name, id=peer.peer_id, known=sorted(peer.known))

    @property
    def pushes(self) -> int:
        return sum(w.pushes for w in self._workers)

    def incomplete(self) -> int:
        return sum(w.incomplete or 0 for w in self._workers)

    async def until_everyone_knows_everyone(
        self, ids: list[int], timeout: float, idle_timeout: float
    ) -> bool:
        """
        True once every parked peer knows every id; False at the deadline or
        when no worker saw a notification for idle_timeout seconds.
        """
        self._tracking = True
        for worker in self._workers:
            worker.send(op="track", ids=ids)
        deadline = time.monotonic() + timeout
        idle_from = time.monotonic()
        while True:
            if all(w.incomplete == 0 for w in self._workers):
                return True
            now = time.monotonic()
            last_push = max([idle_from] + [w.last_push for w in self._workers])
            if now >= deadline or now - last_push >= idle_timeout:
                return False
            if any(w.process.returncode is not None for w in self._workers):
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(1.0, deadline - now))
            except asyncio.TimeoutError:
                pass

    async def finish(self) -> dict:
        """
        Have every worker sign its peers out and exit; return the totals:
        lost (descriptions), dropped (ids), errors, cpu seconds.
        """
        for worker in self._workers:
            if worker.process.returncode is None:
                worker.send(op="finish")
                worker.process.stdin.close()
        totals = {"lost": [], "dropped": set(), "errors": [], "cpu": 0.0}
        for number, worker in enumerate(self._workers):
            try:
                await asyncio.wait_for(worker.reading, FINISH_TIMEOUT)
                await asyncio.wait_for(worker.process.wait(), FINISH_TIMEOUT)
            except asyncio.TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            if worker.result is None:
                totals["errors"].append(
                    "worker %d exited (%s) without a result" % (number, worker.process.returncode)
                )
                continue
            totals["lost"].extend(worker.result["lost"])
            totals["dropped"].update(worker.result["dropped"])
            totals["errors"].extend(worker.result["errors"])
            totals["cpu"] += worker.result["cpu"]
        return totals


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m pcsignal.bench.workers URL LOOP``: one worker, as WorkerPool starts it (not for users)."""
    from pcsignal.bench.signaling import event_loop_runner, raise_fd_limit

    url, loop = argv if argv is not None else sys.argv[1:]
    raise_fd_limit()
    _, run_loop = event_loop_runner(loop)
    run_loop(serve(url))


if __name__ == "__main__":
    main()
