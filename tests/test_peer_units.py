"""
pcpeer parts that need no signaling server: the test pattern, recording
names, the signaling client's back-off (on task.Clock, against a refused
loopback port), the call manager between real in-process RTCPeerConnections
(glare, trickled candidates, a plain aiortc caller with a data channel),
and the tap's options.
"""

import asyncio
import os
import re
import socket
import subprocess
import sys

import pytest
import pytest_twisted
import txaio
from aiortc import RTCPeerConnection, RTCSessionDescription
from twisted.internet import defer, task
from twisted.web import resource, server
from twisted.web.server import Site
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python import usage

from pcsignal import protocol
from pcsignal.peer import tap
from pcsignal.peer.call import CallConfig, CallManager
from pcsignal.peer.ice import restrict_host_addresses
from pcsignal.peer.media import SharedSource, pattern_source
from pcsignal.peer.recording import recording_path
from pcsignal.peer.pattern import TestPatternVideoTrack, ToneAudioTrack, read_text
from pcsignal.peer.signaling import SignalingClient

from conftest import ROOT, TWISTD

txaio.use_twisted()
SMALL = dict(width=160, height=120, fps=15)


def aio(awaitable):
    """Await asyncio work (aiortc's) from these Twisted coroutines."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(awaitable))


@pytest.fixture(autouse=True)
def loopback_only():
    """Host candidates on 127.0.0.1 only (the machine's other addresses are off limits)."""
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


# -- media ---------------------------------------------------------------------


def test_pattern_frames_carry_a_readable_counter():
    track = TestPatternVideoTrack(320, 240, 15)
    layout = track.layout
    frame = track.render(4321, 0.0)
    assert frame.shape == (240 * 3 // 2, 320)
    luma = frame[:240]
    assert read_text(luma, layout.counter_x, layout.counter_y, layout.unit, 6) == "004321"
    assert read_text(luma, layout.clock_x, layout.clock_y, layout.unit, 2) == "00"
    # The picture moves: consecutive frames differ above the text band.
    assert (track.render(1, 0.0)[: layout.band_top] != track.render(2, 0.0)[: layout.band_top]).any()


@pytest_twisted.ensureDeferred
async def test_pattern_tracks_produce_paced_frames():
    video, audio = TestPatternVideoTrack(160, 120, 30), ToneAudioTrack()
    frames = [await aio(video.recv()) for _ in range(3)]
    assert [(f.width, f.height) for f in frames] == [(160, 120)] * 3
    assert [f.pts for f in frames] == [0, 3000, 6000]
    sound = await aio(audio.recv())
    assert (sound.sample_rate, sound.samples) == (48000, 960)
    assert abs(sound.to_ndarray()).max() > 1000  # a tone, not silence


def test_recording_names_do_not_overwrite(tmp_path):
    template = str(tmp_path / "rec.mp4")
    first = recording_path(template, "bob smith/../x", 42)
    assert re.fullmatch(r"rec-bob_smith_.._x-42-\d{8}T\d{6}\.mp4", os.path.basename(first))
    open(first, "w").close()
    second = recording_path(template, "bob smith/../x", 42)
    assert second != first and second.endswith("-2.mp4")


# -- signaling back-off ----------------------------------------------------------


def refused_url():
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d" % s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_signaling_backs_off_doubling_to_cap_with_jitter():
    """Twisted's backoffPolicy: 2, 4, 8, 10, 10 s, each plus up to 2 s of jitter, as logged."""
    clock = task.Clock()
    client = SignalingClient(refused_url(), "x", clock=clock, retry_delay=2.0, max_retry_delay=10.0)
    events = []
    client.log = Logger(namespace="test", observer=events.append)
    retries = defer.DeferredQueue()
    client.on("retrying", lambda delay, reason: retries.put((delay, reason)))
    client.start().addErrback(lambda f: None)
    delays = []
    for _ in range(5):
        delay, reason = await retries.get()
        assert "refused" in reason.lower()
        delays.append(delay)
        # The retry waits on the clock, for exactly that delay...
        [retry] = clock.getDelayedCalls()
        assert retry.getTime() == clock.seconds() + delay
        # ...and the log line says so.
        assert formatEvent(events[-1]).endswith("retrying in %.1f s" % (delay,))
        clock.advance(delay)
    for delay, base in zip(delays, [2, 4, 8, 10, 10]):
        assert base <= delay < base + 2.0
    assert len({delay - int(delay) for delay in delays}) > 1  # jittered, not in lockstep
    await client.stop()


class ScriptedServer(resource.Resource):
    """
    A real HTTP server on loopback whose answers come from a script: each
    path's next (status, headers, body); a path with nothing left parks.
    """

    isLeaf = True

    def __init__(self, script):
        resource.Resource.__init__(self)
        self.script = script
        self.requests = []  # (path, query)
        self.parked = defer.DeferredQueue()

    def render(self, request):
        path = request.path.decode()
        self.requests.append((path, request.uri.decode().partition("?")[2]))
        if not self.script.get(path):
            self.parked.put(path)
            return server.NOT_DONE_YET
        code, headers, body = self.script[path].pop(0)
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


def logged(client, text):
    """A Deferred that fires when the client logs a line containing text."""
    seen = defer.Deferred()

    def observe(event):
        if text in formatEvent(event) and not seen.called:
            seen.callback(formatEvent(event))

    client.log = Logger(namespace="test", observer=observe)
    return seen


@pytest_twisted.ensureDeferred
async def test_429_waits_the_retry_after_on_sign_in_wait_and_message():
    """Retry-After is honoured (capped at 60 s, plus jitter) on every request; a 503 on /wait keeps our id."""
    from twisted.internet import reactor

    site = ScriptedServer({
        "/sign_in": [(429, {"Retry-After": "7"}, b"Too many sign-ins from your address; retry in 7 s."),
                     (200, {"Pragma": "5"}, b"x,5,1\n")],
        "/wait": [(429, {"Retry-After": "3"}, b"slow down"), (503, {}, b"Server shutting down.")],
        "/message": [(429, {"Retry-After": "100"}, b""), (200, {}, b"")],
        "/sign_out": [(200, {}, b"")],
    })
    port = reactor.listenTCP(0, Site(site), interface="127.0.0.1")
    clock = task.Clock()
    client = SignalingClient("http://127.0.0.1:%d" % port.getHost().port, "x", clock=clock,
                             retry_delay=2.0, max_retry_delay=10.0)
    retries = defer.DeferredQueue()
    client.on("retrying", lambda delay, reason: retries.put((delay, reason)))
    signed_in = client.start()

    async def retried(low, high, why):
        delay, reason = await retries.get()
        assert why in reason and low <= delay < high, (delay, reason)
        [retry] = clock.getDelayedCalls()  # the retry waits on the clock, for that delay
        assert retry.getTime() == clock.seconds() + delay
        clock.advance(delay)

    await retried(7, 9, "sign-in answered 429")
    assert await signed_in == 5
    await retried(3, 5, "the server answered 429 on /wait")
    await retried(4, 6, "the server answered 503 on /wait")  # back-off (second failure): same id
    assert await site.parked.get() == "/wait"
    assert [path for path, _ in site.requests] == ["/sign_in", "/sign_in", "/wait", "/wait", "/wait"]
    assert {query for path, query in site.requests if path == "/wait"} == {"peer_id=5"}
    # A message refused with 429 goes again after Retry-After, cut to 60 s.
    again = logged(client, "sending it again")
    sent = client.send(9, b"hello")
    assert "message to 9 answered 429" in await again
    [pause] = clock.getDelayedCalls()
    assert 60 <= pause.getTime() - clock.seconds() < 62
    assert not sent.called
    clock.advance(pause.getTime() - clock.seconds())
    await sent
    assert [path for path, _ in site.requests].count("/message") == 2
    await client.stop()
    await port.stopListening()


# -- calls between in-process peers ------------------------------------------------


def wire(*managers_and_ids):
    """Deliver each manager's messages straight to the other's handle_message."""
    by_id = {pid: m for m, pid in managers_and_ids}
    names = {pid: "p%d" % pid for pid in by_id}
    for manager, pid in managers_and_ids:
        manager.local_id = pid

        def send(to, body, pid=pid):
            by_id[to].handle_message(pid, names[pid], body)

        manager._send = send
    return names


def manager(**config):
    return CallManager(lambda to, body: None, SharedSource(pattern_source(**SMALL)), CallConfig(stats_interval=0, **config))


@pytest_twisted.ensureDeferred
async def test_glare_lower_id_keeps_its_offer():
    low, high = manager(), manager()
    wire((low, 3), (high, 7))
    ended = []
    high.on("call_ended", lambda call, reason: ended.append(reason))
    # Both offer at once.
    await defer.gatherResults([low.call(7, "p7"), high.call(3, "p3")])
    call_low = low.calls[7]
    await call_low.wait_first_frame("video")
    # The higher id dropped its own call and answered in a new one.
    call_high = high.calls[3]
    await call_high.wait_first_frame("video")
    assert (call_low.role, call_high.role) == ("caller", "callee")
    assert list(low.calls) == [7] and list(high.calls) == [3]
    # The dropped offer ended like any call: event (and so metrics) included.
    assert ended == ["glare: yielded to the other offer"]
    await low.hang_up(7)
    await call_high.wait_ended()
    assert high.calls == {} and low.calls == {}
    assert not low.source.active and not high.source.active


@pytest_twisted.ensureDeferred
async def test_trickled_candidates_with_and_without_prefix():
    """A call whose descriptions carry no candidates connects on candidate messages."""
    caller, callee = manager(), manager()
    names = wire((caller, 1), (callee, 2))
    seen = []

    def strip_and_trickle(sender, sender_id, receiver, with_prefix):
        def send(to, body):
            message = protocol.parse_message(body)
            if isinstance(message, protocol.SessionDescription):
                lines = message.sdp.split("\r\n")
                candidates = [line[len("a=") :] for line in lines if line.startswith("a=candidate:")]
                sdp = "\r\n".join(line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates")))
                receiver.handle_message(sender_id, names[sender_id], protocol.SessionDescription(message.type, sdp).encode())
                for text in candidates:
                    if not with_prefix:
                        text = text[len("candidate:") :]
                    seen.append(text)
                    receiver.handle_message(sender_id, names[sender_id], protocol.IceCandidate("0", 0, text).encode())
                # Browsers end trickling with an empty candidate.
                receiver.handle_message(sender_id, names[sender_id], protocol.IceCandidate("0", 0, "").encode())
            else:
                receiver.handle_message(sender_id, names[sender_id], body)

        sender._send = send

    strip_and_trickle(caller, 1, callee, with_prefix=True)
    strip_and_trickle(callee, 2, caller, with_prefix=False)
    call = await caller.call(2, "p2")
    await call.wait_first_frame("video")
    assert any(s.startswith("candidate:") for s in seen) and any(not s.startswith("candidate:") for s in seen)
    await caller.close()


@pytest_twisted.ensureDeferred
async def test_plain_aiortc_caller_gets_data_channel_echo_and_media():
    """A caller that is not pcpeer (a bare RTCPeerConnection, as a browser would be)."""
    callee = manager()
    pc = RTCPeerConnection(CallConfig().ice)
    answered = asyncio.get_event_loop().create_future()
    callee._send = lambda to, body: answered.set_result(body) if not answered.done() else None
    channel = pc.createDataChannel("chat")
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    got_track = asyncio.get_event_loop().create_future()
    pc.on("track", lambda track: got_track.done() or got_track.set_result(track))
    await aio(pc.setLocalDescription(await aio(pc.createOffer())))
    callee.handle_message(9, "browser", protocol.SessionDescription("offer", pc.localDescription.sdp).encode())
    answer = protocol.parse_message(await aio(answered))
    assert answer.type == "answer"
    await aio(pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer")))
    echoed = asyncio.get_event_loop().create_future()
    channel.on("message", lambda m: echoed.done() or echoed.set_result(m))
    channel.on("open", lambda: channel.send("ping 1"))
    assert await aio(echoed) == "ping 1"
    track = await aio(got_track)
    frame = await aio(_video_frame(track))
    assert (frame.width, frame.height) == (160, 120)
    await aio(pc.close())
    callee.peer_left(9)


async def _video_frame(track):
    while True:
        frame = await track.recv()
        if hasattr(frame, "width"):
            return frame


# -- tap -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--record", "/tmp/x.avi"], "--record must end in"),
        (["--record", "/etc/passwd/x.mp4"], "--record /etc/passwd/x.mp4: /etc/passwd is not a folder"),
        (["--video-size", "641x480"], "--video-size must be even"),
        (["--max-calls", "0"], "--max-calls must be positive"),
        (["--ice-address", "not-an-ip"], "--ice-address must be an IP address, not 'not-an-ip'"),
        (["--play", "/nonexistent/file.mp4"], "--play /nonexistent/file.mp4: no such file"),
        (["--server", "127.0.0.1:8888"], "--server must be an http:// or https:// URL, not '127.0.0.1:8888' "
                                         "(did you mean http://127.0.0.1:8888?)"),
    ],
)
def test_options_reject_bad_values(args, complaint):
    with pytest.raises(usage.UsageError, match=re.escape(complaint)):
        tap.Options().parseOptions(args)


def test_video_size_help_shows_its_default_once():
    help_text = re.search(r"--video-size=(.*?)\n(\s+-|\n)", str(tap.Options()), re.S).group(1)
    assert help_text.count("640x480") == 1 and "(640, 480)" not in help_text, help_text
    options = tap.Options()
    options.parseOptions(["--name", "x"])
    assert options["video-size"] == (640, 480)


def test_other_reactor_is_refused_with_a_clear_message():
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "--reactor=select", "pcpeer", "--name", "x"],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert "needs Twisted's asyncio reactor" in output and "SelectReactor" in output


def test_plugin_module_does_not_import_the_reactor():
    code = (
        "import sys; import twisted.plugins.pcpeer_plugin as p; "
        "p.pcpeer.options; assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)


@pytest_twisted.ensureDeferred
async def test_per_peer_locks_are_forgotten_when_unused():
    """A long-running daemon keeps no state for peers that messaged it once."""
    sent = []
    manager = CallManager(lambda peer_id, body: sent.append((peer_id, body)),
                          SharedSource(pattern_source(64, 48, 5)), CallConfig(stats_interval=0))
    for peer_id in range(1, 6):
        await manager.handle_message(peer_id, "p%d" % peer_id, b"not json")
        await manager.handle_message(peer_id, "p%d" % peer_id, b"BYE")
    assert manager._locks == {} and manager.calls == {}


def test_bad_values_end_twistd_with_one_line_naming_the_option(tmp_path):
    """The real ``twistd pcpeer``: usage error, last line names option and problem, no traceback."""
    (tmp_path / "file").write_text("not a folder")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = {
        ("--server", "notaurl"): "--server must be an http:// or https:// URL, not 'notaurl' "
                                 "(did you mean http://notaurl?)",
        ("--record", str(tmp_path / "file" / "x.mp4")): "--record %s: %s is not a folder"
        % (tmp_path / "file" / "x.mp4", tmp_path / "file"),
        ("--play", str(tmp_path / "missing.mp4")): "--play %s: no such file" % (tmp_path / "missing.mp4",),
        ("--fps", "0"): "--fps must be positive, not '0'",
        ("--max-calls", "ten"): "--max-calls must be a positive whole number, not 'ten'",
        # Checked as the server checks --listen, at parse time: never a traceback at start.
        ("--metrics", "nonsense:1"): "--metrics nonsense:1: unknown endpoint type 'nonsense'",
        ("--metrics", "tcp:99999"): "--metrics tcp:99999: port must be a port number (0 to 65535), not '99999'",
        ("--metrics", "tcp:0:interface=nonsense"): "--metrics tcp:0:interface=nonsense: interface must be "
                                                   "an IP address, not 'nonsense'",
        ("--metrics", "tcp:%d:interface=127.0.0.1" % busy.getsockname()[1]):
            "--metrics tcp:%d:interface=127.0.0.1: cannot listen on 127.0.0.1:%d: address already in use"
            " (is another pcpeer running?)" % (busy.getsockname()[1], busy.getsockname()[1]),
    }
    env = dict(os.environ, PYTHONPATH=ROOT)
    running = {
        args: subprocess.Popen([TWISTD, "-n", "--pidfile=", "pcpeer", "--name", "x", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for args in cases
    }
    for args, complaint in cases.items():
        output, _ = running[args].communicate(timeout=60)
        text = output.decode()
        assert running[args].returncode != 0, text
        assert "Traceback" not in text
        assert complaint in text.strip().splitlines()[-1], text
    busy.close()


def test_version_is_pcsignals():
    from pcsignal import __version__

    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([TWISTD, "pcpeer", "--version"], capture_output=True, env=env, cwd=ROOT, timeout=60)
    assert out.stdout.decode().strip() == "pcsignal %s" % (__version__,)


@pytest_twisted.ensureDeferred
async def test_ice_that_never_connects_is_one_line_and_ends_the_call():
    """No candidates reach the caller (none in the answer, none trickled): said once, call ended."""
    caller, callee = manager(ice_timeout=1.0), manager(ice_timeout=60.0)
    names = wire((caller, 1), (callee, 2))

    def without_candidates(receiver, sender_id):
        def send(to, body):
            message = protocol.parse_message(body)
            if isinstance(message, protocol.SessionDescription):
                sdp = "\r\n".join(line for line in message.sdp.split("\r\n")
                                  if not line.startswith(("a=candidate:", "a=end-of-candidates")))
                body = protocol.SessionDescription(message.type, sdp).encode()
            receiver.handle_message(sender_id, names[sender_id], body)

        return send

    caller._send, callee._send = without_candidates(callee, 1), without_candidates(caller, 2)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        call = await caller.call(2, "p2")
        assert await call.wait_ended().addTimeout(20, reactor_for_tests()) == "ICE did not connect"
        await callee_ended(callee)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "did not connect" in (e.get("log_format") or "")]
    assert len(lines) == 1, lines
    assert re.search(r"ICE with p2 \(2\) did not connect within 1 s \(state checking\): "
                     r"we offered 127\.0\.0\.1 \(host\); they offered nothing; they offered no address", lines[0])


async def callee_ended(callee):
    """The callee got the caller's BYE."""
    for _ in range(100):
        if not callee.calls:
            return
        await task.deferLater(reactor_for_tests(), 0.05)
    raise AssertionError("the callee's call did not end")


def reactor_for_tests():
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_a_flood_of_ignored_messages_keeps_state_bounded():
    from pcsignal.peer import call as call_module

    manager = CallManager(lambda peer_id, body: None, SharedSource(pattern_source(64, 48, 5)),
                          CallConfig(stats_interval=0))
    events = []
    manager.log = Logger(namespace="test", observer=events.append)
    for _ in range(100):  # a BYE storm from one peer: one line
        await manager.handle_message(7, "p7", b"BYE")
    assert [e["log_level"].name for e in events].count("info") == 1
    for peer_id in range(call_module.MAX_QUIETED + 500):  # from a crowd: state stays bounded
        await manager.handle_message(peer_id, "p", b"BYE")
    assert len(manager._ignored_at) <= call_module.MAX_QUIETED
    assert manager._locks == {} and manager.calls == {}


def test_negotiated_codecs_are_read_from_the_answer():
    """What pcpeer logs and pcpeer-bench labels its results with: the answer's first codecs."""
    from pcsignal.peer.call import negotiated_codecs

    answer = "\r\n".join([
        "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 102 103", "c=IN IP4 0.0.0.0", "a=mid:1",
        "a=rtpmap:102 H264/90000", "a=rtpmap:103 rtx/90000", "a=fmtp:103 apt=102", "",
    ])
    assert negotiated_codecs(answer) == ["audio/opus 48000/2", "video/H264 90000"]
