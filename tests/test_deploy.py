"""
The shipped systemd units (etc/): systemd's own tools accept them, the
sandbox scores as hardened, and the socket hand-over they rely on works with
the real server: systemd-socket-activate passes pcsignal its listening
socket exactly as pcsignal.socket does, running the ExecStart= line of
pcsignal.service with the options in etc/default/pcsignal; and a socket kept
open across a restart loses no request.  No systemd runs as PID 1 here, so
the units themselves are checked by systemd-analyze only.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from conftest import LISTENING, TWISTD
from httpclients import native
from deploy_support import (
    CommandProcess,
    ETC,
    INSTALLED_TWISTD,
    ROOT,
    environment_assignments,
    environment_file,
    exchange_message,
    expand_command,
    installed_unit_copy,
    systemd_tool,
    unit_setting,
    unit_settings,
)

UNITS = ["pcsignal.socket", "pcsignal.service", "pcpeer@.service", "pcsignal@.socket",
         "pcsignal@.service"]
SERVICE = os.path.join(ETC, "pcsignal.service")
SOCKET = os.path.join(ETC, "pcsignal.socket")
LOOPBACK = os.path.join(ETC, "pcsignal.socket.d", "loopback.conf")
DEFAULTS = os.path.join(ETC, "default", "pcsignal")
CONFIG = os.path.join(ETC, "pcsignal.conf")
INSTALLED_CONFIG = "/etc/pcsignal/pcsignal.conf"
MAX_EXPOSURE = 2.0


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture
def unit_dir(tmp_path):
    """The shipped units as installed, with twistd from this virtualenv."""
    return installed_unit_copy(UNITS, str(tmp_path / "system"), TWISTD)


def test_systemd_analyze_verify_accepts_units(unit_dir):
    """verify loads each unit, with its drop-ins, without a complaint."""
    analyze = systemd_tool("systemd-analyze")
    paths = [
        os.path.join(unit_dir, "pcsignal.socket"),
        os.path.join(unit_dir, "pcsignal.service"),
        # A template is verified through an instance.
        os.path.join(unit_dir, "pcpeer@example.service"),
        os.path.join(unit_dir, "pcsignal@1.socket"),
        os.path.join(unit_dir, "pcsignal@1.service"),
    ]
    result = run([analyze, "verify", *paths])
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_systemd_analyze_verify_complains_about_a_broken_unit(unit_dir):
    """The check above can fail: verify reports a misspelt setting."""
    analyze = systemd_tool("systemd-analyze")
    path = os.path.join(unit_dir, "pcsignal.service")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("ProtectSystem=strict", "ProtectSystem=strikt"))
    result = run([analyze, "verify", path])
    assert "strikt" in result.stderr


def exposure(unit_dir, unit):
    analyze = systemd_tool("systemd-analyze")
    result = run([analyze, "security", "--offline=true", os.path.join(unit_dir, unit)])
    assert result.returncode == 0, result.stderr
    m = re.search(r"Overall exposure level for %s: (\d+\.\d+)" % re.escape(unit), result.stdout)
    assert m, result.stdout
    return float(m.group(1))


@pytest.mark.parametrize("unit", [
    "pcsignal.service", "pcpeer@example.service", "pcsignal@1.service"])
def test_services_are_hardened(unit_dir, unit):
    """systemd-analyze security: exposure 2.0 or lower (0 safest, 10 worst)."""
    assert exposure(unit_dir, unit) <= MAX_EXPOSURE


def test_socket_and_service_agree():
    """
    The service adopts the socket by the name and address family that
    pcsignal.socket gives it.  A bare port number is an IPv6 (dual-stack)
    socket.
    """
    endpoint = re.search(r"--listen (systemd:\S+)", unit_setting(SERVICE, "ExecStart")).group(1)
    options = dict(o.split("=", 1) for o in endpoint.split(":")[1:])
    assert options["name"] == unit_setting(SOCKET, "FileDescriptorName")
    assert re.fullmatch(r"\d+", unit_setting(SOCKET, "ListenStream"))
    assert unit_setting(SOCKET, "BindIPv6Only") == "both"
    assert options["domain"] == "INET6"
    # The loopback.conf drop-in resets the address list to one IPv6 address.
    assert [v for k, v in unit_settings(LOOPBACK) if k == "ListenStream"] == ["", "[::1]:8888"]
    assert "pcsignal.socket" in unit_setting(SERVICE, "Requires").split()


def test_instance_templates_share_one_port():
    """pcsignal@N.socket: the same port for every instance, SO_REUSEPORT, the
    name the service adopts; the service runs what pcsignal.service runs."""
    socket_t = os.path.join(ETC, "pcsignal@.socket")
    service_t = os.path.join(ETC, "pcsignal@.service")
    assert unit_setting(socket_t, "ReusePort") == "yes"
    assert unit_setting(socket_t, "ListenStream") == unit_setting(SOCKET, "ListenStream")
    assert unit_setting(socket_t, "FileDescriptorName") == "pcsignal"
    assert "pcsignal@%i.socket" in unit_setting(service_t, "Requires").split()
    # pcsignal.service's command, with the instances' options file.
    assert unit_setting(service_t, "ExecStart") == unit_setting(SERVICE, "ExecStart").replace(
        "--config " + INSTALLED_CONFIG, "--config %d/instances.conf").replace(
        "--listen systemd:", "--listen ${PCSIGNAL_PROXY}systemd:") + " $PCSIGNAL_INSTANCE_OPTIONS"
    # Behind HAProxy, the listener expects the PROXY protocol.
    env = dict(environment_file(DEFAULTS), PCSIGNAL_PROXY="haproxy:")
    assert "haproxy:systemd:domain=INET6:name=pcsignal" in expand_command(
        unit_setting(service_t, "ExecStart"), env)
    assert environment_file(DEFAULTS)["PCSIGNAL_PROXY"] == ""
    assert unit_setting(service_t, "LoadCredential") == (
        "instances.conf:/etc/pcsignal/instances.conf")
    assert unit_setting(service_t, "ExecReload") == unit_setting(SERVICE, "ExecReload")


def test_instances_options_file_is_valid_and_uses_redis():
    """etc/pcsignal-instances.conf parses as pcsignal's options: Redis, no state file."""
    from pcsignal.server_tap import Options

    options = Options()
    options.parseOptions(["--config", os.path.join(ETC, "pcsignal-instances.conf")])
    assert options["redis"].host == "127.0.0.1" and options["state-file"] is None


