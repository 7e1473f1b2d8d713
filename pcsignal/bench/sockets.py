"""
Simulated WebSocket clients for pcsignal-bench, with the same interface as
pcsignal.bench.peers.BenchPeer (sign_in, start_waiting, send, stop_waiting,
sign_out, on_message / on_notification / on_lost), so the relay scenario
drives them unchanged:

- WebSocketBenchPeer speaks pcsignal's WebSocket transport (``/ws``,
  PROTOCOL.md): one socket, messages without ``seq`` (fire and forget,
  refusals come back as error frames), aiohttp answering pings.
- PeerJSBenchPeer speaks the PeerJS server's own protocol (npm ``peer``):
  ``/peerjs?key=&id=&token=``, ``OPEN``, then ``CANDIDATE`` messages
  relayed from ``src`` to ``dst``; PeerJS has no presence, no sign-out and
  no acknowledgement.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from typing import Callable, Optional

import aiohttp
from yarl import URL

from pcsignal.bench.peers import SignalingError, _ignore, cancel
from pcsignal.protocol import WEBSOCKET_SUBPROTOCOL, Entry, websocket_url

CONNECT_TIMEOUT = aiohttp.ClientTimeout(total=30)


class _SocketPeer:
    """What both kinds share: one socket, one reader task, the callbacks."""

    abandoned = 0  # waits abandoned: a socket has none to abandon (relay's --abandon)

    def __init__(self, session: aiohttp.ClientSession, base: str, name: str):
        self.session = session
        self.base = base
        self.name = name
        self.peer_id = None
        self.known: set = set()
        self.lost: Optional[str] = None
        self.errors: list[str] = []
        self.on_notification: Callable = _ignore
        self.on_message: Callable = _ignore
        self.on_lost: Callable = _ignore
        self.ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self._reading: Optional[asyncio.Task] = None

    async def _connect(self, url: str, **kwargs) -> None:
        self.ws = await self.session.ws_connect(
            url, timeout=aiohttp.ClientWSTimeout(ws_close=5), max_msg_size=0,
            compress=0, **kwargs)

    async def _first(self) -> dict:
        message = await asyncio.wait_for(self.ws.receive(), CONNECT_TIMEOUT.total)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise SignalingError("%s: socket closed before its first frame (%s)"
                                  % (self.name, message.extra or message.type))
        return json.loads(message.data)

    def start_waiting(self) -> None:
        self._reading = asyncio.ensure_future(self._read_forever())

    async def stop_waiting(self) -> None:
        task, self._reading = self._reading, None
        await cancel(task)

    async def _read_forever(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            self._frame(json.loads(message.data), time.monotonic())
        self.lost = "socket closed (%s)" % (self.ws.close_code,)
        self.on_lost(self, self.lost)


class WebSocketBenchPeer(_SocketPeer):
    """A pcsignal peer over ``/ws``."""

    async def sign_in(self) -> None:
        await self._connect(websocket_url(self.base), protocols=(WEBSOCKET_SUBPROTOCOL,))
        await self.ws.send_str(json.dumps({"type": "sign_in", "name": self.name}))
        frame = await self._first()
        if frame.get("type") != "signed_in":
            raise SignalingError("%s: sign_in answered %s" % (self.name, frame))
        self.peer_id = frame["id"]
        self.known = {peer["id"] for peer in frame["peers"]}

    def _frame(self, frame: dict, received: float) -> None:
        kind = frame["type"]
        if kind == "message":
            body = (frame["data"].encode("utf-8") if "data" in frame
                    else base64.b64decode(frame["data_base64"]))
            self.on_message(self, frame["from"], body, received)
        elif kind == "peer":
            if frame["connected"]:
                self.known.add(frame["id"])
            else:
                self.known.discard(frame["id"])
            self.on_notification(self, Entry(frame["name"], frame["id"], frame["connected"]),
                                 received)
        elif kind == "error":
            self.errors.append("%s: %s %s" % (self.name, frame["status"], frame["text"]))

    async def send(self, to, body: bytes) -> None:
        await self.ws.send_str('{"type":"message","to":%d,"data":%s}'
                               % (to, json.dumps(body.decode("utf-8"))))

    async def sign_out(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.send_str('{"type":"sign_out"}')
            await self.ws.close()


class PeerJSBenchPeer(_SocketPeer):
    """A client of the PeerJS server (npm ``peer``) at base (its ``--path``)."""

    async def sign_in(self) -> None:
        self.peer_id = "%s-%s" % (self.name, secrets.token_hex(4))
        url = URL(websocket_url(self.base, "/peerjs")).with_query(
            key="peerjs", id=self.peer_id, token=secrets.token_hex(8))
        await self._connect(str(url))
        frame = await self._first()
        if frame.get("type") != "OPEN":
            raise SignalingError("%s: PeerJS answered %s" % (self.name, frame))

    def _frame(self, frame: dict, received: float) -> None:
        if frame.get("type") == "CANDIDATE":
            self.on_message(self, frame["src"], frame["payload"].encode("utf-8"), received)
        elif frame.get("type") in ("ERROR", "ID-TAKEN", "EXPIRE"):
            self.errors.append("%s: %s" % (self.name, frame))

    async def send(self, to, body: bytes) -> None:
        await self.ws.send_str('{"type":"CANDIDATE","dst":%s,"payload":%s}'
                               % (json.dumps(to), json.dumps(body.decode("utf-8"))))

    async def sign_out(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
