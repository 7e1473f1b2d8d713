"""
The signaling client over pcsignal's WebSocket transport (``/ws``,
PROTOCOL.md), behind SignalingClient's public API and events.

- One socket carries sign-in, presence and messages.  Messages go out in
  order, each with a ``seq``; ``send()`` fires on its ``ack`` or fails on
  its ``error`` frame (same texts as HTTP refusals).
- Every frame from the server carries ``n``; the highest handled is kept,
  so a frame sent again after a resume is not handled twice.
- A dropped socket is resumed (``resume`` with the sign-in token and that
  ``n``) on a new one, with the same (jittered) back-off as an unreachable
  server, or after the ``retry_after`` of a ``429``;
  nothing is reported while that works.  If the server refuses (it has
  forgotten us), we are signed out and sign in again, as over HTTP.
- ``transport="auto"``: a server that answers the upgrade with anything
  but 101 (a 404, the reference server's 500, ...) has no WebSocket
  transport: from then on this client speaks hanging GETs to it, as
  SignalingClient.  ``transport="ws"``: that is an error, retried.

aiohttp's client runs on the asyncio loop under Twisted's asyncio reactor
(pcpeer runs there anyway); unlike autobahn's Twisted client, it leaves
txaio's framework choice to the program (Peer's API answers in either).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Optional

import aiohttp
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred

from pcsignal.protocol import WEBSOCKET_SUBPROTOCOL, websocket_url
from pcsignal.peer.signaling import (
    MAX_ANSWER_BYTES,
    SIGN_IN_TIMEOUT,
    NotSignedIn,
    RateLimited,
    SignalingClient,
    SignalingError,
    _describe,
    retry_after,
)

# Upgrade answers that mean "busy, later", not "no WebSocket here".
_RETRY_LATER = (429, 503)
_PEER_GONE = 4500


class NoWebSocket(SignalingError):
    """The server answered the upgrade with plain HTTP: it has no /ws."""


class WebSocketSignalingClient(SignalingClient):
    """SignalingClient over a WebSocket (see the module docstring)."""

    def __init__(self, server_url: str, name: str, transport: str = "auto", **kwargs) -> None:
        super().__init__(server_url, name, **kwargs)
        if transport not in ("auto", "ws"):
            raise ValueError("transport must be auto or ws, not %r" % (transport,))
        self.transport = transport
        #: "websocket", or "http" after falling back to hanging GETs.
        self.using: Optional[str] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self._token: Optional[str] = None
        self._last = 0  # highest n handled
        self._seq = 0
        self._unacked: dict[int, Deferred] = {}
        self._too_large = False  # the socket closed on a frame over MAX_ANSWER_BYTES

    # -- the session loop (SignalingClient's, per transport) --------------------------

    async def _sign_in(self) -> None:
        if self.using == "http":
            return await SignalingClient._sign_in(self)
        try:
            await self._connect()
        except NoWebSocket as e:
            if self.transport != "auto":
                raise
            self.log.info("{url} has no WebSocket transport ({reason}): using hanging GETs",
                          url=self.server_url, reason=e)
            self.using = "http"
            return await SignalingClient._sign_in(self)
        await self._send_frame({"type": "sign_in", "name": self.name})
        frame = await self._receive()
        if frame is not None and frame.get("type") == "error" and frame.get("status") == 429:
            retry_after = frame.get("retry_after")
            raise RateLimited("sign-in answered %s" % (_refusal(frame, self._ws),),
                              float(retry_after) if isinstance(retry_after, (int, float)) else None)
        if frame is None or frame["type"] != "signed_in":
            raise SignalingError("sign-in answered %s" % (_refusal(frame, self._ws),))
        self.using = "websocket"
        old_peers = self.peers
        self.peer_id, self.server_name, self._token = frame["id"], frame["name"], frame["token"]
        self._last = 0
        self.peers = {peer["id"]: peer["name"] for peer in frame["peers"]}
        self.log.info(
            "signed in to {url} as {name} ({id}); {count} other peer(s), over WebSocket",
            url=self.server_url, name=self.server_name, id=self.peer_id, count=len(self.peers))
        self._announce_sign_in(old_peers)
        self._kick_outbox()

    async def _wait_forever(self) -> Optional[str]:
        if self.using == "http":
            return await SignalingClient._wait_forever(self)
        while self._running:
            frame = await self._receive()
            if frame is not None:
                self._handle(frame)
                continue
            if not self._running:
                return None
            code = self._ws.close_code if self._ws is not None else None
            self._lost_socket()
            if code == _PEER_GONE:
                return "the server closed our socket (%d): it has forgotten us" % (code,)
            why = await self._resume(code)
            if why is not None:
                return why
        return None

    def _handle(self, frame: dict) -> None:
        kind = frame.get("type")
        n = frame.get("n")
        if n is not None:
            if n <= self._last:
                return  # handled before the socket dropped
            self._last = n
        if kind == "message":
            body = (frame["data"].encode("utf-8") if "data" in frame
                    else base64.b64decode(frame["data_base64"]))
            self.emit("message", frame["from"], body)
        elif kind == "peer":
            self._presence(frame["id"], frame["name"], frame["connected"])
        elif kind == "ack":
            d = self._unacked.pop(frame["seq"], None)
            if d is not None:
                d.callback(None)
        elif kind == "error":
            d = self._unacked.pop(frame.get("seq"), None)
            text = "message refused (%d): %s" % (frame["status"], frame["text"])
            self.log.warn("{text}", text=text)
            if d is not None:
                d.errback(SignalingError(text))

    async def _resume(self, code) -> Optional[str]:
        """Get our peer back on a new socket; None once resumed, else why not."""
        self.log.info("socket to {url} closed ({code}): resuming", url=self.server_url, code=code)
        attempt = 0
        while self._running:
            try:
                await self._connect()
            except NoWebSocket as e:
                return "the server no longer offers WebSocket (%s)" % (e,)
            except Exception as e:
                if not self._running:
                    return None
                delay = self._after(getattr(e, "delay", None), attempt)
                attempt += 1
                reason = _describe(e)
                self.log.warn("cannot resume at {url}: {reason}; retrying in {delay:.1f} s",
                              url=self.server_url, reason=reason, delay=delay)
                sleep = self._sleep(delay)
                self.emit("retrying", delay, reason)
                if not await sleep:
                    return None
                continue
            if self._too_large:
                # The frame was the next numbered one: skip it, as an HTTP
                # answer that large is dropped.
                self._too_large = False
                self._last += 1
                self.log.warn("dropped a message: a frame of more than {limit} bytes",
                              limit=MAX_ANSWER_BYTES)
            await self._send_frame({"type": "resume", "id": self.peer_id, "token": self._token,
                                    "last": self._last})
            frame = await self._receive()
            if frame is not None and frame["type"] == "resumed":
                self.log.info("resumed as {id} after message {n}", id=self.peer_id, n=self._last)
                self._kick_outbox()
                return None
            if frame is None and not self._running:
                return None
            return "the server refused to resume (%s): it has forgotten us" % (
                _refusal(frame, self._ws),)
        return None

    # -- sending ------------------------------------------------------------------------

    def _kick_outbox(self) -> None:
        if self._outbox and not self._sending:
            ensureDeferred(self._drain_outbox()).addErrback(self._log_crash)

    async def _drain_outbox(self) -> None:
        if self.using == "http":
            return await SignalingClient._drain_outbox(self)
        self._sending = True
        try:
            # Written in order at once; each fires on its ack.  Messages
            # queued while the socket is down wait for the resume.
            while self._outbox:
                if self.peer_id is not None and (self._ws is None or self._ws.closed):
                    break  # signed in, the socket is being resumed
                to_id, body, d = self._outbox.popleft()
                if self.peer_id is None:
                    self.log.warn("not sending a message to {to}: not signed in", to=to_id)
                    d.errback(NotSignedIn("not signed in"))
                    continue
                self._seq += 1
                frame = {"type": "message", "to": to_id, "seq": self._seq}
                try:
                    frame["data"] = body.decode("utf-8")
                except UnicodeDecodeError:
                    frame["data_base64"] = base64.b64encode(body).decode("ascii")
                self._unacked[self._seq] = d
                try:
                    await self._send_frame(frame)
                except Exception:
                    # Not written: it goes first once the socket is back.
                    del self._unacked[self._seq]
                    self._outbox.appendleft((to_id, body, d))
                    break
        finally:
            self._sending = False
            if not self._outbox:
                drained, self._drained = self._drained, []
                for d in drained:
                    d.callback(None)

    async def _sign_out(self, peer_id: int) -> None:
        ws = self._ws
        if self.using != "websocket" or ws is None or ws.closed:
            # The channel is one: /sign_out ends a WebSocket peer too.
            return await SignalingClient._sign_out(self, peer_id)
        try:
            await self._send_frame({"type": "sign_out"})
            await _deferred(ws.close())
        except Exception as e:
            self.log.warn("sign-out of {id} failed: {reason}", id=peer_id, reason=_describe(e))
        else:
            self.log.info("signed out {id} ({code})", id=peer_id, code=ws.close_code)
        await self._close_session()

    async def _stop(self) -> None:
        await SignalingClient._stop(self)
        await self._close_session()

    # -- plumbing -----------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if self._ws is not None and not self._ws.closed:
            await _deferred(self._ws.close())  # a refused sign-in's socket
        connect = self._session.ws_connect(
            websocket_url(self.server_url), protocols=(WEBSOCKET_SUBPROTOCOL,),
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0), max_msg_size=MAX_ANSWER_BYTES)
        try:
            d = _deferred(asyncio.wait_for(connect, SIGN_IN_TIMEOUT))
            self._pending = d
            self._ws = await d
        except asyncio.TimeoutError:
            # As over HTTP, so the reason is explained the same way (plain HTTP on https://).
            raise TimeoutError("no answer within %g s" % (SIGN_IN_TIMEOUT,))
        except aiohttp.WSServerHandshakeError as e:
            if e.status == 429:
                raise RateLimited("the WebSocket upgrade answered 429", retry_after(
                    (e.headers or {}).get("Retry-After", ""), self._clock.seconds()))
            if e.status in _RETRY_LATER:
                raise SignalingError("the WebSocket upgrade answered %d" % (e.status,))
            raise NoWebSocket("the upgrade answered %d" % (e.status,))
        finally:
            self._pending = None

    async def _send_frame(self, frame: dict) -> None:
        await _deferred(self._ws.send_str(json.dumps(frame)))

    async def _receive(self) -> Optional[dict]:
        """The next frame, or None once the socket closed (or stop() cancelled)."""
        ws = self._ws
        while ws is not None:
            d = _deferred(ws.receive())
            self._pending = d
            try:
                message = await d
            except CancelledError:
                return None
            finally:
                self._pending = None
            if message.type == aiohttp.WSMsgType.TEXT:
                try:
                    return json.loads(message.data)
                except ValueError:
                    self.log.warn("ignoring a frame that is not JSON")
                    continue
            if message.type == aiohttp.WSMsgType.ERROR and getattr(
                    message.data, "code", None) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                self._too_large = True
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return None
        return None

    def _lost_socket(self) -> None:
        """Sends not yet acknowledged may or may not have been posted: fail them."""
        unacked, self._unacked = self._unacked, {}
        for d in unacked.values():
            d.errback(SignalingError("connection lost before the server confirmed the message"))

    async def _close_session(self) -> None:
        self._lost_socket()
        session, self._session = self._session, None
        if session is not None:
            await _deferred(session.close())


def _deferred(coro) -> Deferred:
    """aiohttp's coroutine as a Deferred; cancelling it (stop()) raises Twisted's CancelledError."""
    return Deferred.fromFuture(asyncio.ensure_future(coro)).addErrback(_cancelled)


def _cancelled(failure):
    failure.trap(asyncio.CancelledError)
    raise CancelledError()


def _refusal(frame: Optional[dict], ws) -> str:
    if frame is None:
        return "nothing (the socket closed: %s)" % (getattr(ws, "close_code", None),)
    if frame.get("type") == "error":
        return "%s %s" % (frame.get("status"), frame.get("text"))
    return repr(frame)
