"""
Calls across NATs: a real coturn (Debian's /usr/bin/turnserver) relays the
media of peers that cannot reach each other, with the credentials pcsignal
hands out on /ice-servers.  The network is made here, in namespaces::

    peer a  198.51.100.2/26  ──  198.51.100.1/26   hub   198.51.100.65/26  ──  198.51.100.66/26  peer b
                                     203.0.113.1: twistd pcsignal (:8888), coturn (:3478)

a and b each have a host route to the hub's public address 203.0.113.1 and
nothing else: no route to each other, and the hub does not forward.  Media
between them can only go through coturn's relay.  coturn runs on the
shipped etc/coturn/turnserver.conf with its placeholder secret replaced; what
the test adds on the command line (addresses, private files, --verbose) is
explained at start_coturn.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time

import av
import pytest
from playwright.sync_api import expect

from browser import CHROMIUM, CHROMIUM_ARGS, expect_connected, open_page, peer_button, sign_in
from conftest import LISTENING, ROOT, TWISTD, LoggedProcess
from netns import Namespaces, ip

HUB = "203.0.113.1"
A_ADDRESS, B_ADDRESS = "198.51.100.2", "198.51.100.66"
PORT = 8888
URL = "http://%s:%d" % (HUB, PORT)
TURN_URI = "turn:%s:3478?transport=udp" % (HUB,)
STUN_URI = "stun:%s:3478" % (HUB,)
TTL = 600
EXAMPLE_CONFIG = os.path.join(ROOT, "etc", "coturn", "turnserver.conf")
PEER_ARGS = ("--video-size=320x240", "--fps=30", "--stats-interval=0")
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")


@pytest.fixture(scope="module")
def network():
    if shutil.which("turnserver") is None:
        pytest.fail("turnserver not found: these tests need Debian's coturn package (apt-get install coturn)")
    spaces = Namespaces()
    try:
        hub, a, b = spaces.add("hub"), spaces.add("a"), spaces.add("b")
        ip("-n", hub, "addr", "add", HUB + "/32", "dev", "lo")
        spaces.link(hub, "198.51.100.1/26", a, A_ADDRESS + "/26")
        spaces.link(hub, "198.51.100.65/26", b, B_ADDRESS + "/26")
        ip("-n", a, "route", "add", HUB + "/32", "via", "198.51.100.1")
        ip("-n", b, "route", "add", HUB + "/32", "via", "198.51.100.65")
        subprocess.run(spaces.command(hub, ["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]), check=True)
        spaces.hub, spaces.a, spaces.b = hub, a, b
        yield spaces
    finally:
        spaces.close()


class Started:
    """Processes started in namespaces; killed at the end if still running."""

    def __init__(self):
        self.processes = []

    def __call__(self, ns, argv, label):
        p = LoggedProcess(Namespaces.command(ns, argv))
        p.plugin = label  # named in its failure messages
        self.processes.append(p)
        return p

    def kill_all(self):
        for p in self.processes:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


@pytest.fixture(scope="module")
def started():
    s = Started()
    yield s
    s.kill_all()


def write_secret(directory, name):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(secrets.token_hex(32) + "\n")  # the newline an editor leaves is not part of it
    return path


def read_secret(path):
    with open(path) as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory):
    return write_secret(tmp_path_factory.mktemp("turn"), "turn-secret")


def start_coturn(started, ns, directory, secret):
    """
    coturn with the shipped example configuration, its placeholder replaced
    by the secret.  The example's denied-peer-ip ranges stay in force: they
    cover private, loopback and link-local networks but not the
    documentation ranges this network is made of, so the test's peers are
    reachable.  On the command line: the hub's address to listen and relay
    on (the example leaves addresses to the deployment), the user database
    and pid file in the test's directory instead of /var/lib/turn and /run,
    and --verbose for the per-allocation log lines the tests read.
    """
    with open(EXAMPLE_CONFIG) as f:
        text = f.read()
    assert "static-auth-secret=REPLACE-WITH-THE-SHARED-SECRET" in text
    config = os.path.join(directory, "turnserver.conf")
    with open(config, "w") as f:
        f.write(text.replace("REPLACE-WITH-THE-SHARED-SECRET", secret))
    coturn = started(ns, [
        "/usr/bin/turnserver", "-c", config, "--verbose",
        "--listening-ip", HUB, "--relay-ip", HUB,
        "--userdb", os.path.join(directory, "turndb"), "--pidfile", os.path.join(directory, "turnserver.pid"),
    ], "coturn")
    coturn.wait_for_log(r"UDP listener opened on: %s:3478" % (re.escape(HUB),))
    return coturn


@pytest.fixture(scope="module")
def coturn(network, started, secret_file, tmp_path_factory):
    return start_coturn(started, network.hub, str(tmp_path_factory.mktemp("coturn")), read_secret(secret_file))


def start_server(started, ns, secret_file, port=PORT):
    server = started(ns, [
        TWISTD, "-n", "--pidfile=", "--logfile=-", "pcsignal", "--listen", "tcp:%d:interface=%s" % (port, HUB),
        "--turn-secret-file", secret_file, "--turn-uri", TURN_URI, "--stun-uri", STUN_URI, "--turn-ttl", str(TTL),
    ], "pcsignal")
    server.wait_for_log(LISTENING)
    return server


@pytest.fixture(scope="module")
def server(network, started, secret_file):
    return start_server(started, network.hub, secret_file)


def start_pcpeer(started, ns, url, name, *args):
    """A pcpeer given only the server's URL (no ICE options of its own), signed in."""
    peer = started(ns, [TWISTD, "-n", "--pidfile=", "--logfile=-", "pcpeer", "--server", url, "--name", name,
                        *PEER_ARGS, *args], "pcpeer " + name)
    peer_id = int(peer.wait_for_log(r"signed in to .* as %s \((\d+)\)" % (re.escape(name),)).group(1))
    return peer, peer_id


