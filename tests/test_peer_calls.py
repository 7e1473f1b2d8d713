"""
pcpeer with real processes and real media: ``twistd pcpeer`` daemons
through a real ``twistd pcsignal`` on loopback, and in-process peers built
with the Python API (pcsignal.peer.peer.Peer) where a test needs several
callers.  Media is small (320x240 or less at 15 fps) to keep the suite fast.
"""

import re
import signal
import socket
import urllib.request

import av
import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from pcsignal import protocol
from pcsignal.peer.pattern import TestPatternLayout, read_text

from conftest import start_pcsignal
from peers import PEER_ARGS, api_peer, frames_from, in_thread, start_peer

pytestmark = pytest.mark.usefixtures("loopback_ice")


def sign_out(url, peer_id):
    with urllib.request.urlopen("%s/sign_out?peer_id=%d" % (url, peer_id), timeout=10) as response:
        assert response.status == 200


def test_two_daemons_call_record_bye_and_sign_out(pcsignal_server, run_twistd, tmp_path):
    _, url = pcsignal_server
    b, b_id = start_peer(run_twistd, url, "b", "--record", str(tmp_path / "calls.mp4"))
    a, a_id = start_peer(run_twistd, url, "a", "--call", "b")

    # Video and audio are decoded both ways, not just "connected".
    for proc, other in ((a, "b"), (b, "a")):
        proc.wait_for_log(r"codecs with %s \(\d+\): audio/opus 48000/2, video/VP8 90000" % (other,))
        proc.wait_for_log(frames_from(other))
        proc.wait_for_log(frames_from(other, kind="audio"))
    recording = b.wait_for_log(r"recording call with a \(%d\) to (\S+)" % (a_id,)).group(1)
    b.wait_for_log(frames_from("a", 60))  # four seconds of video at 15 fps

    # A hangs up on stopping: BYE ends the call on both sides.
    assert a.stop() == -signal.SIGTERM  # twistd re-raises SIGTERM after a clean stop
    assert re.search(r"call with b \(%d\) ended \(stopping\)" % (b_id,), a.output())
    b.wait_for_log(r"call with a \(%d\) ended \(BYE received\) after [\d.]+ s: sent audio \d+ frames" % (a_id,))
    b.wait_for_log(r"recorded call with a \(%d\) to" % (a_id,))

    # B's recording: A's 320x240 test pattern, several seconds of it.
    with av.open(recording) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (320, 240)
        assert container.streams.audio, "no audio stream recorded"
        assert container.duration / av.time_base >= 3.0
        frames = list(container.decode(video=0))
    assert len(frames) >= 45
    layout = TestPatternLayout(320, 240)
    luma = frames[-1].to_ndarray(format="gray")
    counter = read_text(luma, layout.counter_x, layout.counter_y, layout.unit, layout.counter_digits)
    assert counter.isdigit() and int(counter) >= 45, counter

    # A new caller; then B is signed out (no BYE): the call ends on the caller.
    a2, a2_id = start_peer(run_twistd, url, "a2", "--call", "b")
    a2.wait_for_log(frames_from("b"))
    sign_out(url, b_id)
    a2.wait_for_log(r"call with b \(%d\) ended \(peer signed out\)" % (b_id,))
    # B notices it was forgotten and signs in again by itself.
    b.wait_for_log(r"server (answered \d+ on /wait|closed our socket \(4500\)): it has forgotten us")
    b.wait_for_log(r"signed in to .* as b \((?!%d\))\d+\)" % (b_id,))
    assert a2.stop() == -signal.SIGTERM  # twistd re-raises SIGTERM after a clean stop
    assert b.stop() == -signal.SIGTERM  # twistd re-raises SIGTERM after a clean stop
    assert "Traceback" not in b.output() + a.output() + a2.output()


