"""
pcpeer-bench: call set-up, media and memory of pcpeer, on loopback.

Starts ``twistd pcsignal`` (unless --server is given) and a ``twistd pcpeer``
answering daemon, then calls it from this process through the Python API
(the code path of ``--call``) and measures:

1. set-up time, from starting the call to the first decoded remote video
   frame: median and p95 (nearest rank) over --calls calls;
2. CPU per call and delivered frames for one --hold-seconds call at
   --video-size/--fps, in the codec the call negotiated: CPU of the daemon
   and of this process, and the share of video frames sent that the other
   side decoded, both ways;
3. memory over --churn back-to-back calls: the daemon's RSS every 10
   calls; growth compares the peak of calls 10-30 with that of the last 30.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import sys
import time

import psutil

from pcsignal.bench.percentiles import percentile
from pcsignal.bench.processes import LoggedProcess
from pcsignal.options import positive_float, positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ANSWERER = "bench-answerer"
_SUMMARY = re.compile(
    r"call with (?P<who>\S+) \((?P<id>\d+)\) ended \((?P<reason>[^)]*)\) after [\d.]+ s: "
    r"sent (?P<sent>.*?); received (?P<received>.*?); \d+ bytes out"
)
DESCRIPTION = (
    "Call benchmark for pcpeer on loopback: starts twistd pcsignal (unless --server is given) and an "
    "answering twistd pcpeer, calls it from this process, and reports set-up time (median, p95), CPU "
    "and decoded frames over one long call, and the daemon's memory over back-to-back calls."
)


def start_daemon(plugin: str, *args: str) -> LoggedProcess:
    """``twistd -n PLUGIN ARGS`` from this checkout or installation, its log lines followed."""
    env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return LoggedProcess([TWISTD, "-n", "--pidfile=", "--logfile=-", plugin, *args], env=env, cwd=ROOT)


def wait_for(daemon: LoggedProcess, pattern: str, timeout: float = 60, after: int = 0):
    """The daemon's wait_for_log as a Deferred (it blocks, so in a thread)."""
    from twisted.internet import threads

    return threads.deferToThread(daemon.wait_for_log, pattern, timeout, after)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _video_frames(side: str) -> int:
    m = re.search(r"video (\d+) frames", side)
    return int(m.group(1)) if m else 0


