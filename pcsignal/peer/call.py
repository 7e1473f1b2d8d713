"""
Calls as protocol events: one RTCPeerConnection per remote peer.

CallManager turns the messages of PROTOCOL.md into call actions:

- offer: answer it (or decline with ``BYE``: ``--no-answer``, ``--max-calls``);
- answer: the remote description of our pending offer;
- candidate: ``addIceCandidate`` (``candidate:`` prefix optional);
- ``BYE``, or the remote peer signing out: that call ends;
- ``offer-loopback`` (the native client's loopback hack): declined, logged.

Messages from one peer are handled strictly in arrival order, one at a time
(a candidate never overtakes the offer before it).  Messages that make no
sense (not JSON, a candidate or answer for no call) are logged and ignored.

Glare, both peers offering at once, is settled by id: the peer with the
lower id keeps its offer and ignores the other; the peer with the higher id
drops its own offer and answers.  Both sides reach the same single call
without another round trip.

This module needs only aiortc and asyncio (plus Twisted's logger, which
does not need the reactor), so it works under ``twistd``, in a Twisted
program on the asyncio reactor, or in a plain asyncio program.  Methods
meant for callers return a Deferred when txaio is set to Twisted, else an
asyncio future.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import os.path
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from aiortc import RTCConfiguration, RTCIceTransportPolicy, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription as ParsedSdp
from aiortc.sdp import candidate_from_sdp
from pyee.base import EventEmitter
from twisted.internet.defer import Deferred

from pcsignal import logs, protocol
from pcsignal.peer.framework import api_future
from pcsignal.peer.ice import ice_configuration, turn_server_used, why_no_relay
from pcsignal.peer.media import CountingTrack, SharedSource
from pcsignal.peer.recorder import CallRecorder
from pcsignal.peer.recording import KINDS, RECORDABLE_KINDS, recording_path

#: Received-frame counts that get an info log line (tests wait for them).
FRAME_MILESTONES = (1, 30, 60, 100, 300, 1000)
#: Candidates named in the line about ICE not connecting (and kept per call).
MAX_LISTED_CANDIDATES = 10
#: After an ignored message is logged, more from that peer go to debug level.
IGNORED_QUIET_SECONDS = 10.0
MAX_QUIETED = 1000

SendFunction = Callable[[int, bytes], Any]
#: Gives the ICE configuration for a new call (pcpeer: from the server's /ice-servers).
IceSource = Callable[[], Awaitable[RTCConfiguration]]

_SDP_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) (\d+) typ (\w+)", re.M)


@dataclass
class CallConfig:
    """How calls behave; the ``twistd pcpeer`` options map onto this."""

    answer: bool = True
    max_calls: Optional[int] = None
    ice: RTCConfiguration = field(default_factory=ice_configuration)
    record: Optional[str] = None
    echo: bool = False
    stats_interval: float = 5.0
    #: Seconds for ICE to connect once both descriptions are set; then the
    #: call ends with one line saying which addresses were tried.
    ice_timeout: float = 20.0


def label(peer_name: str, peer_id: int) -> str:
    return "%s (%d)" % (peer_name, peer_id)


class Call:
    """One call with one remote peer."""

    def __init__(
        self,
        manager: "CallManager",
        peer_id: int,
        peer_name: str,
        role: str,
        ice: Optional[RTCConfiguration] = None,
        started: Optional[float] = None,
    ) -> None:
        self.manager = manager
        self.peer_id = peer_id
        self.peer_name = peer_name
        self.role = role  # "caller" or "callee"
        self.label = label(peer_name, peer_id)
        self.log = logs.logger("pcpeer.call.%d" % (peer_id,))
        self.config = manager.config
        self.ice = ice or self.config.ice
        self.pc = RTCPeerConnection(self.ice)
        self.started = time.monotonic() if started is None else started
        self.sent: dict[str, CountingTrack] = {}
        self.received: dict[str, CountingTrack] = {}
        self.recording: Optional[str] = None
        #: What the call negotiated, e.g. ["audio/opus 48000/2", "video/VP8 90000"].
        self.codecs: list[str] = []
        self.end_reason: Optional[str] = None
        loop = asyncio.get_event_loop()
        self.connected: asyncio.Future = loop.create_future()
        self.ended: asyncio.Future = loop.create_future()
        self.first_frame: dict[str, asyncio.Future] = {kind: loop.create_future() for kind in KINDS}
        self._source_proxies: dict[str, MediaStreamTrack] = {}
        self._recorder: Optional[CallRecorder] = None
        self._recorder_failed = False
        self._sinks: list[asyncio.Task] = []
        self._stats_task: Optional[asyncio.Task] = None
        self._watched_transports: set[int] = set()
        self._relay_checked = False
        self._remote_trickled: list[str] = []
        self._ice_timer: Optional[asyncio.TimerHandle] = None
        self._watch_peer_connection()

    # -- public, for API users -------------------------------------------------

    def wait_connected(self):
        """Fires when ICE and DTLS are up (the framework's future)."""
        return api_future(asyncio.shield(self.connected))

    def wait_first_frame(self, kind: str = "video"):
        """Fires with the seconds from call start to the first decoded frame."""
        return api_future(asyncio.shield(self.first_frame[kind]))

    def wait_ended(self):
        """Fires with the reason when the call has ended and is cleaned up."""
        return api_future(asyncio.shield(self.ended))

    def counts(self) -> dict[str, dict[str, int]]:
        """Frames sent and received so far, per kind."""
        return {
            "sent": {kind: track.frames for kind, track in self.sent.items()},
            "received": {kind: track.frames for kind, track in self.received.items()},
        }

    # -- negotiation -----------------------------------------------------------

    async def make_offer(self) -> None:
        self._attach_outgoing(KINDS, caller=True)
        # Like a browser page, the caller opens the chat channel; it echoes.
        self._echo_data_channel(self.pc.createDataChannel("chat"))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._watch_dtls()
        self._start_ice_timer()
        self.log.info("sending offer to {label}", label=self.label)
        self.manager.send(self.peer_id, protocol.SessionDescription("offer", self.pc.localDescription.sdp))
        await self._check_candidates()

    async def accept_offer(self, sdp: str) -> None:
        first = self.pc.remoteDescription is None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if first:
            offered = [t.kind for t in self.pc.getTransceivers() if t.kind in KINDS]
            self._attach_outgoing(offered, caller=False)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._watch_dtls()
        self._start_ice_timer()
        self.log.info("sending answer to {label}", label=self.label)
        self.manager.send(self.peer_id, protocol.SessionDescription("answer", self.pc.localDescription.sdp))
        await self._check_candidates()
        self._log_codecs(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._log_codecs(sdp)

    async def add_candidate(self, message: protocol.IceCandidate) -> None:
        text = message.candidate.strip()
        if text.startswith("a="):
            text = text[2:]
        if text.startswith("candidate:"):
            text = text[len("candidate:") :]
        if not text:
            # Browsers end trickling with an empty candidate.
            self.log.debug("end of candidates from {label}", label=self.label)
            await self.pc.addIceCandidate(None)
            return
        candidate = candidate_from_sdp(text)
        candidate.sdpMid = message.sdpMid
        # With BUNDLE every m-line shares one transport, so the first is right
        # when a (non-standard) sender names neither.
        candidate.sdpMLineIndex = message.sdpMLineIndex
        if message.sdpMid is None and message.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        await self.pc.addIceCandidate(candidate)
        if len(self._remote_trickled) < MAX_LISTED_CANDIDATES:
            self._remote_trickled.append("%s (%s)" % (candidate.ip, candidate.type))
        self.log.debug("candidate from {label}: {candidate}", label=self.label, candidate=text)

    async def _check_candidates(self) -> None:
        """
        Log what aiortc gathered (it puts every candidate in the description)
        and, once per call, why a configured TURN server gave no relay.  With
        no candidate at all (relay-only without a relay) aiortc would wait
        forever: the call ends, after the reason is logged.
        """
        found = {m.groups() for m in _SDP_CANDIDATE.finditer(self.pc.localDescription.sdp)}
        kinds = collections.Counter(kind for _, _, kind in found)
        self.log.info("ICE candidates for {label}: {kinds}", label=self.label,
                      kinds=", ".join("%s %d" % item for item in sorted(kinds.items())) or "none")
        if "relay" in kinds or self._relay_checked:
            return
        self._relay_checked = True
        turn = turn_server_used(self.ice)
        if turn is None and self.ice.iceTransportPolicy == RTCIceTransportPolicy.RELAY:
            self.log.warn("no TURN relay for the call with {label}: relay-only, but there is no TURN server "
                          "(the signaling server offers none, and no --ice-server)", label=self.label)
        elif turn is not None:
            why = asyncio.ensure_future(self._log_why_no_relay(turn))
            if not found:
                await why
        if not found:
            self.manager.end_call_soon(self.peer_id, "no ICE candidates to connect with", send_bye=True)

    async def _log_why_no_relay(self, turn: dict) -> None:
        reason = await why_no_relay(turn)
        self.log.warn("no TURN relay for the call with {label}: {reason}", label=self.label, reason=reason)

    # -- media -----------------------------------------------------------------

    def _attach_outgoing(self, kinds, caller: bool) -> None:
        """Put our media on the connection (echo tracks arrive later, in _on_track)."""
        if not self.config.echo:
            self._source_proxies = self.manager.source.subscribe()
        for kind in kinds:
            proxy = self._source_proxies.get(kind)
            if proxy is not None:
                self.sent[kind] = CountingTrack(proxy)
                self.pc.addTrack(self.sent[kind])
            elif caller:
                # Still receive what the source cannot send; with --echo,
                # send back what arrives there.
                self.pc.addTransceiver(kind, direction="sendrecv" if self.config.echo else "recvonly")

    def _on_track(self, track: MediaStreamTrack) -> None:
        kind = track.kind
        if kind not in KINDS or kind in self.received:
            self.log.info("ignoring extra {kind} track from {label}", kind=kind, label=self.label)
            self._sinks.append(asyncio.ensure_future(_drain(track)))
            return
        self.log.info("receiving {kind} from {label}", kind=kind, label=self.label)
        counted = self.received[kind] = CountingTrack(track, self._on_received_frame)
        record = self.config.record is not None and kind in RECORDABLE_KINDS[_extension(self.config.record)]
        echo_feed = record_feed = counted
        if self.config.echo and record:
            # The recorder must not drop frames; echo wants the latest one.
            relay = MediaRelay()
            echo_feed, record_feed = relay.subscribe(counted, buffered=False), relay.subscribe(counted, buffered=True)
        if self.config.echo:
            self.sent[kind] = CountingTrack(echo_feed)
            self.pc.addTrack(self.sent[kind])
        if record and not self._record(record_feed) or not record and not self.config.echo:
            # Decode and count even when nothing (else) reads the track.
            self._sinks.append(asyncio.ensure_future(_drain(record_feed)))

    def _record(self, track: MediaStreamTrack) -> bool:
        """Record a received track (read from now on by the recorder); False if it cannot be."""
        if self._recorder is None:
            if self._recorder_failed:
                return False  # said once already
            try:
                path = recording_path(self.config.record, self.peer_name, self.peer_id)
                self._recorder = CallRecorder(path, self.log, "the call with " + self.label)
            except Exception as e:
                self._recorder_failed = True
                self.log.error("cannot record the call with {label}: {e}", label=self.label, e=e)
                return False
            self.recording = path
            self.log.info("recording call with {label} to {path}", label=self.label, path=path)
        if self._recorder.add_track(track):
            return True
        self.log.info("not recording the new {kind} track of {label}: the recording is under way",
                      kind=track.kind, label=self.label)
        return False

    def _on_received_frame(self, track: CountingTrack) -> None:
        if track.frames == 1:
            elapsed = time.monotonic() - self.started
            if not self.first_frame[track.kind].done():
                self.first_frame[track.kind].set_result(elapsed)
            size = " %dx%d" % track.size if track.size else ""
            self.log.info(
                "first {kind} frame{size} from {label} after {elapsed:.3f} s",
                kind=track.kind,
                size=size,
                label=self.label,
                elapsed=elapsed,
            )
        elif track.frames in FRAME_MILESTONES:
            self.log.info(
                "received {n} {kind} frames from {label}", n=track.frames, kind=track.kind, label=self.label
            )

    # -- state and statistics ----------------------------------------------------

    def _echo_data_channel(self, channel) -> None:
        @channel.on("message")
        def on_message(message):
            # Echo, so that a browser can check the path end to end.
            self.log.debug("data channel {name!r}: {message!r}", name=channel.label, message=message)
            channel.send(message)

    def _watch_peer_connection(self) -> None:
        pc = self.pc

        @pc.on("track")
        def on_track(track):
            self._on_track(track)

        @pc.on("datachannel")
        def on_datachannel(channel):
            self.log.info("data channel {name!r} opened by {label}", name=channel.label, label=self.label)
            self._echo_data_channel(channel)

        @pc.on("signalingstatechange")
        def on_signaling_state():
            self.log.debug("signaling state with {label}: {state}", label=self.label, state=pc.signalingState)

        @pc.on("icegatheringstatechange")
        def on_ice_gathering_state():
            self.log.debug("ICE gathering with {label}: {state}", label=self.label, state=pc.iceGatheringState)

        @pc.on("iceconnectionstatechange")
        def on_ice_state():
            self.log.info("ICE with {label}: {state}", label=self.label, state=pc.iceConnectionState)

        @pc.on("connectionstatechange")
        def on_connection_state():
            state = pc.connectionState
            if state == "connected":
                elapsed = time.monotonic() - self.started
                self.log.info("call with {label} connected in {elapsed:.3f} s", label=self.label, elapsed=elapsed)
                if not self.connected.done():
                    self.connected.set_result(elapsed)
                self._stop_ice_timer()
                if self._stats_task is None and self.config.stats_interval > 0:
                    self._stats_task = asyncio.ensure_future(self._log_stats_forever())
            elif state == "failed":
                self.manager.end_call_soon(self.peer_id, "connection failed", send_bye=True)

    def _start_ice_timer(self) -> None:
        if self._ice_timer is None and not self.connected.done():
            self._ice_timer = asyncio.get_event_loop().call_later(self.config.ice_timeout, self._ice_timed_out)

    def _stop_ice_timer(self) -> None:
        if self._ice_timer is not None:
            self._ice_timer.cancel()
            self._ice_timer = None

    def _ice_timed_out(self) -> None:
        """ICE never connected: say which addresses were tried, and why that may be, then end."""
        ours = _candidates(self.pc.localDescription)
        theirs = sorted(set(_candidates(self.pc.remoteDescription) + self._remote_trickled))
        if not ours:
            hint = ("we offered no address: this host has none but loopback? "
                    "use --ice-address (127.0.0.1 when the other side is on this machine)")
        elif self.pc.remoteDescription is None:
            hint = "no answer to our offer came"
        elif self.pc.iceConnectionState in ("connected", "completed"):
            hint = "ICE found a path, but the DTLS handshake over it did not finish"
        elif not theirs:
            hint = "they offered no address (none trickled yet)"
        else:
            hint = ("no pair of these reached each other: on one machine use --ice-address 127.0.0.1 "
                    "(and Chromium's --allow-loopback-in-peer-connection); across NATs add --ice-server")
        self.log.warn(
            "ICE with {label} did not connect within {seconds:g} s (state {state}): we offered {ours}; "
            "they offered {theirs}; {hint}",
            label=self.label,
            seconds=self.config.ice_timeout,
            state=self.pc.iceConnectionState,
            ours=", ".join(ours) or "nothing",
            theirs=", ".join(theirs) or "nothing",
            hint=hint,
        )
        self.manager.end_call_soon(self.peer_id, "ICE did not connect", send_bye=True)

    def _watch_dtls(self) -> None:
        for transceiver in self.pc.getTransceivers():
            transport = transceiver.sender.transport
            if transport is None or id(transport) in self._watched_transports:
                continue
            self._watched_transports.add(id(transport))

            def on_dtls_state(transport=transport):
                self.log.info("DTLS with {label}: {state}", label=self.label, state=transport.state)

            transport.on("statechange", on_dtls_state)

    def _log_codecs(self, answer_sdp: str) -> None:
        """The answer's first codec per m-line is what both sides use."""
        try:
            self.codecs = negotiated_codecs(answer_sdp)
        except Exception as e:
            self.log.warn("cannot read codecs from the answer of {label}: {e}", label=self.label, e=_short(str(e)))
            return
        self.log.info("codecs with {label}: {codecs}", label=self.label, codecs=", ".join(self.codecs) or "none")

    async def _rtp_counts(self) -> dict[str, Any]:
        """Packets and bytes per kind (aiortc counts received bytes per transport only)."""
        counts: dict[str, Any] = {"sent": {}, "received": {}, "lost": {}, "bytes_sent": 0, "bytes_received": 0}
        transports = set()
        for stats in (await self.pc.getStats()).values():
            if stats.type == "outbound-rtp":
                packets, sent = counts["sent"].get(stats.kind, (0, 0))
                counts["sent"][stats.kind] = (packets + stats.packetsSent, sent + stats.bytesSent)
            elif stats.type == "inbound-rtp":
                counts["received"][stats.kind] = counts["received"].get(stats.kind, 0) + stats.packetsReceived
                counts["lost"][stats.kind] = counts["lost"].get(stats.kind, 0) + stats.packetsLost
            elif stats.type == "transport" and stats.id not in transports:
                transports.add(stats.id)
                counts["bytes_sent"] += stats.bytesSent
                counts["bytes_received"] += stats.bytesReceived
        return counts

    async def summary(self) -> str:
        """Frames, packets and bytes so far, for the periodic and final log lines."""
        try:
            rtp = await self._rtp_counts()
        except Exception:  # a closed connection has no statistics left
            rtp = {"sent": {}, "received": {}, "lost": {}, "bytes_sent": 0, "bytes_received": 0}
        sent, received = [], []
        for kind in KINDS:
            if kind in self.sent or kind in rtp["sent"]:
                frames = self.sent[kind].frames if kind in self.sent else 0
                packets, octets = rtp["sent"].get(kind, (0, 0))
                sent.append("%s %d frames %d packets %d bytes" % (kind, frames, packets, octets))
            if kind in self.received or kind in rtp["received"]:
                frames = self.received[kind].frames if kind in self.received else 0
                received.append(
                    "%s %d frames %d packets (%d lost)"
                    % (kind, frames, rtp["received"].get(kind, 0), rtp["lost"].get(kind, 0))
                )
        return "sent %s; received %s; %d bytes out, %d bytes in" % (
            ", ".join(sent) or "nothing",
            ", ".join(received) or "nothing",
            rtp["bytes_sent"],
            rtp["bytes_received"],
        )

    async def _log_stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            self.log.info("call with {label}: {summary}", label=self.label, summary=await self.summary())

    # -- ending ----------------------------------------------------------------

    async def close(self, reason: str) -> None:
        """Tear down media and the connection (the manager sends any BYE)."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        if self._stats_task is not None:
            self._stats_task.cancel()
        self._stop_ice_timer()
        summary = await self.summary()
        if self._recorder is not None:
            try:
                await self._recorder.stop()
            except Exception as e:
                self.log.warn("recording {path} may be incomplete: {e}", path=self.recording, e=e)
            else:
                self.log.info("recorded call with {label} to {path}", label=self.label, path=self.recording)
        if self._source_proxies:
            self.manager.source.unsubscribe(self._source_proxies)
            self._source_proxies = {}
        await self.pc.close()
        for sink in self._sinks:
            sink.cancel()
        self.log.info(
            "call with {label} ended ({reason}) after {elapsed:.1f} s: {summary}",
            label=self.label,
            reason=reason,
            elapsed=time.monotonic() - self.started,
            summary=summary,
        )
        for future in [self.connected, *self.first_frame.values()]:
            if not future.done():
                future.set_exception(CallEnded(reason))
                future.exception()  # nobody may be waiting: not an unhandled error
        self.ended.set_result(reason)


class CallEnded(Exception):
    """The call ended before what was being waited for happened."""


class CallRefused(Exception):
    """A call could not be started (limit reached, or already in a call)."""


async def _drain(track: MediaStreamTrack) -> None:
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass


def negotiated_codecs(answer_sdp: str) -> list[str]:
    """The codec of each active m-line of an answer, e.g. ``["audio/opus 48000/2", "video/VP8 90000"]``."""
    codecs = []
    for m in ParsedSdp.parse(answer_sdp).media:
        usable = [c for c in m.rtp.codecs if c.mimeType.split("/")[-1].lower() not in ("rtx", "red", "ulpfec")]
        if usable and m.port != 0:
            c = usable[0]
            codecs.append("%s %d%s" % (c.mimeType, c.clockRate, "/%d" % c.channels if c.channels else ""))
    return codecs


def _short(text: str, limit: int = 200) -> str:
    """Client-supplied text for a log line: cut, with its length noted."""
    if len(text) <= limit:
        return text
    return "%s... (%d characters)" % (text[:limit], len(text))


def _candidates(description: Optional[RTCSessionDescription]) -> list[str]:
    """"ADDRESS (TYPE)" for the candidates in a description, at most MAX_LISTED_CANDIDATES."""
    found: list[str] = []
    for line in (description.sdp if description else "").splitlines():
        if line.startswith("a=candidate:") and len(found) < MAX_LISTED_CANDIDATES:
            try:
                candidate = candidate_from_sdp(line[len("a=candidate:") :])
            except (ValueError, IndexError):
                continue
            found.append("%s (%s)" % (candidate.ip, candidate.type))
    return sorted(set(found))


def _offer_problem(sdp: str) -> Optional[str]:
    """Why an offer cannot start a call, or None."""
    try:
        media = ParsedSdp.parse(sdp).media
    except Exception as e:
        return "unusable offer (%s)" % (e,)
    if not media:
        return "unusable offer (no media)"
    return None


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


_libc = ctypes.CDLL(ctypes.util.find_library("c"))


def release_free_memory() -> None:
    """
    Hand freed native memory back to the OS once the last call has ended.

    Codecs free megabytes of frame buffers at the end of a call, scattered
    through glibc's heap, which keeps them mapped; a daemon taking call after
    call would look like it leaks.  malloc_trim(0) returns them (glibc only).
    """
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


class CallManager(EventEmitter):
    """
    All calls of one peer, driven by protocol messages.

    ``send(peer_id, body_bytes)`` posts a message to a peer (the signaling
    client's ``send``); it may return a Deferred or future, whose failure is
    only logged.  ``local_id`` is our own peer id, set on sign-in; it
    settles glare.

    Events (pyee): ``call_started(call)``, ``call_ended(call, reason)``.
    """

    def __init__(
        self,
        send: SendFunction,
        source: SharedSource,
        config: Optional[CallConfig] = None,
        ice_source: Optional[IceSource] = None,
    ) -> None:
        super().__init__()
        self.log = logs.logger("pcpeer.calls")
        self._send = send
        self.source = source
        self.config = config or CallConfig()
        self._ice_source = ice_source
        self.local_id: Optional[int] = None
        self.calls: dict[int, Call] = {}
        # peer id -> [lock, users]: each peer's messages are handled in order;
        # an entry lives only while something uses it.
        self._locks: dict[int, list] = {}
        # (peer id, kind) -> when an ignored message was last logged at info.
        self._ignored_at: dict[tuple[int, str], float] = {}

    # -- for API users -----------------------------------------------------------

    def handle_message(self, peer_id: int, peer_name: str, body: bytes):
        """Act on one message from a peer; returns when it has been handled."""
        return api_future(self._serially(peer_id, self._handle_message, peer_id, peer_name, body))

    def call(self, peer_id: int, peer_name: str):
        """Call a peer: fires with the Call once the offer is on its way."""
        return api_future(self.dial(peer_id, peer_name))

    async def dial(self, peer_id: int, peer_name: str) -> Call:
        """``call`` as a coroutine, for asyncio code."""
        return await self._serially(peer_id, self._start_call, peer_id, peer_name)

    def hang_up(self, peer_id: int, reason: str = "hung up"):
        """End the call with a peer and tell it (``BYE``)."""
        return api_future(self._serially(peer_id, self._end_call, peer_id, reason, True))

    def peer_left(self, peer_id: int):
        """The peer signed out: its call ends without a ``BYE``."""
        return api_future(self._serially(peer_id, self._end_call, peer_id, "peer signed out", False))

    def close(self):
        """Hang up every call."""
        return api_future(self.hang_up_all())

    # -- internals ---------------------------------------------------------------

    def send(self, peer_id: int, message) -> None:
        result = self._send(peer_id, message.encode())
        if isinstance(result, Deferred):
            result.addErrback(lambda failure: None)  # the signaling client logs it
        elif isinstance(result, asyncio.Future):
            result.add_done_callback(lambda f: f.cancelled() or f.exception())

    def end_call_soon(self, peer_id: int, reason: str, send_bye: bool) -> None:
        asyncio.ensure_future(self._serially(peer_id, self._end_call, peer_id, reason, send_bye))

    async def _serially(self, peer_id: int, handler, *args):
        entry = self._locks.setdefault(peer_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                return await handler(*args)
        finally:
            # Forget the lock once nobody holds or awaits it: a daemon taking
            # calls for months keeps none for peers long gone.
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[peer_id]

    async def hang_up_all(self) -> None:
        """``close`` as a coroutine, for asyncio code."""
        await asyncio.gather(*[self._serially(pid, self._end_call, pid, "stopping", True) for pid in list(self.calls)])

    def _new_call(self, peer_id: int, peer_name: str, role: str, ice: RTCConfiguration, started: float) -> Call:
        call = Call(self, peer_id, peer_name, role, ice, started)
        self.calls[peer_id] = call
        self.emit("call_started", call)
        return call

    async def _ice_for_call(self) -> RTCConfiguration:
        if self._ice_source is None:
            return self.config.ice
        return await self._ice_source()

    def _full(self) -> bool:
        return self.config.max_calls is not None and len(self.calls) >= self.config.max_calls

    async def _start_call(self, peer_id: int, peer_name: str) -> Call:
        if peer_id in self.calls:
            raise CallRefused("already in a call with %s" % (label(peer_name, peer_id),))
        started = time.monotonic()
        ice = await self._ice_for_call()
        # After the wait for the ICE servers: calls with others may have started meanwhile.
        if self._full():
            raise CallRefused("already in %d calls (--max-calls)" % (len(self.calls),))
        call = self._new_call(peer_id, peer_name, "caller", ice, started)
        self.log.info("calling {label}", label=call.label)
        try:
            await call.make_offer()
        except Exception as e:
            await self._end_call(peer_id, "could not make an offer: %s" % (e,), False)
            raise
        return call

    async def _end_call(self, peer_id: int, reason: str, send_bye: bool) -> None:
        call = self.calls.pop(peer_id, None)
        if call is None:
            return
        if send_bye:
            self.send(peer_id, protocol.Bye())
        await call.close(reason)
        self.emit("call_ended", call, reason)
        if not self.calls:
            release_free_memory()

    async def _handle_message(self, peer_id: int, peer_name: str, body: bytes) -> None:
        message = protocol.parse_message(body)
        who = label(peer_name, peer_id)
        call = self.calls.get(peer_id)
        if isinstance(message, protocol.Unrecognised):
            self._ignored(peer_id, "ignoring message from {who}: {reason}", who=who, reason=_short(message.reason))
        elif isinstance(message, protocol.Bye):
            if call is None:
                self._ignored(peer_id, "BYE from {who}, with whom there is no call: ignored", who=who)
            else:
                await self._end_call(peer_id, "BYE received", False)
        elif isinstance(message, protocol.IceCandidate):
            if call is None:
                self._ignored(peer_id, "ignoring candidate from {who}: no call with that peer", who=who)
            else:
                await self._guarded(call, "candidate", call.add_candidate(message), fatal=False)
        elif message.type == "offer":
            await self._on_offer(peer_id, peer_name, message.sdp)
        elif message.type == "answer":
            if call is None or call.pc.signalingState != "have-local-offer":
                self._ignored(peer_id, "ignoring answer from {who}: we made no offer to it", who=who)
            else:
                await self._guarded(call, "answer", call.accept_answer(message.sdp), fatal=True)
        elif message.type == "offer-loopback":
            self._ignored(peer_id, "declining offer-loopback from {who}: loopback calls are not supported", who=who)
        else:
            self._ignored(peer_id, "ignoring session description of type {type} from {who}",
                          type=_short(repr(message.type)), who=who)

    def _ignored(self, peer_id: int, text: str, **fields) -> None:
        """
        Log a message ignored: the first of its kind from a peer at info
        level, the same kind from that peer for IGNORED_QUIET_SECONDS after
        at debug, so a flood (a BYE storm) costs one line.
        """
        now, key = time.monotonic(), (peer_id, text)
        if now - self._ignored_at.get(key, -IGNORED_QUIET_SECONDS) < IGNORED_QUIET_SECONDS:
            self.log.debug(text, **fields)
            return
        if len(self._ignored_at) >= MAX_QUIETED:
            self._ignored_at = {k: t for k, t in self._ignored_at.items() if now - t < IGNORED_QUIET_SECONDS}
            if len(self._ignored_at) >= MAX_QUIETED:
                self._ignored_at.clear()  # a crowd: more lines, never more memory
        self._ignored_at[key] = now
        self.log.info(text + " (more from it within {quiet:g} s: debug level only)", quiet=IGNORED_QUIET_SECONDS,
                      **fields)

    async def _on_offer(self, peer_id: int, peer_name: str, sdp: str) -> None:
        who = label(peer_name, peer_id)
        call = self.calls.get(peer_id)
        if call is not None and call.pc.signalingState == "have-local-offer":
            if self.local_id is not None and self.local_id < peer_id:
                self.log.info("glare with {who}: both offered; ours stands (the lower id wins)", who=who)
                return
            self.log.info("glare with {who}: both offered; answering theirs (the higher id yields)", who=who)
            await self._end_call(peer_id, "glare: yielded to the other offer", False)
            call = None
        if call is None:
            started = time.monotonic()
            refusal = _offer_problem(sdp)
            if refusal is None and not self.config.answer:
                refusal = "not answering calls (--no-answer)"
            ice = await self._ice_for_call() if refusal is None else None
            # After the wait for the ICE servers: calls with others may have started meanwhile.
            if refusal is None and self._full():
                refusal = "already in %d calls (--max-calls)" % (len(self.calls),)
            if refusal:
                self._ignored(peer_id, "declining call from {who}: {refusal}", who=who, refusal=_short(refusal))
                self.send(peer_id, protocol.Bye())
                return
            call = self._new_call(peer_id, peer_name, "callee", ice, started)
            self.log.info("answering call from {who}", who=who)
        await self._guarded(call, "offer", call.accept_offer(sdp), fatal=True)

    async def _guarded(self, call: Call, what: str, action, fatal: bool) -> None:
        """Run one negotiation step; a bad one is logged (and ends the call if fatal)."""
        try:
            await action
        except Exception as e:
            if fatal:
                call.log.warn("bad {what} from {label}: {e}; hanging up", what=what, label=call.label, e=_short(repr(e)))
                await self._end_call(call.peer_id, "bad %s" % (what,), True)
            else:
                call.log.warn("ignoring bad {what} from {label}: {e}", what=what, label=call.label, e=_short(repr(e)))