@pytest_twisted.ensureDeferred
async def test_one_daemon_serves_three_callers(pcsignal_server, run_twistd):
    _, url = pcsignal_server
    b, _ = start_peer(run_twistd, url, "b", "--max-calls=3")
    callers = [api_peer(url, "c%d" % i) for i in range(1, 4)]
    await defer.gatherResults([c.start() for c in callers])
    calls = await defer.gatherResults([c.call("b") for c in callers])
    # All three at once: frames flow both ways on every call.
    await defer.gatherResults([call.wait_first_frame("video") for call in calls])
    for i in range(1, 4):
        await in_thread(b, frames_from("c%d" % i))
    await defer.gatherResults([in_thread(b, r"call with c%d \(\d+\) connected" % i) for i in range(1, 4)])
    assert all(call.received["video"].frames >= 1 and call.end_reason is None for call in calls)
    # A fourth caller is declined (--max-calls): BYE.
    fourth = api_peer(url, "c4")
    await fourth.start()
    extra = await fourth.call("b")
    assert await extra.wait_ended() == "BYE received"
    await in_thread(b, r"declining call from c4 \(\d+\): already in 3 calls")
    # Hanging up sends BYE; one source served all calls: opened once, closed
    # when the last call ended.
    await defer.gatherResults([c.stop() for c in callers + [fourth]])
    for i in range(1, 4):
        await in_thread(b, r"call with c%d \(\d+\) ended \(BYE received\)" % i)
    await in_thread(b, "media source closed: no calls left")
    assert len(re.findall("media source opened", b.output())) == 1, b.output()
    assert b.stop() == -signal.SIGTERM  # twistd re-raises SIGTERM after a clean stop


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_daemon_signs_in_again_after_server_restart(run_twistd, transport):
    listen = "tcp:%d:interface=127.0.0.1" % (free_port(),)
    server, url = start_pcsignal(run_twistd, "--listen", listen)
    b, b_id = start_peer(run_twistd, url, "b", "--retry-delay=0.5", "--max-retry-delay=1",
                         "--transport", transport)
    assert server.stop() == -signal.SIGTERM  # twistd re-raises SIGTERM after a clean stop
    # B keeps its id while the server is away: it may come back knowing it.
    if transport == "http":
        await in_thread(b, r"the hanging GET failed \(.*refused.*\): waiting again as %d in" % (b_id,))
    else:
        await in_thread(b, r"socket to .* closed \(1001\): resuming")
        await in_thread(b, r"cannot resume at .*Connect call failed.*; retrying in")
    # Back on the same port, without a state file: it has forgotten B, who
    # signs in again without help, and can be called.
    server, _ = start_pcsignal(run_twistd, "--listen", listen)
    if transport == "http":
        await in_thread(b, r"no longer signed in: the server answered 500 on /wait: it has forgotten us")
    else:
        await in_thread(b, r"no longer signed in: the server refused to resume \(500 Peer most "
                           r"likely gone.\): it has forgotten us")
    await in_thread(b, r"signed in to .* as b \((?!%d\))\d+\)" % (b_id,))
    caller = api_peer(url, "a")
    await caller.start()
    call = await caller.call("b")
    await call.wait_first_frame("video")
    await in_thread(b, frames_from("a"))
    await caller.stop()
    assert b.stop() == -signal.SIGTERM  # twistd re-raises SIGTERM after a clean stop


