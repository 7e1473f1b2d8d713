"""
Shared fixtures: real twistd processes on loopback.

``run_twistd(plugin, *args)`` starts ``twistd -n PLUGIN ARGS`` from this
checkout, logging to a pipe, and returns a TwistdProcess; its
``wait_for_log(regex)`` blocks until the process logs a matching line (no
sleeps).  ``pcsignal_server`` is a running ``twistd pcsignal`` on a free
loopback port.
"""

import os
import sys

import pytest

from pcsignal.bench.processes import LoggedProcess as FollowedProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class LoggedProcess(FollowedProcess):
    """A process of this checkout (PYTHONPATH, working directory) whose output lines can be waited for."""

    def __init__(self, argv, env=None, pass_fds=()):
        child_env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        child_env.update(env or {})
        super().__init__(argv, env=child_env, cwd=ROOT, pass_fds=pass_fds)


class TwistdProcess(LoggedProcess):
    """``twistd -n PLUGIN ARGS`` logging to stdout."""

    def __init__(self, plugin, args, env=None):
        super().__init__([TWISTD, "-n", "--pidfile=", "--logfile=-", plugin, *args], env)
        self.name = plugin


@pytest.fixture
def run_twistd(request):
    started = []
    backend = None
    if "pcsignal_backend" in request.fixturenames:
        backend = request.getfixturevalue("pcsignal_backend")

    def run(plugin, *args, env=None):
        if plugin == "pcsignal" and backend is not None:
            args = tuple(args) + backend()
        p = TwistdProcess(plugin, args, env)
        started.append(p)
        return p

    yield run
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


REDIS_UP = r"Redis link up: "
LISTENING = r"pcsignal listening on (?P<host>[0-9.:a-f\[\]]+):(?P<port>\d+)"


def start_pcsignal(run_twistd, *args, env=None):
    """Start twistd pcsignal on a free loopback port; returns (process, url)."""
    if not any(a.startswith("--listen") or a.startswith("--port") for a in args):
        args = ("--listen", "tcp:0:interface=127.0.0.1") + tuple(args)
    p = run_twistd("pcsignal", *args, env=env)
    m = p.wait_for_log(LISTENING)
    if "--redis" in p.proc.args:
        p.wait_for_log(REDIS_UP)
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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the session; tests keep apart by key prefix."""
    from redis_support import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["memory", "redis"])
def pcsignal_backend(request):
    """
    Where a module's ``twistd pcsignal`` keeps its state (modules opt in with
    ``pytestmark = pytest.mark.usefixtures("pcsignal_backend")``): a
    callable giving the extra arguments for one server, a fresh Redis key
    prefix each, so that every server starts empty.
    """
    if request.param == "memory":
        return lambda: ()
    import secrets

    url = request.getfixturevalue("redis_server").url
    return lambda: ("--redis", url, "--redis-prefix", "test:%s:" % secrets.token_hex(4))
