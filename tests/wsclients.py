"""
An independent WebSocket client for the tests: aiohttp's, not ours.

aiohttp runs on an asyncio loop of its own in a background thread (the
suite's main thread already runs the reactor's loop), and Socket wraps one
connection in blocking calls with timeouts, so a test reads as a sequence
of frames sent and expected.
"""

import asyncio
import json
import socket
import ssl
import threading

import aiohttp

from pcsignal.protocol import websocket_url

TIMEOUT = 10


class _Loop:
    """One asyncio loop in a daemon thread, shared by every Socket."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro, timeout=TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


_loop = None


def run(coro, timeout=TIMEOUT):
    """Run a coroutine on the client loop and wait for its result."""
    global _loop
    if _loop is None:
        _loop = _Loop()
    return _loop.run(coro, timeout)


class Closed(Exception):
    """The server closed the socket; ``code`` and ``reason`` say why."""

    def __init__(self, code, reason):
        super().__init__("closed %s %r" % (code, reason))
        self.code = code
        self.reason = reason


class Socket:
    """
    One WebSocket to pcsignal's /ws (subprotocol pcsignal.v1).  A reader
    task keeps reading, so pings are answered (autoping) while the test
    does other things; what it reads waits in a queue for receive().
    """

    def __init__(self, http_url, autoping=True, protocols=("pcsignal.v1",), ca_pem=None):
        async def connect():
            self.session = aiohttp.ClientSession()
            context = ssl.create_default_context(cadata=ca_pem.decode()) if ca_pem else True
            try:
                ws = await self.session.ws_connect(
                    websocket_url(http_url), protocols=protocols, autoping=autoping, ssl=context,
                    max_msg_size=0)
            except BaseException:
                await self.session.close()
                raise
            self._inbox = asyncio.Queue()
            self._reader = asyncio.ensure_future(self._pump(ws))
            return ws

        self.ws = run(connect())

    async def _pump(self, ws):
        while True:
            message = await ws.receive()
            await self._inbox.put(message)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                await self.session.close()
                return

    @property
    def protocol(self):
        return self.ws.protocol

    def send(self, frame: dict) -> None:
        self.send_text(json.dumps(frame))

    def send_text(self, text: str) -> None:
        run(self.ws.send_str(text))

    def send_bytes(self, data: bytes) -> None:
        run(self.ws.send_bytes(data))

    def send_raw_text_frame(self, payload: bytes) -> None:
        """A text frame whose payload is these bytes, UTF-8 or not."""
        run(self.ws._writer.send_frame(payload, aiohttp.WSMsgType.TEXT))

    def _next(self, timeout, wanted):
        async def receive():
            while True:
                message = await asyncio.wait_for(self._inbox.get(), timeout)
                if message.type in wanted:
                    return message
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                    aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    raise Closed(self.ws.close_code, message.extra)

        return run(receive(), timeout + 1)

    def receive(self, timeout=TIMEOUT) -> dict:
        """The next frame as a dict; raises Closed if the server closed instead."""
        return json.loads(self._next(timeout, (aiohttp.WSMsgType.TEXT,)).data)

    def expect(self, kind: str, timeout=TIMEOUT) -> dict:
        frame = self.receive(timeout)
        assert frame["type"] == kind, frame
        return frame

    def expect_ping(self, timeout=TIMEOUT) -> bytes:
        """The next ping's payload (with autoping=False, pings reach us)."""
        return self._next(timeout, (aiohttp.WSMsgType.PING,)).data

    def expect_closed(self, timeout=TIMEOUT) -> Closed:
        try:
            frame = self.receive(timeout)
        except Closed as closed:
            return closed
        raise AssertionError("expected the server to close, got %r" % (frame,))

    def sign_in(self, name: str) -> dict:
        self.send({"type": "sign_in", "name": name})
        return self.expect("signed_in")

    def kill(self) -> None:
        """Drop the connection without a closing handshake, as a crash would."""
        async def kill():
            self._reader.cancel()
            self.ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            await self.session.close()

        run(kill())

    def close(self) -> None:
        async def close():
            await self.ws.close()
            self._reader.cancel()
            await self.session.close()

        run(close())