def test_restart_with_a_state_file_is_invisible_to_pcpeer(run_twistd, tmp_path):
    """Hanging GETs: pcpeer waits again with its id until pcsignal is back from its
    state file; no new sign-in, and a message posted after the restart arrives."""
    listen = "tcp:%d:interface=127.0.0.1" % (free_port(),)
    state = str(tmp_path / "state.json")
    server, url = start_pcsignal(run_twistd, "--listen", listen, "--state-file", state)
    b, b_id = start_peer(run_twistd, url, "b", "--transport", "http", "--retry-delay=0.5",
                         "--max-retry-delay=1")
    with urllib.request.urlopen(url + "/sign_in?a", timeout=10) as response:
        a_id = int(response.headers["Pragma"])
    b.wait_for_log(r"a \(%d\) signed in" % (a_id,))
    assert server.stop() == -signal.SIGTERM
    assert re.search(r"state written to .*: 2 peers", server.output())
    b.wait_for_log(r"the hanging GET failed \(.*refused.*\): waiting again as %d in" % (b_id,))
    server, _ = start_pcsignal(run_twistd, "--listen", listen, "--state-file", state)
    server.wait_for_log(r"state restored from .*: 2 peers")
    with urllib.request.urlopen(urllib.request.Request(
            "%s/message?peer_id=%d&to=%d" % (url, a_id, b_id), data=b"BYE"), timeout=10) as response:
        assert response.status == 200
    # Read by the same B, who still knows a by name.
    b.wait_for_log(r"BYE from a \(%d\), with whom there is no call: ignored" % (a_id,))
    assert len(re.findall(r"signed in to ", b.output())) == 1, b.output()
    assert "sign-in" not in server.output()
    with urllib.request.urlopen(url + "/sign_in?c", timeout=10) as response:
        assert b"b,%d,1\n" % (b_id,) in response.read()
    assert b.stop() == -signal.SIGTERM
    assert "Traceback" not in b.output()


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_sign_in_waits_out_the_rate_limit(run_twistd, transport):
    """pcsignal's 429 with Retry-After: pcpeer waits that long, once, instead of hammering."""
    _, url = start_pcsignal(run_twistd, "--sign-in-burst", "1", "--sign-in-rate", "0.5")
    with urllib.request.urlopen(url + "/sign_in?first", timeout=10) as response:
        assert response.status == 200  # the address's only token: the next one in 2 s
    b = run_twistd("pcpeer", "--server", url, "--name", "b", *PEER_ARGS, "--transport", transport,
                   "--retry-delay=0.2", "--max-retry-delay=0.4")
    m = b.wait_for_log(r"cannot sign in to \S+: sign-in answered .*429.*Too many sign-ins from your "
                       r"address; retry in (\d+) s\..*; retrying in ([\d.]+) s")
    asked, delay = int(m.group(1)), float(m.group(2))
    assert 1 <= asked <= delay < asked + 0.2 + 0.05  # the pause asked for, plus up to one retry delay
    b.wait_for_log(r"signed in to .* as b \(\d+\)")
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'pcsignal_rejections_total{reason="sign_in_rate"} 1.0' in metrics, metrics
    assert b.stop() == -signal.SIGTERM
    assert "Traceback" not in b.output()


@pytest_twisted.ensureDeferred
async def test_nonsense_is_logged_and_ignored(pcsignal_server, run_twistd):
    _, url = pcsignal_server
    b, b_id = start_peer(run_twistd, url, "b")
    response = await treq.get(url + "/sign_in?raw")
    raw_id = int(response.headers.getRawHeaders("Pragma")[0])
    await treq.content(response)
    nonsense = [
        (b"{this is not json", r"ignoring message from raw \(%d\): not JSON"),
        (protocol.IceCandidate("0", 0, "candidate:1 1 udp 1 127.0.0.1 9 typ host").encode(),
         r"ignoring candidate from raw \(%d\): no call"),
        (protocol.SessionDescription("answer", "v=0\r\n").encode(), r"ignoring answer from raw \(%d\): we made no offer"),
        (protocol.SessionDescription("offer-loopback", "v=0\r\n").encode(), r"declining offer-loopback from raw \(%d\)"),
        (protocol.SessionDescription("offer", "garbage").encode(), r"declining call from raw \(%d\): unusable offer"),
        (b"BYE", r"BYE from raw \(%d\), with whom there is no call: ignored"),
    ]
    for body, logged in nonsense:
        response = await treq.post("%s/message?peer_id=%d&to=%d" % (url, raw_id, b_id), data=body)
        assert response.code == 200
        await treq.content(response)
        await in_thread(b, logged % (raw_id,))
    # Still running, and still answers calls.
    caller = api_peer(url, "a")
    await caller.start()
    call = await caller.call("b")
    await call.wait_first_frame("video")
    await caller.stop()
    assert b.stop() == -signal.SIGTERM  # twistd re-raises SIGTERM after a clean stop
    assert "Traceback" not in b.output()


