"""
The WebSocket transport at /ws, against a real ``twistd pcsignal``.

The WebSocket side is aiohttp's client (tests/wsclients.py), the HTTP side
the native client's way of talking (tests/httpclients.py): neither is
pcsignal's own code.  Every test runs on each channel (``pcsignal_backend``:
in memory, and on a real redis-server); tests/test_redis.py has WebSocket
and hanging-GET peers on two instances of one Redis.
"""

import base64
import re
import signal
import threading
import time

import aiohttp
import pytest

from conftest import start_pcsignal
from httpclients import native, native_raw
from wsclients import Closed, Socket

pytestmark = pytest.mark.usefixtures("pcsignal_backend")


@pytest.fixture
def serve(run_twistd):
    """Start a pcsignal on the module's channel: serve(*args) -> (process, url)."""
    return lambda *args: start_pcsignal(run_twistd, *args)


@pytest.fixture
def server(serve):
    return serve()


def metric(url, name):
    match = re.search(rb"^%s (\S+)$" % (name.encode(),), native(url, "GET", "/metrics").body, re.M)
    return float(match.group(1))


def until(condition, timeout=10, what="condition"):
    """Poll a cheap condition on the server's metrics (no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what + " never became true"
        time.sleep(0.02)


def http_sign_in(url, name):
    answer = native(url, "GET", "/sign_in?" + name)
    assert answer.status == 200
    return answer.pragma


def http_wait(url, peer_id):
    return native(url, "GET", "/wait?peer_id=%d" % (peer_id,))


# -- the upgrade -----------------------------------------------------------------


def test_upgrade_offers_the_subprotocol_on_the_same_listener(server):
    _, url = server
    sock = Socket(url)
    assert sock.protocol == "pcsignal.v1"
    # The HTTP paths keep working on that listener.
    assert native(url, "GET", "/healthz").status == 200
    sock.close()


def test_plain_requests_to_ws_are_refused(server):
    _, url = server
    answer = native(url, "GET", "/ws")
    assert (answer.status, answer.body) == (426, b"This path takes WebSocket connections only.")
    answer = native(url, "POST", "/ws", b"x")
    assert (answer.status, answer.header(b"Allow")) == (405, b"GET, OPTIONS")
    # An upgrade autobahn cannot accept: its 400, and the server goes on.
    answer = native_raw(url, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             b"Sec-WebSocket-Version: 99\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 WebSocket version 99 not supported")
    assert metric(url, 'pcsignal_rejections_total{reason="bad_handshake"}') == 1
    assert native(url, "GET", "/healthz").status == 200


# -- one channel, two transports ----------------------------------------------------


def test_websocket_and_hanging_get_peers_list_each_other_and_see_presence(server):
    _, url = server
    alice = Socket(url)
    signed_in = alice.sign_in("alice smith")
    assert signed_in["name"] == "alice smith" and signed_in["peers"] == []
    assert isinstance(signed_in["token"], str) and len(signed_in["token"]) >= 16
    alice_id = signed_in["id"]

    answer = native(url, "GET", "/sign_in?bob")
    bob_id = answer.pragma
    assert answer.body == b"bob,%d,1\nalice smith,%d,1\n" % (bob_id, alice_id)
    joined = alice.expect("peer")
    assert (joined["id"], joined["name"], joined["connected"], joined["n"]) == (bob_id, "bob", True, 1)

    carol = Socket(url)
    listed = carol.sign_in("carol")["peers"]
    assert sorted((p["id"], p["name"]) for p in listed) == sorted(
        [(alice_id, "alice smith"), (bob_id, "bob")])
    carol_frame = alice.expect("peer")
    assert carol_frame["name"] == "carol" and carol_frame["n"] == 2
    # Bob, on hanging GETs, hears of carol (a WebSocket peer) like of anyone.
    assert http_wait(url, bob_id).body == b"carol,%d,1\n" % (carol_frame["id"],)

    # Leaving, both ways.
    assert native(url, "GET", "/sign_out?peer_id=%d" % (bob_id,)).status == 200
    left = alice.expect("peer")
    assert (left["id"], left["connected"]) == (bob_id, False)
    assert carol.expect("peer")["connected"] is False
    dave_id = http_sign_in(url, "dave")
    assert carol.expect("peer")["name"] == "dave"
    carol.send({"type": "sign_out"})
    closed = carol.expect_closed()
    assert (closed.code, closed.reason) == (1000, "Signed out.")
    assert http_wait(url, dave_id).body == b"carol,%d,0\n" % (carol_frame["id"],)
    alice.close()


@pytest.mark.parametrize("body", [
    "plain text".encode(),
    "héllo wörld ✓ 日本".encode(),
    b'{"type": "offer", "sdp": "v=0\\r\\n"}',
    b"\xff\xfe\x00 not UTF-8 \xc3",
    bytes(range(256)),
])
def test_bodies_cross_byte_exact_both_ways(server, body):
    _, url = server
    alice = Socket(url)
    alice_id = alice.sign_in("alice")["id"]
    bob_id = http_sign_in(url, "bob")
    alice.expect("peer")
    try:
        text = body.decode("utf-8")
        frame = {"type": "message", "to": bob_id, "data": text, "seq": 7}
    except UnicodeDecodeError:
        frame = {"type": "message", "to": bob_id, "seq": 7,
                 "data_base64": base64.b64encode(body).decode()}
    alice.send(frame)
    assert alice.expect("ack") == {"type": "ack", "seq": 7}
    answer = http_wait(url, bob_id)
    assert (answer.status, answer.pragma, answer.body) == (200, alice_id, body)
    expected_type = b"text/plain" if "data" in frame else b"application/octet-stream"
    assert answer.header(b"Content-Type") == expected_type

    # And back: an HTTP POST reaches the WebSocket peer byte-exact.
    assert native(url, "POST", "/message?peer_id=%d&to=%d" % (bob_id, alice_id), body).status == 200
    got = alice.expect("message")
    assert got["from"] == bob_id and got["n"] == 2
    if "data" in got:
        assert got["data"].encode("utf-8") == body
    else:
        assert base64.b64decode(got["data_base64"]) == body
        with pytest.raises(UnicodeDecodeError):
            body.decode("utf-8")
    alice.close()


def test_websocket_peers_talk_to_each_other_and_to_themselves(server):
    _, url = server
    alice, bob = Socket(url), Socket(url)
    alice_id = alice.sign_in("alice")["id"]
    bob_id = bob.sign_in("bob")["id"]
    alice.expect("peer")
    for i in range(5):
        alice.send({"type": "message", "to": bob_id, "data": "m%d" % i})
    assert [(f["from"], f["data"]) for f in (bob.expect("message") for _ in range(5))] == [
        (alice_id, "m%d" % i) for i in range(5)]
    # To oneself, as the reference allows over HTTP: through the mailbox.
    bob.send({"type": "message", "to": bob_id, "data": "note to self"})
    assert bob.expect("message")["data"] == "note to self"
    alice.close()
    bob.close()


# -- resume -------------------------------------------------------------------------


def test_resume_after_a_killed_socket_gets_everything_in_order(server):
    _, url = server
    # No pongs: nothing this socket reads is ever proven read.
    alice = Socket(url, autoping=False)
    signed_in = alice.sign_in("alice")
    alice_id, token = signed_in["id"], signed_in["token"]
    bob_id = http_sign_in(url, "bob")
    first = alice.expect("peer")
    for i in range(3):
        native(url, "POST", "/message?peer_id=%d&to=%d" % (bob_id, alice_id), b"before %d" % i)
    before = [alice.expect("message") for _ in range(3)]
    assert [f["n"] for f in before] == [first["n"] + 1, first["n"] + 2, first["n"] + 3]
    alice.kill()
    # Meanwhile: messages queue; alice is still listed (a missed wait).
    for i in range(3):
        answer = native(url, "POST", "/message?peer_id=%d&to=%d" % (bob_id, alice_id), b"during %d" % i)
        assert answer.status == 200
    assert b"alice,%d,1" % (alice_id,) in native(url, "GET", "/sign_in?carol").body

    # The client handled up to "before 0": the rest comes again, then the new ones.
    again = Socket(url)
    again.send({"type": "resume", "id": alice_id, "token": token, "last": before[0]["n"]})
    assert again.expect("resumed") == {"type": "resumed", "id": alice_id}
    frames = [again.receive() for _ in range(6)]
    assert [(f["type"], f.get("data")) for f in frames] == [
        ("message", "before 1"), ("message", "before 2"),
        ("message", "during 0"), ("message", "during 1"), ("message", "during 2"),
        ("peer", None)]  # carol
    ns = [f["n"] for f in frames]
    assert ns == list(range(before[1]["n"], before[1]["n"] + 6))
    assert frames[-1]["name"] == "carol"
    # Nothing more: no message twice.
    again.send({"type": "message", "to": alice_id, "data": "marker"})
    assert again.expect("message")["data"] == "marker"
    again.close()


def test_resume_acks_through_last_and_later_pongs_settle(server):
    _, url = server
    alice = Socket(url)  # answers pings
    signed_in = alice.sign_in("alice")
    bob_id = http_sign_in(url, "bob")
    alice.expect("peer")
    for i in range(4):
        native(url, "POST", "/message?peer_id=%d&to=%d" % (bob_id, signed_in["id"]), b"m%d" % i)
    [alice.expect("message") for _ in range(4)]
    # Pongs to the settling ping prove alice read all five: nothing is held.
    until(lambda: metric(url, "pcsignal_queued_items") == 0, what="settled by pong")
    alice.kill()
    resumed = Socket(url)
    resumed.send({"type": "resume", "id": signed_in["id"], "token": signed_in["token"], "last": 5})
    resumed.expect("resumed")
    resumed.send({"type": "message", "to": signed_in["id"], "data": "next"})
    assert resumed.expect("message") == {"type": "message", "from": signed_in["id"],
                                         "data": "next", "n": 6}
    resumed.close()


def test_without_pongs_items_stay_unsettled(serve):
    _, url = serve("--ping-interval", "60")
    alice = Socket(url, autoping=False)
    alice_id = alice.sign_in("alice")["id"]
    bob_id = http_sign_in(url, "bob")
    alice.expect("peer")
    native(url, "POST", "/message?peer_id=%d&to=%d" % (bob_id, alice_id), b"m")
    alice.expect("message")
    # The settling ping comes, unanswered: both items stay held.
    assert alice.expect_ping() == b"2"
    assert metric(url, "pcsignal_queued_items") == 2
    alice.close()


def test_resume_with_a_wrong_token_is_refused(server):
    _, url = server
    alice = Socket(url)
    alice_id = alice.sign_in("alice")["id"]
    alice.kill()
    thief = Socket(url)
    thief.send({"type": "resume", "id": alice_id, "token": "guess", "last": 0, "seq": 3})
    assert thief.expect("error") == {"type": "error", "seq": 3, "status": 500,
                                     "text": "Peer most likely gone."}
    # Still usable: it may sign in as itself.
    assert thief.sign_in("thief")["peers"] == [{"id": alice_id, "name": "alice"}]
    thief.close()


def test_a_newer_socket_resuming_replaces_the_older(server):
    _, url = server
    old = Socket(url)
    signed_in = old.sign_in("alice")
    new = Socket(url)
    new.send({"type": "resume", "id": signed_in["id"], "token": signed_in["token"], "last": 0})
    new.expect("resumed")
    closed = old.expect_closed()
    assert (closed.code, closed.reason) == (4409, "Resumed on a newer connection.")
    bob_id = http_sign_in(url, "bob")
    assert new.expect("peer")["id"] == bob_id
    new.close()


def test_an_http_wait_for_a_websocket_peer_takes_it_over(server):
    _, url = server
    alice = Socket(url, autoping=False)
    alice_id = alice.sign_in("alice")["id"]
    bob_id = http_sign_in(url, "bob")
    result = {}
    waiting = threading.Thread(target=lambda: result.update(answer=http_wait(url, alice_id)))
    # Alice's socket holds bob's presence unproven: it comes back to /wait.
    waiting.start()
    assert alice.expect("peer")["id"] == bob_id  # written, never proven read
    closed = alice.expect_closed()
    assert closed.code == 4409
    waiting.join(10)
    assert result["answer"].body == b"bob,%d,1\n" % (bob_id,)


# -- limits and bad frames -----------------------------------------------------------


BAD_FRAMES = [
    ("not json", "Frame is not JSON."),
    ("[1, 2]", "A frame is a JSON object."),
    ('{"no": "type"}', "Unknown frame type null."),
    ('{"type": "shout"}', 'Unknown frame type "shout".'),
    ('{"type": "message", "data": "x"}', "Missing field 'to'."),
    ('{"type": "message", "to": "7", "data": "x"}', "Field 'to' must be a peer id."),
    ('{"type": "message", "to": true, "data": "x"}', "Field 'to' must be a peer id."),
    ('{"type": "message", "to": 7}', "Missing field 'data'."),
    ('{"type": "message", "to": 7, "data": 5}', "Field 'data' must be text."),
    ('{"type": "message", "to": 7, "data": "\\ud800"}', "Field 'data' is not valid Unicode."),
    ('{"type": "message", "to": 7, "data_base64": "%%%"}', "Field 'data_base64' is not base64."),
    ('{"type": "message", "to": 7, "data": ""}', "Message body required."),
    ('{"type": "message", "to": 7, "data": "x", "seq": -1}', "Field 'seq' must be a whole number."),
    ('{"type": "sign_in"}', "Missing field 'name'."),
    ('{"type": "sign_in", "name": ["x"]}', "Field 'name' must be text."),
    ('{"type": "resume", "id": 1}', "Missing field 'token'."),
    ('{"type": "resume", "id": 1, "token": "t", "last": -2}', "Field 'last' must be a whole number."),
    ('{"type": "sign_out"}', "Not signed in."),
]


def test_bad_frames_get_error_frames_and_the_socket_stays(server):
    process, url = server
    sock = Socket(url)
    for text, error in BAD_FRAMES:
        sock.send_text(text)
        assert sock.expect("error") == {"type": "error", "status": 400, "text": error}, text
    sock.send({"type": "message", "to": 7, "data": "x", "seq": 1})
    assert sock.expect("error") == {"type": "error", "seq": 1, "status": 400, "text": "Sign in first."}
    sock.send_bytes(b"\x00binary")
    assert sock.expect("error")["text"] == "Binary frames are not accepted; send JSON text."
    me = sock.sign_in("fine")["id"]
    sock.send({"type": "sign_in", "name": "again"})
    assert sock.expect("error")["text"] == "Already signed in."
    sock.send({"type": "message", "to": me, "data": "still here"})
    assert sock.expect("message")["data"] == "still here"
    sock.close()
    assert "Traceback" not in process.output()


def test_a_text_frame_that_is_not_utf8_closes_with_1007(server):
    _, url = server
    sock = Socket(url)
    sock.send_raw_text_frame(b'{"type": "sign_in", "name": "\xff"}')
    assert sock.expect_closed().code == 1007


def test_a_frame_over_the_size_limit_closes_with_1009(serve):
    process, url = serve("--max-message-bytes", "1000")
    sock = Socket(url)
    me = sock.sign_in("big")["id"]
    prefix = '{"type":"message","to":%d,"data":"' % (me,)
    data = "x" * (1000 - len(prefix) - 2)
    sock.send_text(prefix + data + '"}')  # 1000 bytes: fits
    assert sock.expect("message")["data"] == data
    sock.send_text(prefix + data + 'x"}')
    assert sock.expect_closed().code == 1009
    assert metric(url, 'pcsignal_rejections_total{reason="too_large"}') == 1
    assert "Traceback" not in process.output()


def test_refusals_are_error_frames_with_the_http_statuses_and_texts(serve):
    _, url = serve("--max-queue", "2", "--max-queued-bytes", "100")
    sock = Socket(url)
    sock.sign_in("sender")
    bob_id = http_sign_in(url, "bob")
    sock.expect("peer")
    sock.send({"type": "message", "to": bob_id, "data": "1", "seq": 1})
    assert sock.expect("ack")["seq"] == 1
    sock.send({"type": "message", "to": bob_id, "data": "2", "seq": 2})
    assert sock.expect("ack")["seq"] == 2
    sock.send({"type": "message", "to": bob_id, "data": "3", "seq": 3})
    assert sock.expect("error") == {
        "type": "error", "seq": 3, "status": 503,
        "text": "Mailbox of peer %d is full (2 items); message not queued, retry later." % (bob_id,)}
    sock.send({"type": "message", "to": bob_id, "data": "y" * 101, "seq": 4})
    assert sock.expect("error") == {
        "type": "error", "seq": 4, "status": 503,
        "text": "Server busy: 100 bytes of messages wait to be picked up; message not queued, "
                "retry later."}
    sock.send({"type": "message", "to": 12345, "data": "z"})
    assert sock.expect("error") == {"type": "error", "status": 500, "text": "Peer most likely gone."}
    sock.close()


def test_sign_ins_over_websocket_share_the_address_rate_limit(serve):
    _, url = serve("--sign-in-rate", "0.1", "--sign-in-burst", "2")
    first, second, third = Socket(url), Socket(url), Socket(url)
    first.sign_in("one")
    assert native(url, "GET", "/sign_in?two").status == 200
    third.send({"type": "sign_in", "name": "three", "seq": 9})
    refused = third.expect("error")
    assert (refused["seq"], refused["status"]) == (9, 429)
    assert re.fullmatch(r"Too many sign-ins from your address; retry in \d+ s\.", refused["text"])
    # What HTTP's Retry-After says, as a number.
    assert refused["retry_after"] == int(re.search(r"\d+", refused["text"]).group())
    for sock in (first, second, third):
        sock.close()


def test_websockets_count_toward_the_connection_cap(serve):
    process, url = serve("--max-connections", "3")
    sockets = [Socket(url) for _ in range(3)]
    with pytest.raises(aiohttp.ClientError):
        Socket(url)  # the fourth connection is closed before a byte is read
    process.wait_for_log(r"refused connection from 127\.0\.0\.1:\d+: 3 open: max_connections")
    sockets.pop().close()
    until(lambda: metric(url, "pcsignal_websockets") == 2, what="one socket closed")
    sockets.append(Socket(url))  # room again
    assert sockets[-1].sign_in("fits")["peers"] == []
    for sock in sockets:
        sock.close()


# -- liveness and shutdown -------------------------------------------------------------


def test_a_socket_that_stops_answering_pings_is_dropped_and_its_peer_stays(serve):
    process, url = serve("--ping-interval", "0.3")
    alice = Socket(url, autoping=False)
    signed_in = alice.sign_in("alice")
    process.wait_for_log(r"no pong from peer %d within 0.3s: dropping its socket" % (signed_in["id"],))
    with pytest.raises(Closed):
        alice.receive(timeout=5)
    # The peer stays, and its client can come back.
    again = Socket(url)
    again.send({"type": "resume", "id": signed_in["id"], "token": signed_in["token"], "last": 0})
    again.expect("resumed")
    again.close()


def test_sighup_applies_a_new_ping_interval_and_frame_limit(serve, tmp_path):
    config = tmp_path / "pcsignal.conf"
    config.write_text("--ping-interval 60 --max-message-bytes 1000\n")
    process, url = serve("--config", str(config))
    config.write_text("--ping-interval 0.3 --max-message-bytes 100\n")
    process.proc.send_signal(signal.SIGHUP)
    process.wait_for_log(r"reloaded .*--max-message-bytes 1000 -> 100.*--ping-interval 60(\.0)? -> 0\.3")
    # A socket opened now has the new frame limit, and is pinged at the new pace.
    sock = Socket(url, autoping=False)
    sock.send_text('{"type": "sign_in", "name": "%s"}' % ("x" * 90,))
    assert sock.expect_closed().code == 1009
    quiet = Socket(url, autoping=False)
    quiet.sign_in("quiet")
    process.wait_for_log(r"no pong from peer \d+ within 0.3s: dropping its socket")


def test_a_parked_socket_counts_as_live(serve):
    _, url = serve("--peer-timeout", "1", "--ping-interval", "0.2")
    alice, bob = Socket(url), Socket(url)
    alice_id = alice.sign_in("alice")["id"]
    bob.sign_in("bob")
    alice.expect("peer")
    time.sleep(2.5)  # past the peer timeout: only their parked waits keep them
    bob.send({"type": "message", "to": alice_id, "data": "still?"})
    assert alice.expect("message")["data"] == "still?"
    alice.close()
    bob.close()


def test_a_socket_that_serves_no_peer_is_closed_at_the_request_timeout(serve):
    process, url = serve("--request-timeout", "0.5")
    idle, active = Socket(url), Socket(url)
    active_id = active.sign_in("active")["id"]
    closed = idle.expect_closed()
    assert (closed.code, closed.reason) == (1008, "No sign_in or resume within 0.5 s.")
    process.wait_for_log(r"refused WebSocket without sign_in or resume within 0.5s: request_timeout")
    active.send({"type": "message", "to": active_id, "data": "still open"})
    assert active.expect("message")["data"] == "still open"
    active.close()


def test_shutdown_closes_sockets_with_going_away(server):
    process, url = server
    sock = Socket(url)
    sock.sign_in("alice")
    process.proc.send_signal(signal.SIGTERM)
    closed = sock.expect_closed()
    assert (closed.code, closed.reason) == (1001, "Server shutting down.")
    assert process.proc.wait(10) in (0, -signal.SIGTERM)
    process.stop()  # collects the rest of its log
    assert "Traceback" not in process.output()


def test_metrics_count_open_sockets(server):
    _, url = server
    sockets = [Socket(url) for _ in range(3)]
    until(lambda: metric(url, "pcsignal_websockets") == 3, what="3 sockets")
    for sock in sockets:
        sock.close()
    until(lambda: metric(url, "pcsignal_websockets") == 0, what="no sockets")