def installed_config(directory):
    """
    etc/pcsignal.conf as installed, in ``directory``, with its state
    directory (StateDirectory= in the unit) moved there too; returns its path.
    """
    with open(CONFIG, encoding="utf-8") as f:
        text = f.read()
    state_directory = "/var/lib/" + unit_setting(SERVICE, "StateDirectory")
    assert state_directory + "/" in text
    path = os.path.join(directory, "pcsignal.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(state_directory, directory))
    return path


@pytest.fixture
def config(tmp_path):
    return installed_config(str(tmp_path))


def service_command(config, **overrides):
    """
    pcsignal.service's ExecStart=, expanded with etc/default/pcsignal, with
    the options file at ``config`` (see installed_config).
    """
    env = environment_file(DEFAULTS)
    env.update(overrides)
    argv = expand_command(unit_setting(SERVICE, "ExecStart"), env)
    assert argv[0] == INSTALLED_TWISTD and INSTALLED_CONFIG in argv
    return [TWISTD] + [config if a == INSTALLED_CONFIG else a for a in argv[1:]]


def loopback_addresses():
    """
    The ListenStream= of loopback.conf, and the IPv4 one its comment offers
    instead, as (host, family).
    """
    address = [v for k, v in unit_settings(LOOPBACK) if k == "ListenStream"][-1]
    with open(LOOPBACK, encoding="utf-8") as f:
        ipv4 = re.search(r"ListenStream=(127\.0\.0\.1):8888 instead", f.read())
    assert address == "[::1]:8888" and ipv4, "loopback.conf changed: update this test"
    return [("::1", socket.AF_INET6), (ipv4.group(1), socket.AF_INET)]


def free_port(host, family):
    """A currently free port (the caller retries if it gets taken)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_socket_activate(processes, config, host, family):
    """
    systemd-socket-activate listening on host (on a free port), ready to
    start pcsignal as pcsignal.service would.
    """
    activate = systemd_tool("systemd-socket-activate")
    name = unit_setting(SOCKET, "FileDescriptorName")
    listen = "[%s]:%%d" % (host,) if family == socket.AF_INET6 else host + ":%d"
    for attempt in range(5):
        port = free_port(host, family)
        p = CommandProcess(
            [
                activate,
                "--listen=" + listen % (port,),
                "--fdname=" + name,
                # It passes only these (and a few standard) variables on.
                "--setenv=PYTHONPATH=" + ROOT,
                "--setenv=PYTHONUNBUFFERED=1",
                *service_command(config),
            ]
        )
        processes.append(p)
        m = p.wait_for_log(r"Listening on \S+ as 3\.|Address already in use")
        if m.group(0).startswith("Listening"):
            return p, port
        p.proc.wait()
    pytest.fail("no free port on %s after 5 attempts" % (host,))


@implementer(IAgentEndpointFactory)
class ConnectTo:
    """
    Connects to one address whatever the URL's host: treq cannot take an IPv6
    literal URL (it IDNA-encodes the host), so the test uses localhost URLs.
    """

    def __init__(self, host, family):
        self.host = host
        self.endpoint = TCP6ClientEndpoint if family == socket.AF_INET6 else TCP4ClientEndpoint

    def endpointForURI(self, uri):
        return self.endpoint(reactor, self.host, uri.port)


@pytest.mark.parametrize("host, family", loopback_addresses(), ids=["IPv6", "IPv4"])
@pytest_twisted.ensureDeferred
async def test_socket_activation(processes, config, host, family):
    """
    pcsignal runs from systemd's socket: the first connection is made before
    pcsignal even starts (systemd-socket-activate starts it on that
    connection) and is answered; then peers sign in and exchange a message,
    and /metrics and /healthz answer.  The same ExecStart= serves an IPv6 and
    an IPv4 socket.
    """
    p, port = start_socket_activate(processes, config, host, family)
    base = "http://localhost:%d" % port
    client = HTTPClient(Agent.usingEndpointFactory(reactor, ConnectTo(host, family)))

    # Nothing runs pcsignal yet; this connection waits in the socket's queue.
    assert "Execing" not in p.output()
    response = await client.get(base + "/sign_in?early")
    assert response.code == 200, p.output()
    early_id = int(response.headers.getRawHeaders(b"pragma")[0])
    await response.content()

    listening = p.wait_for_log(LISTENING)
    assert int(listening.group("port")) == port
    await exchange_message(client, base)
    response = await client.get("%s/sign_out?peer_id=%d" % (base, early_id))
    assert response.code == 200
    await response.content()

    # What a local Prometheus and a health check see through the same socket.
    response = await client.get(base + "/metrics")
    assert response.code == 200
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families((await response.text()))
        for s in family.samples
    }
    assert samples["pcsignal_sign_ins_total"] == 3
    assert samples["pcsignal_messages_total"] == 1
    assert samples["pcsignal_peers"] == 0
    response = await client.get(base + "/healthz")
    assert response.code == 200
    await response.content()

    # twistd replaced systemd-socket-activate (same pid, as LISTEN_PID needs)
    # and stops cleanly on systemd's stop signal; twistd ends by re-raising
    # SIGTERM, which systemd counts as a clean exit.
    assert p.stop() == -signal.SIGTERM, p.output()
    assert "Main loop terminated." in p.output()


# Stands in for systemd's socket unit across a restart: puts the listening
# socket at fd 3 and sets LISTEN_* for this very process, then becomes twistd.
EXEC_WITH_LISTEN_FDS = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=sys.argv[2])
os.execv(sys.argv[3], sys.argv[3:])
"""


def json_logging():
    """The JSON logging alternative given (commented out) in etc/default/pcsignal."""
    with open(DEFAULTS, encoding="utf-8") as f:
        m = re.search(r"^# (TWISTD_OPTIONS=.*json.*)$", f.read(), re.M)
    assert m, "etc/default/pcsignal shows no JSON logging example"
    return environment_assignments(m.group(1))


def json_log_text(process, text, pattern):
    """
    Wait for a JSON log line whose text starts with ``text``; return the
    match of ``pattern`` in that text.
    """
    line = process.wait_for_log(r'^\{.*"text": "%s' % (re.escape(text),))
    m = re.search(pattern, json.loads(line.string)["text"])
    assert m, line.string
    return m


class HeldSocket:
    """
    A listening socket owned by the test, as systemd owns pcsignal.socket's;
    ``start()`` runs pcsignal.service's ExecStart= on it (with ``env``, as
    from /etc/default/pcsignal) and waits until it listens.
    """

    def __init__(self, processes, backlog, config, **env):
        self.processes = processes
        self.name = unit_setting(SOCKET, "FileDescriptorName")
        self.command = service_command(config, **env)
        self.listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.listener.bind(("::1", 0))
        self.listener.listen(backlog)
        self.port = self.listener.getsockname()[1]

    def start(self):
        fd = self.listener.fileno()
        p = CommandProcess([sys.executable, "-c", EXEC_WITH_LISTEN_FDS, str(fd), self.name]
                           + self.command, pass_fds=[fd])
        self.processes.append(p)
        assert int(json_log_text(p, "pcsignal listening on", LISTENING).group("port")) == self.port
        return p

    def close(self):
        self.listener.close()


@pytest.fixture
def held_socket(processes, config):
    """A HeldSocket with the backlog of pcsignal.socket, pcsignal logging JSON."""
    held = HeldSocket(processes, int(unit_setting(SOCKET, "Backlog")), config, **json_logging())
    yield held
    held.close()


def test_restart_loses_no_connection(held_socket):
    """
    The socket outlives the daemon: a request made while pcsignal is stopped
    is answered by the next pcsignal started on the same socket, and the
    peers outlive it too (the state file of etc/pcsignal.conf).  pcsignal runs
    with the JSON logging shown in etc/default/pcsignal.
    """
    port = held_socket.port
    first = held_socket.start()
    conn = http.client.HTTPConnection("::1", port, timeout=30)
    conn.request("GET", "/sign_in?before")
    assert conn.getresponse().status == 200
    conn.close()
    assert first.stop() == -signal.SIGTERM, first.output()

    # pcsignal is down: the connection is queued by the kernel and the
    # request sits in it unanswered.
    conn = http.client.HTTPConnection("::1", port, timeout=30)
    conn.request("GET", "/sign_in?during")
    second = held_socket.start()
    response = conn.getresponse()
    assert response.status == 200, second.output()
    body = response.read()
    assert body.startswith(b"during,"), body
    assert b"\nbefore," in body, body  # still signed in
    conn.close()
    assert second.stop() == -signal.SIGTERM, second.output()


def test_exec_reload_applies_the_options_file(held_socket, config):
    """
    ``systemctl reload pcsignal`` runs ExecReload= with $MAINPID: pcsignal
    reads its options file again and says in one line what changed.
    """
    p = held_socket.start()
    with open(config, encoding="utf-8") as f:
        text = f.read()
    assert "\n--max-peers 10000\n" in text
    with open(config, "w", encoding="utf-8") as f:
        f.write(text.replace("\n--max-peers 10000\n", "\n--max-peers 5\n"))
    reload = expand_command(unit_setting(SERVICE, "ExecReload"), {"MAINPID": str(p.proc.pid)})
    assert subprocess.run(reload, timeout=30).returncode == 0
    json_log_text(p, "reloaded ", r"^reloaded \S+/pcsignal\.conf: --max-peers 10000 -> 5$")
    assert p.stop() == -signal.SIGTERM, p.output()


class Hammer:
    """
    Clients that each open a new connection per ``GET /healthz`` (as the
    native client does), as fast as they are answered, and note how each
    request ended and when.
    """

    def __init__(self, port, clients):
        self.url = "http://[::1]:%d" % (port,)
        self.answered = []  # (sent, answered) times
        self.failures = []  # (time, what went wrong)
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                answer = native(self.url, "GET", "/healthz", timeout=30)
                outcome = None if answer.status == 200 else "answered %d" % (answer.status,)
            except ConnectionRefusedError:
                outcome = "refused"
            except AssertionError:  # parse_answer found no answer
                outcome = "closed without an answer"
            except OSError as e:
                outcome = "%s: %s" % (type(e).__name__, e)
            with self.changed:
                if outcome is None:
                    self.answered.append((sent, time.monotonic()))
                else:
                    self.failures.append((time.monotonic(), outcome))
                self.changed.notify_all()

    def wait_for_answers(self, count, timeout=60):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.answered) >= count, timeout), (
                "%d answers, failures: %r" % (len(self.answered), self.failures))

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(35)


def test_restart_under_load_refuses_no_connection(held_socket):
    """
    Clients hammer the port while pcsignal is stopped and started again on
    the socket systemd would hold: no connection is refused, none fails, and
    the requests made while no pcsignal runs wait in the socket's backlog
    and are answered by the next one.
    """
    first = held_socket.start()
    hammer = Hammer(held_socket.port, clients=8)
    try:
        hammer.wait_for_answers(100)
        assert first.stop() == -signal.SIGTERM, first.output()
        stopped = time.monotonic()
        second = held_socket.start()
        started = time.monotonic()
        hammer.wait_for_answers(len(hammer.answered) + 200)
    finally:
        hammer.stop()
    assert second.stop() == -signal.SIGTERM, second.output()
    assert hammer.failures == []
    waited = [(s, a) for s, a in hammer.answered if s < stopped and a > started]
    assert waited, "no request spanned the restart"