async def one_call(peer, answerer: LoggedProcess, hold: float = 0.0):
    """Call the daemon; returns (set-up seconds, Call, daemon's end-of-call match)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    mark = len(answerer.lines)
    call = await peer.call(ANSWERER)
    setup = await call.wait_first_frame("video")
    if hold:
        await deferLater(reactor, hold, lambda: None)
    await peer.calls.hang_up(call.peer_id)
    summary = await wait_for(answerer, _SUMMARY.pattern, after=mark)
    return setup, call, summary


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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
    results: dict = {}
    try:
        url = options.server
        if url is None:
            server = start_daemon("pcsignal", "--listen", "tcp:%d:interface=127.0.0.1" % _free_port())
            daemons.append(server)
            port = (await wait_for(server, r"pcsignal listening on 127\.0\.0\.1:(\d+)")).group(1)
            url = "http://127.0.0.1:%s" % (port,)
        answerer = start_daemon(
            "pcpeer",
            "--server", url,
            "--name", ANSWERER,
            "--ice-address=127.0.0.1",
            "--video-size=%dx%d" % (width, height),
            "--fps=%g" % (options.fps,),
            "--stats-interval=0",
        )
        daemons.append(answerer)
        await wait_for(answerer, r"signed in to .* as %s " % (ANSWERER,))
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
            setup, call, _ = await one_call(peer, answerer)
            setups.append(setup)
        video = [c.split(" ")[0].split("/", 1)[1] for c in call.codecs if c.startswith("video/")]
        results["video"] = "%dx%d@%g %s" % (width, height, options.fps, video[0] if video else "?")
        results["setup_s"] = {
            "calls": len(setups),
            "median": round(statistics.median(setups), 4),
            "p95": round(percentile(setups, 0.95), 4),
            "min": round(min(setups), 4),
            "max": round(max(setups), 4),
        }
        progress("set-up: %d calls measured" % (len(setups),))

        # 2. CPU and delivered frames over one long call
        if options.hold_seconds > 0:
            cpu_daemon, cpu_self, wall = answerer.stats.cpu_seconds(), time.process_time(), time.monotonic()
            _, call, summary = await one_call(peer, answerer, hold=options.hold_seconds)
            wall = time.monotonic() - wall
            cpu_daemon = answerer.stats.cpu_seconds() - cpu_daemon
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
            progress("long call: done")

        # 3. memory over back-to-back calls
        if options.churn > 0:
            rss = {}
            churn_setups = []
            for n in range(1, options.churn + 1):
                setup, _, _ = await one_call(peer, answerer, hold=options.churn_hold)
                churn_setups.append(setup)
                if n % 10 == 0 or n == options.churn:
                    rss[n] = (answerer.stats.rss_bytes() // 1024, psutil.Process().memory_info().rss // 1024)
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
            progress("churn: done")
        await peer.stop()
    finally:
        for daemon in reversed(daemons):
            try:
                daemon.stop()
            except AssertionError as e:  # it had to be killed
                progress(str(e).splitlines()[0])
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
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("must look like 640x480, not %r" % (text,))
    return width, height


def table(results: dict) -> str:
    """The results as a few readable lines."""
    lines = []
    setup = results.get("setup_s")
    if setup:
        lines.append(
            "set-up to first video frame: median %.3f s, p95 %.3f s (min %.3f, max %.3f; %d calls)"
            % (setup["median"], setup["p95"], setup["min"], setup["max"], setup["calls"])
        )
    long_call = results.get("long_call")
    if long_call:
        lines.append("one %.0f s call at %s:" % (long_call["seconds"], results["video"]))
        lines.append(
            "  video decoded: daemon -> caller %.1f %% (%d of %d), caller -> daemon %.1f %% (%d of %d)"
            % (
                long_call["daemon_to_caller_decoded_percent"],
                long_call["daemon_to_caller_frames"][1],
                long_call["daemon_to_caller_frames"][0],
                long_call["caller_to_daemon_decoded_percent"],
                long_call["caller_to_daemon_frames"][1],
                long_call["caller_to_daemon_frames"][0],
            )
        )
        lines.append(
            "  CPU: daemon %.1f %% of a core, caller %.1f %%; daemon sent %.1f fps"
            % (long_call["daemon_cpu_percent_of_a_core"], long_call["caller_cpu_percent_of_a_core"],
               long_call["daemon_sent_fps"])
        )
    churn = results.get("churn")
    if churn:
        early, late = churn["daemon_rss_kib_peak_early_and_late"]
        lines.append(
            "%d back-to-back calls: daemon RSS peak %.0f MB early, %.0f MB late (%+.1f %%); every 10 calls: %s MB"
            % (churn["calls"], early / 1024, late / 1024, churn["daemon_rss_growth_percent"],
               ", ".join("%.0f" % (kib / 1024) for kib in churn["daemon_rss_kib_every_10"]))
        )
    machine = results["machine"]
    lines.append("machine: %s, %d CPUs, load %.2f at the end" % (machine["cpu"], machine["nproc"],
                                                                 machine["loadavg_at_end"][0]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcpeer-bench", description=DESCRIPTION)
    parser.add_argument("--server", help="use this signaling server (URL) instead of starting pcsignal")
    parser.add_argument("--calls", type=positive_int, default=20, help="calls for the set-up time (default 20)")
    parser.add_argument("--hold-seconds", type=float, default=30.0,
                        help="length of the CPU/frames call; 0 skips it (default 30)")
    parser.add_argument("--churn", type=int, default=100,
                        help="back-to-back calls for the memory check; 0 skips it (default 100)")
    parser.add_argument("--churn-hold", type=float, default=0.5,
                        help="seconds each churn call stays up (default 0.5)")
    parser.add_argument("--video-size", type=_size, default=(640, 480), help="test pattern size (default 640x480)")
    parser.add_argument("--fps", type=positive_float, default=30.0, help="test pattern frame rate (default 30)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return parser


def main(argv=None) -> None:
    options = build_parser().parse_args(argv)

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer, task

    def report(results):
        print(json.dumps(results, indent=2) if options.json else table(results))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)).addCallback(report))


if __name__ == "__main__":
    main()