def test_restart_of_a_sequential_id_server_keeps_the_peer_that_took_our_old_id(run_twistd):
    """After a restart another peer holds pcpeer's old id: it is someone else, not our stale entry."""
    listen = "tcp:%d:interface=127.0.0.1" % (free_port(),)
    server, url = start_pcsignal(run_twistd, "--listen", listen, "--sequential-ids")
    b, b_id = start_peer(run_twistd, url, "b", "--call", "x", "--retry-delay=2", "--max-retry-delay=2")
    assert server.stop() == -signal.SIGTERM  # twistd re-raises SIGTERM after a clean stop
    b.wait_for_log(r"cannot (sign in to|resume at) .*; retrying in")  # hanging GETs | WebSocket
    # The new server numbers from the start again: x signs in first, with b's old id.
    start_pcsignal(run_twistd, "--listen", listen, "--sequential-ids")
    with urllib.request.urlopen(url + "/sign_in?x", timeout=10) as response:
        x_id = int(response.headers["Pragma"])
    assert x_id == b_id
    b.wait_for_log(r"signed in to .* as b \((?!%d\))\d+\); 1 other peer" % (b_id,))
    # x is listed, so --call x fires; and nothing of ours is "stale".
    b.wait_for_log(r"x \(%d\) is listed: calling it \(--call\)" % (x_id,))
    b.wait_for_log(r"sending offer to x \(%d\)" % (x_id,))
    assert "signing out our previous id" not in b.output()
    assert b.stop() == -signal.SIGTERM


def test_https_url_to_a_plain_http_server_says_so(pcsignal_server, run_twistd):
    _, url = pcsignal_server
    peer = run_twistd("pcpeer", "--server", url.replace("http://", "https://"), "--name", "tls",
                      "--retry-delay=1", "--max-retry-delay=1")
    m = peer.wait_for_log(r"cannot sign in to https://.*: no answer within \d+ s: it speaks plain HTTP, "
                          r"not TLS \(use (http://\S+)\); retrying in (\d+\.\d) s", timeout=15)
    assert m.group(1) == url
    assert 1.0 <= float(m.group(2)) <= 2.0  # 1 s plus up to 1 s of jitter, logged to 0.1 s (1.96 shows 2.0)
    assert peer.stop() == -signal.SIGTERM
    assert "Traceback" not in peer.output()


@pytest_twisted.ensureDeferred
async def test_hostile_messages_cost_a_line_each_and_harm_no_call(run_twistd):
    """Garbage, a huge message, a BYE storm: one line each; the daemon and its call go on."""
    _, url = start_pcsignal(run_twistd, "--max-message-bytes", str(1024 * 1024))
    b, b_id = start_peer(run_twistd, url, "b")
    caller = api_peer(url, "a")
    a_id = await caller.start()
    call = await caller.call("b")
    await call.wait_first_frame("video")
    response = await treq.get(url + "/sign_in?raw")
    raw_id = int(response.headers.getRawHeaders("Pragma")[0])
    await treq.content(response)

    async def post(body, sender=raw_id):
        answer = await treq.post("%s/message?peer_id=%d&to=%d" % (url, sender, b_id), data=body)
        assert answer.code == 200
        await treq.content(answer)

    await post(b"x" * (600 * 1024))
    # Over hanging GETs the answer is read up to the limit; over WebSocket the frame.
    await in_thread(b, r"dropped a message: (an answer of more than 262144 bytes \(from peer %d\)|"
                       r"a frame of more than 262144 bytes)" % (raw_id,))
    for _ in range(200):
        await post(b"BYE")
    for _ in range(50):
        await post(b"{not json" + b"!" * 5000)
    await post(protocol.SessionDescription("offer", "v=0\r\n" + "garbage " * 5000).encode())
    await post(protocol.SessionDescription("x" * 5000, "v=0").encode())
    # Garbage in the call itself, as if from the caller: ignored, the call stays.
    await post(protocol.IceCandidate("0", 0, "candidate:" + "junk " * 2000).encode(), sender=a_id)
    await in_thread(b, r"ignoring bad candidate from a \(%d\)" % (a_id,))
    await in_thread(b, r"declining call from raw \(%d\): unusable offer" % (raw_id,))
    await in_thread(b, r"ignoring session description of type 'x+\.\.\. \(5002 characters\)")
    frames = call.received["video"].frames
    await in_thread(b, frames_from("a", 100))
    assert call.end_reason is None and call.received["video"].frames > frames
    await caller.stop()
    await in_thread(b, r"call with a \(%d\) ended \(BYE received\)" % (a_id,))
    output = b.output()
    assert output.count("BYE from raw") == 1
    assert output.count("ignoring message from raw") == 1
    assert "no longer signed in" not in output and "Traceback" not in output
    assert max(len(line) for line in output.splitlines()) < 2000
    assert b.stop() == -signal.SIGTERM


