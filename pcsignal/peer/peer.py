"""
A headless WebRTC peer: the signaling client and the call manager wired
together, plus the native client's autocall.

This is the Python API behind ``twistd pcpeer``; use it from a Twisted
program on the asyncio reactor, or from an asyncio program that installed
that reactor on its loop::

    import txaio; txaio.use_twisted()   # or txaio.use_asyncio()
    peer = Peer("http://127.0.0.1:8888", "camera")
    await peer.start()                 # signed in
    call = await peer.call("bob")      # offer sent
    await call.wait_first_frame("video")
    await peer.stop()                  # hangs up, signs out

Methods return Deferreds or asyncio futures, following txaio's choice.

Unless its CallConfig names ICE servers of its own, the peer asks the
signaling server's ``/ice-servers`` for each call, so one ``--server`` URL
is all it needs to call through the server's TURN relay; a server without
that path (the reference) leaves it with its own configuration.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from aiortc import RTCConfiguration, RTCIceTransportPolicy

from pcsignal import logs
from pcsignal.peer.call import CallConfig, CallManager, CallRefused
from pcsignal.peer.framework import api_future
from pcsignal.peer.ice import configuration_from_server, describe_servers
from pcsignal.peer.media import SharedSource, pattern_source
from pcsignal.peer.signaling import DEFAULT_MAX_RETRY_DELAY, DEFAULT_RETRY_DELAY, SignalingClient, SignalingError
from pcsignal.peer.wssignaling import WebSocketSignalingClient


class Peer:
    """A peer signed in to one signaling server, handling calls."""

    def __init__(
        self,
        server_url: str,
        name: str,
        source: Optional[SharedSource] = None,
        config: Optional[CallConfig] = None,
        autocall: Optional[str] = None,
        reactor=None,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
        transport: str = "auto",
    ) -> None:
        self.log = logs.logger("pcpeer")
        self.signaling = signaling_client(
            server_url, name, transport, reactor=reactor, retry_delay=retry_delay,
            max_retry_delay=max_retry_delay
        )
        config = config or CallConfig()
        self.calls = CallManager(
            self.signaling.send,
            source or SharedSource(pattern_source()),
            config,
            ice_source=None if config.ice.iceServers else self._ice_from_server,
        )
        self._ice_note: Optional[str] = None
        #: Name or id of a peer to call whenever it shows up (``--call``).
        self.autocall = autocall
        self._autocalled: set[int] = set()
        self.signaling.on("signed_in", self._signed_in)
        self.signaling.on("peer_joined", self._peer_joined)
        self.signaling.on("peer_left", self._peer_left)
        self.signaling.on("message", self._message)

    def start(self):
        """Sign in; fires with our peer id."""
        return api_future(self.signaling.start())

    def stop(self):
        """Hang up every call, then sign out."""
        return api_future(self._stop())

    def call(self, name_or_id: str):
        """Call a listed peer by name or id; fires with the Call once the offer is sent."""
        peer_id = self.signaling.find_peer(str(name_or_id))
        if peer_id is None:
            return api_future(_fail(CallRefused("no peer %r is signed in" % (name_or_id,))))
        return self.calls.call(peer_id, self.signaling.peers[peer_id])

    async def _ice_from_server(self) -> RTCConfiguration:
        """The ICE servers the signaling server offers for a call, else our own configuration."""
        own = self.calls.config.ice
        relay_only = own.iceTransportPolicy == RTCIceTransportPolicy.RELAY
        try:
            answer = await self.signaling.ice_servers().asFuture(asyncio.get_event_loop())
            ice = configuration_from_server(answer, relay_only)
        except (SignalingError, ValueError) as e:
            self._note_ice("no ICE servers from the signaling server (%s): using our own: %s"
                           % (e, describe_servers(own)))
            return own
        self._note_ice("ICE servers from the signaling server: %s" % (describe_servers(ice),))
        return ice

    def _note_ice(self, text: str) -> None:
        # Once per change, not once per call.
        if text != self._ice_note:
            self._ice_note = text
            self.log.info("{text}", text=text)

    async def _stop(self) -> None:
        # An asyncio coroutine: Deferreds are awaited through asFuture.
        await self.calls.hang_up_all()
        await self.signaling.stop().asFuture(asyncio.get_event_loop())

    def _signed_in(self, peer_id: int, peers: dict[int, str]) -> None:
        self.calls.local_id = peer_id
        for pid, name in peers.items():
            self._maybe_autocall(pid, name)

    def _peer_joined(self, peer_id: int, name: str) -> None:
        self._maybe_autocall(peer_id, name)

    def _peer_left(self, peer_id: int, name: str) -> None:
        self._autocalled.discard(peer_id)  # ids are not reused; don't keep it
        self.calls.peer_left(peer_id)

    def _message(self, peer_id: int, body: bytes) -> None:
        name = self.signaling.peers.get(peer_id, "unlisted peer")
        self.calls.handle_message(peer_id, name, body)

    def _maybe_autocall(self, peer_id: int, name: str) -> None:
        if self.autocall is None or peer_id in self._autocalled or peer_id == self.signaling.peer_id:
            return
        if self.autocall not in (name, str(peer_id)):
            return
        self._autocalled.add(peer_id)
        self.log.info("{name} ({id}) is listed: calling it (--call)", name=name, id=peer_id)
        asyncio.ensure_future(self._autocall(peer_id, name))

    async def _autocall(self, peer_id: int, name: str) -> None:
        try:
            await self.calls.dial(peer_id, name)
        except Exception as e:
            self.log.warn("cannot call {name} ({id}): {e}", name=name, id=peer_id, e=e)


def signaling_client(server_url: str, name: str, transport: str = "auto", **kwargs) -> SignalingClient:
    """
    The signaling client for a transport: "http" (hanging GETs), "ws"
    (WebSocket), or "auto" (WebSocket, else hanging GETs); same API and events.
    """
    if transport == "http":
        return SignalingClient(server_url, name, **kwargs)
    return WebSocketSignalingClient(server_url, name, transport, **kwargs)


async def _fail(error: Exception):
    raise error
