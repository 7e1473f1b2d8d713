"""
ICE servers for a call, on loopback: the pure credential logic on a fixed
clock, ``GET /ice-servers`` from a real ``twistd pcsignal``, its options and
their errors, the secret file and its reload, and pcpeer's use of the
endpoint, including against a server that lacks it, as the reference does.
(Real TURN, with coturn, is tests/test_turn.py.)
"""

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import time

import pytest
import pytest_twisted

from pcsignal import ice
from pcsignal.peer.call import CallConfig
from pcsignal.peer.ice import configuration_from_server, ice_configuration
from pcsignal.peer.peer import Peer
from pcsignal.turn_secret import TurnSecret, UnusableSecretFile

from conftest import ROOT, TWISTD, start_pcsignal
from httpclients import Browser, native
from peers import PEER_ARGS, api_peer, frames_from, in_thread
from proxies import listen_like_the_reference

SECRET = "correct horse battery staple"
TURN_URIS = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"]
STUN_URI = "stun:turn.example.org:3478"


def expected_credential(secret, username):
    """The TURN REST API credential, computed here without pcsignal's code."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


# -- pure: credentials on a fixed clock, URIs -------------------------------------------


def test_credentials_on_a_fixed_clock():
    username, credential = ice.turn_credentials(SECRET.encode(), 42, now=1_700_000_000.9, ttl=86400)
    assert username == "1700086400:42"  # whole seconds: now, rounded down, plus the ttl
    assert credential == expected_credential(SECRET, "1700086400:42")
    # Another secret, another credential; another time, another username.
    assert ice.turn_credentials(b"other", 42, 1_700_000_000, 86400)[1] != credential
    assert ice.turn_credentials(SECRET.encode(), 42, 1_700_000_060, 86400)[0] == "1700086460:42"


def test_answer_shapes():
    full = ice.IceSettings(tuple(TURN_URIS), (STUN_URI,), ttl=600)
    assert full.configuration(SECRET.encode(), 7, now=1000) == {
        "iceServers": [
            {"urls": TURN_URIS, "username": "1600:7", "credential": expected_credential(SECRET, "1600:7")},
            {"urls": [STUN_URI]},
        ],
        "ttl": 600,
    }
    assert ice.IceSettings(stun_uris=(STUN_URI,)).configuration(None, 7, 1000) == {
        "iceServers": [{"urls": [STUN_URI]}], "ttl": 86400}
    assert json.loads(ice.IceSettings().body(None, 7, 1000)) == {"iceServers": [], "ttl": 86400}


@pytest.mark.parametrize("uri, parsed", [
    ("turn:turn.example.org:3478?transport=udp", ("turn", "turn.example.org", 3478, "udp")),
    ("turns:turn.example.org:5349?transport=tcp", ("turns", "turn.example.org", 5349, "tcp")),
    ("turn:203.0.113.1", ("turn", "203.0.113.1", 3478, "udp")),
    ("turn:[2001:db8::1]:3478?transport=tcp", ("turn", "2001:db8::1", 3478, "tcp")),
    ("turns:turn.example.org", ("turns", "turn.example.org", 5349, "tcp")),
    ("stun:stun.example.org:19302", ("stun", "stun.example.org", 19302, None)),
])
def test_uris_that_clients_can_use(uri, parsed):
    u = ice.parse_uri(uri)
    assert (u.scheme, u.host, u.port, u.transport) == parsed and u.text == uri


@pytest.mark.parametrize("uri, complaint", [
    ("http://turn.example.org", "scheme"),
    ("turn:", "not a host"),
    ("turn:-bad-.example", "not a host"),
    ("turn:999.1.1.1", "not a host"),
    ("turn:[::zz]:3478", "not a host"),
    ("turn:turn.example.org:0", "port"),
    ("turn:turn.example.org:65536", "port"),
    ("turn:turn.example.org:abc", "port"),
    ("turn:turn.example.org?transport=sctp", "transport=udp"),
    ("turn:turn.example.org?foo=bar", "transport=udp"),
    ("turns:turn.example.org?transport=udp", "transport is tcp"),
    ("stun:stun.example.org?transport=udp", "takes no"),
    ("turn turn.example.org", "not a STUN or TURN URI"),
])
def test_uris_that_clients_cannot_use(uri, complaint):
    with pytest.raises(ice.BadUri, match=re.escape(complaint)):
        ice.parse_uri(uri)


# -- the secret file -----------------------------------------------------------------------


def test_secret_file_read_and_reloaded(tmp_path):
    path = tmp_path / "secret"
    path.write_text("  first\n")
    secret = TurnSecret(str(path))
    assert secret.value == b"first" and "first" not in repr(secret)
    path.write_text("second\n")
    assert secret.reload() and secret.value == b"second"
    # An unusable file on reload: the old secret stays.
    path.write_text("\n")
    assert not secret.reload() and secret.value == b"second"
    path.unlink()
    assert not secret.reload() and secret.value == b"second"


@pytest.mark.parametrize("content, complaint", [
    (None, "cannot read"), ("", "is empty"), (" \n\t", "is empty"), ("x" * 5000, "longer than 4096 bytes")])
def test_unusable_secret_files(tmp_path, content, complaint):
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UnusableSecretFile, match=complaint):
        TurnSecret(str(path))


# -- options: one clear line each ------------------------------------------------------------


def usage_error(*args):
    out = subprocess.run([TWISTD, "-n", "--pidfile=", "pcsignal", *args], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, timeout=60)
    assert out.returncode != 0
    return (out.stdout + out.stderr).strip().splitlines()[-1]


def test_option_errors_name_the_option(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    assert usage_error("--turn-secret-file", str(tmp_path / "missing"), "--turn-uri", TURN_URIS[0]).endswith(
        "--turn-secret-file: cannot read %s: No such file or directory" % (tmp_path / "missing",))
    assert usage_error("--turn-secret-file", str(tmp_path), "--turn-uri", TURN_URIS[0]).endswith(
        "--turn-secret-file: cannot read %s: Is a directory" % (tmp_path,))
    assert usage_error("--turn-uri", TURN_URIS[0]).endswith("--turn-uri needs --turn-secret-file (the secret "
                                                            "the TURN server checks credentials with)")
    assert usage_error("--turn-secret-file", str(secret)).endswith("--turn-secret-file needs at least one --turn-uri")
    assert usage_error("--turn-uri", "turn:x:99999").endswith(
        "--turn-uri: 'turn:x:99999': the port must be a number from 1 to 65535")
    assert usage_error("--stun-uri", TURN_URIS[0]).endswith(
        "--stun-uri: %r is not a stun: or stuns: URI" % (TURN_URIS[0],))
    assert usage_error("--turn-ttl", "0").endswith("must be positive, not '0'")


# -- GET /ice-servers from a real server ---------------------------------------------------------


@pytest.fixture
def turn_server(run_twistd, tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    args = ["--turn-secret-file", str(path), "--turn-ttl", "3600", "--stun-uri", STUN_URI,
            "--log-level", "debug", "--access-log"]
    for uri in TURN_URIS:
        args += ["--turn-uri", uri]
    return start_pcsignal(run_twistd, *args)


def test_signed_in_peer_gets_credentials(turn_server):
    proc, url = turn_server
    peer_id = native(url, "GET", "/sign_in?alice").pragma
    before = time.time()
    answer = native(url, "GET", "/ice-servers?peer_id=%d" % (peer_id,))
    assert answer.status == 200
    # The reference's header set, in its order, with JSON's type.
    assert re.fullmatch(
        rb"HTTP/1\.1 200 OK\r\nServer: pcsignal/\S+\r\nCache-Control: no-cache\r\nConnection: close\r\n"
        rb"Content-Type: application/json\r\nContent-Length: \d+\r\nAccess-Control-Allow-Origin: \*\r\n"
        rb"Access-Control-Allow-Credentials: true\r\nAccess-Control-Allow-Methods: POST, GET, OPTIONS\r\n"
        rb"Access-Control-Allow-Headers: Content-Type, Content-Length, Connection, Cache-Control\r\n"
        rb"Access-Control-Expose-Headers: Content-Length, X-Peer-Id\r\n", answer.headers)
    body = json.loads(answer.body)
    turn, stun = body["iceServers"]
    assert body["ttl"] == 3600 and turn["urls"] == TURN_URIS and stun == {"urls": [STUN_URI]}
    expiry, owner = turn["username"].split(":")
    assert int(owner) == peer_id and int(before) + 3600 <= int(expiry) <= time.time() + 3600
    assert turn["credential"] == expected_credential(SECRET, turn["username"])

    # A page on another origin may read it (CORS), after a preflight or not.
    page = Browser(url)
    response, _ = page.request("OPTIONS", "/ice-servers?peer_id=%d" % (peer_id,),
                               headers={"Access-Control-Request-Method": "GET"})
    assert response.status == 200 and response.getheader("Access-Control-Allow-Origin") == "*"
    response, data = page.request("GET", "/ice-servers?peer_id=%d" % (peer_id,))
    assert response.status == 200 and json.loads(data)["iceServers"][0]["username"].endswith(":%d" % peer_id)
    page.close()

    # Neither the secret nor a credential is ever logged, even at debug with the access log.
    assert native(url, "POST", "/ice-servers?peer_id=%d" % (peer_id,), b"x").status == 405
    proc.wait_for_log(r'"GET /ice-servers\?peer_id=%d HTTP/1.1" 200' % (peer_id,))
    assert SECRET not in proc.output() and turn["credential"] not in proc.output()


def test_unknown_peer_gets_what_wait_gets(turn_server):
    _, url = turn_server
    for query in ("peer_id=12345", "peer_id=x", "", "peer_id=-1"):
        answer = native(url, "GET", "/ice-servers?" + query)
        assert answer.raw == native(url, "GET", "/wait?" + query).raw
        assert (answer.status, answer.body) == (500, b"Peer most likely gone.")
    # Signed out: no more credentials.
    peer_id = native(url, "GET", "/sign_in?bob").pragma
    native(url, "GET", "/sign_out?peer_id=%d" % (peer_id,))
    assert native(url, "GET", "/ice-servers?peer_id=%d" % (peer_id,)).status == 500


def test_without_turn_stun_only_or_nothing(run_twistd, pcsignal_server):
    _, url = pcsignal_server
    peer_id = native(url, "GET", "/sign_in?carol").pragma
    assert json.loads(native(url, "GET", "/ice-servers?peer_id=%d" % (peer_id,)).body) == {
        "iceServers": [], "ttl": 86400}
    _, stun_url = start_pcsignal(run_twistd, "--stun-uri", STUN_URI)
    peer_id = native(stun_url, "GET", "/sign_in?dave").pragma
    assert json.loads(native(stun_url, "GET", "/ice-servers?peer_id=%d" % (peer_id,)).body) == {
        "iceServers": [{"urls": [STUN_URI]}], "ttl": 86400}


# -- pcpeer's side ----------------------------------------------------------------------------------


def test_configuration_from_the_server_keeps_what_aiortc_can_use():
    config = configuration_from_server({"iceServers": [
        {"urls": ["turn:203.0.113.1:3478?transport=udp", "turn:[2001:db8::1]:3478"], "username": "1:2",
         "credential": "c"},
        {"urls": "stun:203.0.113.1:3478"},
        {"urls": ["http://nonsense"]},
        {"urls": [42]},
        "junk",
    ], "ttl": 5}, relay_only=True)
    assert [(s.urls, s.username, s.credential) for s in config.iceServers] == [
        (["turn:203.0.113.1:3478?transport=udp"], "1:2", "c"), (["stun:203.0.113.1:3478"], None, None)]
    assert config.iceTransportPolicy.value == "relay"
    for unusable in ([], {"ttl": 5}, {"iceServers": "stun:x"}):
        with pytest.raises(ValueError):
            configuration_from_server(unusable)


def test_own_ice_servers_win_over_the_server():
    own = Peer("http://127.0.0.1:1", "x", config=CallConfig(ice=ice_configuration(["stun:127.0.0.1:3478"])))
    assert own.calls._ice_source is None
    asking = Peer("http://127.0.0.1:1", "y")
    assert asking.calls._ice_source is not None


@pytest.mark.usefixtures("loopback_ice")
@pytest_twisted.ensureDeferred
async def test_pcpeer_against_a_server_without_the_endpoint(pcsignal_server, run_twistd):
    _, url = pcsignal_server
    port, reference_url = listen_like_the_reference(url, (ice.PATH,))
    try:
        # Started without blocking: the proxy needs the reactor running.
        b = run_twistd("pcpeer", "--server", reference_url, "--name", "b", *PEER_ARGS)
        await in_thread(b, r"signed in to .* as b \(")
        caller = api_peer(reference_url, "a")
        await caller.start()
        call = await caller.call("b")
        await call.wait_first_frame("video")
        await in_thread(b, frames_from("a"))
        assert call.ice.iceServers == []
        await in_thread(b, r"no ICE servers from the signaling server \(/ice-servers answered 500\): "
                           r"using our own: none")
        await caller.stop()
        b.stop()
        assert "Traceback" not in b.output()
    finally:
        await port.stopListening()
