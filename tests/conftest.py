"""
Shared fixtures: real twistd processes on loopback.

``run_twistd(plugin, *args)`` starts ``twistd -n PLUGIN ARGS`` from this
checkout, logging to a pipe, and returns a TwistdProcess; its
``wait_for_log(regex)`` blocks until the process logs a matching line (no
sleeps).  ``pcsignal_server`` is a running ``twistd pcsignal`` on a free
loopback port.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class LoggedProcess:
    """A process of this checkout whose output lines can be waited for."""

    def __init__(self, argv, env=None, pass_fds=()):
        self.plugin = os.path.basename(argv[0])
        self.lines = []
        self._queue = queue.Queue()
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = ROOT + os.pathsep + child_env.get("PYTHONPATH", "")
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            cwd=ROOT,
            pass_fds=pass_fds,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_log(self, pattern, timeout=30):
        """Block until a log line matches; return the match. Fails on exit."""
        regex = re.compile(pattern)
        for line in self.lines:
            m = regex.search(line)
            if m:
                return m
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    "%s: no log line matching %r within %ss; log:\n%s"
                    % (self.plugin, pattern, timeout, self.output())
                )
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    "%s exited (%s) before logging %r; log:\n%s"
                    % (self.plugin, self.proc.wait(), pattern, self.output())
                )
            m = regex.search(line)
            if m:
                return m

    def output(self):
        return "\n".join(self.lines)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Signal the process and wait; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    "%s did not exit within %ss of %s; log:\n%s"
                    % (self.plugin, timeout, sig, self.output())
                )
        self._reader.join(5)
        return self.proc.returncode


class TwistdProcess(LoggedProcess):
    """``twistd -n PLUGIN ARGS`` logging to stdout."""

    def __init__(self, plugin, args, env=None):
        super().__init__([TWISTD, "-n", "--pidfile=", "--logfile=-", plugin, *args], env)
        self.plugin = plugin


@pytest.fixture
def run_twistd():
    started = []

    def run(plugin, *args, env=None):
        p = TwistdProcess(plugin, args, env)
        started.append(p)
        return p

    yield run
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


LISTENING = r"pcsignal listening on (?P<host>[0-9.:a-f\[\]]+):(?P<port>\d+)"


def start_pcsignal(run_twistd, *args, env=None):
    """Start twistd pcsignal on a free loopback port; returns (process, url)."""
    if not any(a.startswith("--listen") or a.startswith("--port") for a in args):
        args = ("--listen", "tcp:0:interface=127.0.0.1") + tuple(args)
    p = run_twistd("pcsignal", *args, env=env)
    m = p.wait_for_log(LISTENING)
    return p, "http://127.0.0.1:%s" % (m.group("port"),)


@pytest.fixture
def pcsignal_server(run_twistd):
    """A running ``twistd -n pcsignal``: (TwistdProcess, base URL)."""
    return start_pcsignal(run_twistd)


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium per module, driven from a Playwright thread."""
    from browser import TIMEOUT_MS, BrowserThread
    from playwright.sync_api import expect

    browser_thread = BrowserThread()
    expect.set_options(timeout=TIMEOUT_MS)
    yield browser_thread
    browser_thread.close()


@pytest.fixture
def processes():
    """CommandProcesses appended here are killed after the test if still running."""
    started = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.fixture
def loopback_ice():
    """In-process peers offer 127.0.0.1 only, as the daemons do with --ice-address."""
    from pcsignal.peer.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)
