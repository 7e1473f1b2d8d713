"""
pcpeer helpers for the tests: daemons started with twistd, in-process
peers built with the Python API, and the log lines they are waited on by.
"""

import re

import txaio
from twisted.internet import threads

from pcsignal.peer.call import CallConfig
from pcsignal.peer.media import SharedSource, pattern_source
from pcsignal.peer.peer import Peer

txaio.use_twisted()  # the API answers with Deferreds in these tests

PEER_ARGS = ("--ice-address=127.0.0.1", "--video-size=320x240", "--fps=15", "--stats-interval=2")


def start_peer(run_twistd, url, name, *args):
    """A twistd pcpeer signed in; returns (process, peer id)."""
    proc = run_twistd("pcpeer", "--server", url, "--name", name, *PEER_ARGS, *args)
    m = proc.wait_for_log(r"signed in to .* as %s \((\d+)\)" % (re.escape(name),))
    return proc, int(m.group(1))


def frames_from(name, count=30, kind="video"):
    return r"received %d %s frames from %s \(\d+\)" % (count, kind, re.escape(name))


def in_thread(proc, pattern, timeout=30):
    """wait_for_log without blocking the reactor (for tests with in-process peers)."""
    return threads.deferToThread(proc.wait_for_log, pattern, timeout)


def api_peer(url, name):
    """An in-process peer sending a tiny test pattern."""
    return Peer(
        url,
        name,
        source=SharedSource(pattern_source(160, 120, 10)),
        config=CallConfig(stats_interval=0),
        retry_delay=0.5,
    )