@pytest_twisted.ensureDeferred
async def test_auto_transport_falls_back_to_hanging_gets_without_websocket(pcsignal_server, run_twistd):
    from proxies import listen_without_websocket

    _, url = pcsignal_server
    port, plain_url = listen_without_websocket(url)
    try:
        # Started without blocking: the proxy needs the reactor running.
        b = run_twistd("pcpeer", "--server", plain_url, "--name", "b", *PEER_ARGS)
        await in_thread(b, r"has no WebSocket transport \(the upgrade answered 500\): using hanging GETs")
        await in_thread(b, r"signed in to .* as b \(\d+\); ")
        caller = api_peer(url, "a")  # straight to pcsignal: over WebSocket
        await caller.start()
        assert caller.signaling.using == "websocket"
        call = await caller.call("b")
        await call.wait_first_frame("video")
        await in_thread(b, frames_from("a"))
        await caller.stop()
        b.stop()
        assert "Traceback" not in b.output()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_pcpeer_resumes_its_socket_after_losing_it(pcsignal_server):
    _, url = pcsignal_server
    a, b = api_peer(url, "a"), api_peer(url, "b")
    a_id = await a.start()
    await b.start()
    # Once a's client proved it read b's arrival (a pong), nothing is held for a.
    while b"pcsignal_queued_items 0.0" not in await treq.content(await treq.get(url + "/metrics")):
        await deferLater(reactor, 0.05)
    # A hanging GET for a's id takes the peer over: the server closes a's
    # socket (4409), and a resumes on a new one, taking it back.
    taken = treq.get("%s/wait?peer_id=%d" % (url, a_id))
    response = await taken
    assert response.code == 409
    assert (await treq.content(response)) == b"Replaced by a newer /wait for this peer."
    received = defer.Deferred()
    a.signaling.once("message", lambda peer_id, body: received.callback((peer_id, body)))
    await b.signaling.send(a_id, b"after the resume")
    assert await received == (b.signaling.peer_id, b"after the resume")
    assert a.signaling.peer_id == a_id  # the same peer, never signed out
    await a.stop()
    await b.stop()


@pytest_twisted.ensureDeferred
async def test_pcpeer_over_websocket_drops_a_frame_too_large_and_stays(run_twistd):
    _, url = start_pcsignal(run_twistd, "--max-message-bytes", str(1024 * 1024))
    a = api_peer(url, "a")
    a_id = await a.start()
    assert a.signaling.using == "websocket"
    received = defer.Deferred().addTimeout(20, reactor)
    a.signaling.once("message", lambda peer_id, body: received.callback(body))
    response = await treq.get(url + "/sign_in?raw")
    raw_id = int(response.headers.getRawHeaders("Pragma")[0])
    await treq.content(response)
    for body in (b"x" * (300 * 1024), b"after the big one"):
        answer = await treq.post("%s/message?peer_id=%d&to=%d" % (url, raw_id, a_id), data=body)
        assert answer.code == 200
        await treq.content(answer)
    assert await received == b"after the big one"  # the big one dropped; the peer stays
    assert a.signaling.peer_id == a_id
    await a.stop()