def frames_from(name, count, kind="video"):
    return r"received %d %s frames from %s \(\d+\)" % (count, kind, re.escape(name))


# -- the network -------------------------------------------------------------------


def test_peers_reach_the_hub_but_not_each_other(network):
    for ns, other in ((network.a, B_ADDRESS), (network.b, A_ADDRESS)):
        assert "dev" in ip("-n", ns, "route", "get", HUB)
        with pytest.raises(AssertionError, match="unreachable"):
            ip("-n", ns, "route", "get", other)
    forwarding = subprocess.run(Namespaces.command(network.hub, ["cat", "/proc/sys/net/ipv4/ip_forward"]),
                                capture_output=True, text=True, check=True)
    assert forwarding.stdout.strip() == "0"


# -- credentials ---------------------------------------------------------------------


def test_credentials_verify_and_the_relay_keeps_out_of_internal_networks(network, coturn, server, secret_file):
    """
    From peer a: /ice-servers answers as PROTOCOL.md says; the credential is
    the HMAC of the username under the secret (computed here, independently);
    coturn grants an allocation with it, relays to peer b, and refuses to
    relay to loopback, private and link-local addresses (the example
    configuration's denied-peer-ip).
    """
    internal = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.1.1", "100.64.0.1"]
    probe = subprocess.run(
        Namespaces.command(network.a, [sys.executable, os.path.join(ROOT, "tests", "turn_probe.py"), URL,
                                       B_ADDRESS, *internal]),
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)
    status, headers, body = result["ice_servers"]
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Access-Control-Allow-Origin"] == "*"
    answer = json.loads(body)
    turn, stun = answer["iceServers"]
    assert answer["ttl"] == TTL and turn["urls"] == [TURN_URI] and stun == {"urls": [STUN_URI]}
    expiry, peer = turn["username"].split(":")
    assert int(peer) == result["peer_id"]
    assert TTL - 60 <= int(expiry) - time.time() <= TTL
    expected = hmac.new(read_secret(secret_file).encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == expected
    # An unknown id: exactly what /wait answers an unknown id.
    assert result["unknown"][0] == 500 and result["unknown"][2] == "Peer most likely gone."
    assert result["unknown"] == result["wait_unknown"]
    # coturn accepts the credentials, relays to b and to nothing internal.
    assert result["turn"]["relayed"][0] == HUB
    assert result["turn"]["peers"] == dict({B_ADDRESS: "relayed"}, **{a: "403 Forbidden IP" for a in internal})
    assert "Traceback" not in server.output()


# -- calls --------------------------------------------------------------------------------


def test_two_pcpeers_call_through_coturn(network, started, coturn, server, tmp_path):
    """
    Two pcpeers given only the server's URL call each other through coturn,
    decode each other's video and record it: at least 90 frames each way,
    checked with PyAV.
    """
    b, b_id = start_pcpeer(started, network.b, URL, "b", "--record", str(tmp_path / "b.mp4"))
    a, a_id = start_pcpeer(started, network.a, URL, "a", "--call", "b", "--record", str(tmp_path / "a.mp4"))
    for proc, other in ((a, "b"), (b, "a")):
        proc.wait_for_log(r"ICE servers from the signaling server: %s, %s$" % (re.escape(TURN_URI), re.escape(STUN_URI)))
        proc.wait_for_log(frames_from(other, 100), timeout=60)
    first_frame = {
        name: float(proc.wait_for_log(r"first video frame \d+x\d+ from %s \(\d+\) after ([\d.]+) s" % other).group(1))
        for name, proc, other in (("caller", a, "b"), ("callee", b, "a"))
    }
    # Both offer their own address and a relay on the hub; only the relay can work.
    for proc, other, other_id in ((a, "b", b_id), (b, "a", a_id)):
        assert re.search(r"ICE candidates for %s \(%d\): host \d+, relay \d+" % (other, other_id), proc.output())
    # coturn relayed for both, under the usernames pcsignal gave them.
    for peer_id in (a_id, b_id):
        coturn.wait_for_log(r"user <\d+:%d>: incoming packet ALLOCATE processed, success" % (peer_id,))

    a.stop()
    b.wait_for_log(r"call with a \(%d\) ended \(BYE received\)" % (a_id,))
    b.stop()
    # A relay of a or b carried the call: coturn counts its bytes to and from
    # the other peer (at least 100,000 each way) when the allocation ends.
    coturn.wait_for_log(r"peer usage: realm=<[^>]*>, username=<\d+:(%d|%d)>, rp=\d+, rb=\d{6,}, sp=\d+, sb=\d{6,}"
                        % (a_id, b_id))
    for proc, recording in ((a, "a-b-"), (b, "b-a-")):
        [path] = [tmp_path / n for n in os.listdir(tmp_path) if n.startswith(recording)]
        with av.open(str(path)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        assert frames >= 90, (path, frames)
        assert "Traceback" not in proc.output() and "no TURN relay" not in proc.output()

    os.makedirs(ARTIFACTS, exist_ok=True)
    with open(os.path.join(ARTIFACTS, "turn-first-frame.json"), "w") as f:
        json.dump(first_frame, f)
    print("time to first video frame through TURN: caller %(caller).3f s, callee %(callee).3f s" % first_frame)


def test_wrong_secret_fails_with_one_clear_log_line(network, started, coturn, tmp_path):
    """pcsignal with another secret than coturn's: coturn refuses, pcpeer says so once per call."""
    wrong = start_server(started, network.hub, write_secret(str(tmp_path), "wrong-secret"), port=PORT + 1)
    url = "http://%s:%d" % (HUB, PORT + 1)
    d, d_id = start_pcpeer(started, network.b, url, "d")
    c, c_id = start_pcpeer(started, network.a, url, "c", "--relay-only", "--call", "d")
    refused = (r"no TURN relay for the call with %s \(%d\): TURN server 203\.0\.113\.1:3478 \(udp\) refused our "
               r"credentials \(401 Unauthorized\): the signaling server's TURN secret is not the TURN server's "
               r"static-auth-secret, or the credentials expired")
    c.wait_for_log(refused % ("d", d_id))
    d.wait_for_log(refused % ("c", c_id))
    # c, relay-only, has no candidate at all: it ends the call rather than wait forever.
    c.wait_for_log(r"call with d \(%d\) ended \(no ICE candidates to connect with\)" % (d_id,))
    d.wait_for_log(r"call with c \(%d\) ended \(BYE received\)" % (c_id,))
    for proc, other, other_id in ((c, "d", d_id), (d, "c", c_id)):
        assert len(re.findall(refused % (other, other_id), proc.output())) == 1, proc.output()
    for proc in (c, d, wrong):
        proc.stop()
        assert "Traceback" not in proc.output()


def test_page_in_a_namespace_calls_pcpeer_through_coturn(chromium, network, started, coturn, server, tmp_path):
    """
    Chromium itself runs in peer a's namespace (a wrapper script is its
    executable: ``ip netns exec`` keeps Playwright's pipes), relay-only by
    the page's ?relay=1, and calls a pcpeer in peer b's namespace, which
    is relay-only too (--relay-only): only relay candidates on either side.
    """
    bot, _ = start_pcpeer(started, network.b, URL, "bot", "--relay-only")
    wrapper = tmp_path / "chromium-in-a"
    wrapper.write_text('#!/bin/sh\nexec ip netns exec %s %s "$@"\n' % (network.a, CHROMIUM))
    wrapper.chmod(0o755)

    def scenario(playwright_browser):
        # The camera needs a secure context: plain HTTP counts as one on localhost only.
        browser = playwright_browser.browser_type.launch(
            executable_path=str(wrapper), headless=True,
            args=CHROMIUM_ARGS + ["--unsafely-treat-insecure-origin-as-secure=" + URL])
        try:
            page = open_page(browser, URL + "/?relay=1", height=680)
            expect(page.locator("#relay-only")).to_be_checked()
            sign_in(page, "page")
            peer_button(page, "bot").click()
            expect_connected(page, "bot")
            expect(page.locator("#stats")).to_have_attribute("data-path", "relay")
            expect(page.locator("#stats-rtt")).to_contain_text("via TURN relay")
            page.wait_for_function("() => Number(document.getElementById('stats').dataset.framesDecoded) >= 90",
                                   timeout=30_000)
            bot.wait_for_log(frames_from("page", 100), timeout=60)
            policy = page.evaluate("pcsignal.app.call.peerConnection.getConfiguration().iceTransportPolicy")
            assert policy == "relay"
            page.click("#hang-up")
            bot.wait_for_log(r"call with page \(\d+\) ended \(BYE received\)")
            assert re.search(r"ICE candidates for page \(\d+\): relay \d+$", bot.output(), re.M)
            assert page.js_errors == []
        finally:
            browser.close()

    chromium.run(scenario, chromium.browser)
    bot.stop()
    assert "Traceback" not in bot.output()

