"""
Call benchmark for pcpeer, on loopback.

Starts ``twistd pcsignal`` (unless --server is given) and a ``twistd pcpeer``
answering daemon, then calls it from this process through the Python API
(the code path of ``--call``) and measures:

1. set-up time, from starting the call to the first decoded remote video
   frame: median and p95 over --calls calls;
2. CPU per call and delivered frames for one --hold-seconds call at
   --video-size/--fps (VP8): CPU of the daemon and of this process, and the
   share of video frames sent that the other side decoded, both ways;
3. memory over --churn back-to-back calls: the daemon's RSS every 10
   calls; growth compares the peak of calls 10-30 with that of the last 30.

Run:  python -m pcsignal.bench.calls [--calls 20] [--hold-seconds 30] [--churn 100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ANSWERER = "bench-answerer"
_SUMMARY = re.compile(
    r"call with (?P<who>\S+) \((?P<id>\d+)\) ended \((?P<reason>[^)]*)\) after [\d.]+ s: "
    r"sent (?P<sent>.*?); received (?P<received>.*?); \d+ bytes out"
)


class Daemon:
    """A twistd child whose log lines can be awaited as Deferreds."""

    def __init__(self, reactor, plugin: str, *args: str) -> None:
        self.reactor = reactor
        self.lines: list[str] = []
        self._waiters: list = []
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", plugin, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.reactor.callFromThread(self._line, raw.decode("utf-8", "replace").rstrip("\n"))

    def _line(self, line: str) -> None:
        self.lines.append(line)
        for waiter in list(self._waiters):
            regex, d = waiter
            m = regex.search(line)
            if m:
                self._waiters.remove(waiter)
                d.callback(m)

    def wait_for(self, pattern: str, timeout: float = 60, after: int = 0):
        """Fires with the first match in a line numbered >= after (now or later)."""
        from twisted.internet.defer import Deferred

        regex = re.compile(pattern)
        for line in self.lines[after:]:
            m = regex.search(line)
            if m:
                d = Deferred()
                d.callback(m)
                return d
        d = Deferred()
        self._waiters.append((regex, d))
        d.addTimeout(timeout, self.reactor)
        return d

    def cpu_seconds(self) -> float:
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _video_frames(side: str) -> int:
    m = re.search(r"video (\d+) frames", side)
    return int(m.group(1)) if m else 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


async def one_call(peer, answerer: Daemon, hold: float = 0.0):
    """Call the daemon; returns (set-up seconds, Call, daemon's end-of-call match)."""
    from twisted.internet.task import deferLater

    mark = len(answerer.lines)
    call = await peer.call(ANSWERER)
    setup = await call.wait_first_frame("video")
    if hold:
        await deferLater(answerer.reactor, hold, lambda: None)
    await peer.calls.hang_up(call.peer_id)
    summary = await answerer.wait_for(_SUMMARY.pattern, after=mark)
    return setup, call, summary


async def run(reactor, options) -> dict:
    import txaio

    from pcsignal.peer.call import CallConfig
    from pcsignal.peer.ice import restrict_host_addresses
    from pcsignal.peer.media import SharedSource, pattern_source
    from pcsignal.peer.peer import Peer

    txaio.use_twisted()
    restrict_host_addresses(["127.0.0.1"])
    width, height = options.video_size
    daemons = []
    results: dict = {"video": "%dx%d@%g VP8" % (width, height, options.fps)}
    try:
        url = options.server
        if url is None:
            server = Daemon(reactor, "pcsignal", "--listen", "tcp:%d:interface=127.0.0.1" % _free_port())
            daemons.append(server)
            port = (await server.wait_for(r"pcsignal listening on 127\.0\.0\.1:(\d+)")).group(1)
            url = "http://127.0.0.1:%s" % (port,)
        answerer = Daemon(
            reactor,
            "pcpeer",
            "--server", url,
            "--name", ANSWERER,
            "--ice-address=127.0.0.1",
            "--video-size=%dx%d" % (width, height),
            "--fps=%g" % (options.fps,),
            "--stats-interval=0",
        )
        daemons.append(answerer)
        await answerer.wait_for(r"signed in to .* as %s " % (ANSWERER,))
        peer = Peer(
            url,
            "bench-caller",
            source=SharedSource(pattern_source(width, height, options.fps)),
            config=CallConfig(stats_interval=0),
        )
        await peer.start()

        # 1. set-up time
        setups = []
        for _ in range(options.calls):
            setup, _, _ = await one_call(peer, answerer)
            setups.append(setup)
        results["setup_s"] = {
            "calls": len(setups),
            "median": round(statistics.median(setups), 4),
            "p95": round(percentile(setups, 0.95), 4),
            "min": round(min(setups), 4),
            "max": round(max(setups), 4),
        }
        print("set-up: %s" % (results["setup_s"],), flush=True)

        # 2. CPU and delivered frames over one long call
        if options.hold_seconds > 0:
            cpu_daemon, cpu_self, wall = answerer.cpu_seconds(), time.process_time(), time.monotonic()
            _, call, summary = await one_call(peer, answerer, hold=options.hold_seconds)
            wall = time.monotonic() - wall
            cpu_daemon = answerer.cpu_seconds() - cpu_daemon
            cpu_self = time.process_time() - cpu_self
            daemon_sent = _video_frames(summary.group("sent"))
            daemon_received = _video_frames(summary.group("received"))
            our_sent, our_received = call.sent["video"].frames, call.received["video"].frames
            results["long_call"] = {
                "seconds": round(wall, 1),
                "daemon_cpu_percent_of_a_core": round(100 * cpu_daemon / wall, 1),
                "caller_cpu_percent_of_a_core": round(100 * cpu_self / wall, 1),
                "daemon_to_caller_frames": [daemon_sent, our_received],
                "daemon_to_caller_decoded_percent": round(100 * our_received / max(1, daemon_sent), 1),
                "caller_to_daemon_frames": [our_sent, daemon_received],
                "caller_to_daemon_decoded_percent": round(100 * daemon_received / max(1, our_sent), 1),
                "daemon_sent_fps": round(daemon_sent / wall, 1),
            }
            print("long call: %s" % (results["long_call"],), flush=True)

        # 3. memory over back-to-back calls
        if options.churn > 0:
            rss = {}
            churn_setups = []
            for n in range(1, options.churn + 1):
                setup, _, _ = await one_call(peer, answerer, hold=options.churn_hold)
                churn_setups.append(setup)
                if n % 10 == 0 or n == options.churn:
                    rss[n] = (answerer.rss_kib(), _own_rss_kib())
            # RSS swings by tens of MB within a call (codec buffers come and
            # go), so compare peaks: calls 10-30 against the last 30.
            samples = [rss[n] for n in sorted(rss)]
            warm = [max(side) for side in zip(*samples[:3])]
            last = [max(side) for side in zip(*samples[-3:])]
            results["churn"] = {
                "calls": options.churn,
                "daemon_rss_kib_peak_early_and_late": [warm[0], last[0]],
                "daemon_rss_growth_percent": round(100.0 * (last[0] - warm[0]) / warm[0], 1),
                "caller_rss_kib_peak_early_and_late": [warm[1], last[1]],
                "caller_rss_growth_percent": round(100.0 * (last[1] - warm[1]) / warm[1], 1),
                "setup_median_s": round(statistics.median(churn_setups), 4),
                # The whole curve, to tell a leak (steady climb) from swings.
                "daemon_rss_kib_every_10": [sample[0] for sample in samples],
            }
            print("churn: %s" % (results["churn"],), flush=True)
        await peer.stop()
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
    results["machine"] = {
        "nproc": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "cpu": _cpu_model(),
    }
    return results


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _size(text: str) -> tuple[int, int]:
    width, height = (int(x) for x in text.lower().split("x"))
    return width, height


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="use this signaling server instead of starting pcsignal")
    parser.add_argument("--calls", type=int, default=20, help="calls for the set-up time [20]")
    parser.add_argument("--hold-seconds", type=float, default=30.0, help="length of the CPU/frames call [30]")
    parser.add_argument("--churn", type=int, default=100, help="back-to-back calls for the memory check [100]")
    parser.add_argument("--churn-hold", type=float, default=0.5, help="seconds each churn call stays up [0.5]")
    parser.add_argument("--video-size", type=_size, default=(640, 480), help="test pattern size [640x480]")
    parser.add_argument("--fps", type=float, default=30.0, help="test pattern frame rate [30]")
    parser.add_argument("--json", help="also write the results to this file")
    options = parser.parse_args(argv)

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer, task

    def report(results):
        text = json.dumps(results, indent=2)
        print(text)
        if options.json:
            with open(options.json, "w") as f:
                f.write(text + "\n")

    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)).addCallback(report))


if __name__ == "__main__":
    main()
