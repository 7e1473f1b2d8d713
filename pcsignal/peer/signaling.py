"""
The signaling client: a peer of PROTOCOL.md over HTTP, with the native
client's habits.

- Sign in (``/sign_in?NAME``), then keep one hanging GET (``/wait``) parked,
  re-issued as soon as it is answered.  Every request uses its own
  connection (a non-persistent pool), as the native client does, so the
  parked GET never holds up a message.
- Messages go out strictly one at a time, in order: the next POST starts
  when the previous one has been answered.
- A server that cannot be reached is retried after ``retry_delay`` (2 s),
  the delay doubling up to ``max_retry_delay``, each plus a random jitter
  of up to one ``retry_delay`` (Twisted's ``backoffPolicy``), so that many
  peers do not come back in lockstep after a server restart.  A sign-in
  that gets no answer within SIGN_IN_TIMEOUT fails; for an ``https://`` URL
  the server is then asked in plain HTTP, so that the log can say "it
  speaks plain HTTP, not TLS" instead of just "no answer".
- When the hanging GET fails (connection refused or reset, the server
  restarting, ``502``/``503``/``504``, ``429``), ask again with the same id,
  with the same back-off: a server that keeps its peers across a restart
  (pcsignal with ``--state-file`` or ``--redis``) still knows us, with our
  queued messages.  Only when the server says it does not know our id (the
  protocol's ``500``, from the reference and pcsignal alike) or another
  client now waits as us (``409``; or any other ``4xx``) do we sign in
  again, under a new id.  If the new peer list still shows our old id under
  our old name, that stale entry is signed out.  (Only an entry with both:
  a server handing out sequential ids may have given our old id to another
  peer after a restart.)
- ``429 Too Many Requests`` (pcsignal's sign-in rate limit, or a proxy's):
  the request is made again after the ``Retry-After`` seconds (at most
  MAX_RETRY_AFTER, plus the back-off's jitter so that many peers do not come
  back at once), whether it was a sign-in, a ``/wait`` or a message.
- The peer list is kept from the sign-in answer and the notifications.
- ``stop()`` signs out.
- ``ice_servers()`` asks pcsignal's own ``/ice-servers`` for the ICE
  servers of a call (other servers, like the reference, have no such path).

Events (pyee; handlers may return Deferreds or be coroutines):

- ``signed_in(peer_id, peers)``: signed in; peers maps id to name;
- ``peer_joined(peer_id, name)`` and ``peer_left(peer_id, name)``, also
  for the differences between two peer lists after signing in again;
- ``message(peer_id, body)``: a message from another peer (bytes);
- ``disconnected(reason)``: we are no longer signed in;
- ``retrying(delay, reason)``: the server could not be reached.

Time comes from the ``clock`` given (an IReactorTime), so back-off can be
tested with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import collections
import email.utils
import json
import random
from typing import Optional
from urllib.parse import quote, urlsplit, urlunsplit

import treq
from pyee.twisted import TwistedEventEmitter
from treq.client import HTTPClient
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from pcsignal import ice, logs, protocol

DEFAULT_RETRY_DELAY = 2.0
DEFAULT_MAX_RETRY_DELAY = 10.0
SIGN_IN_TIMEOUT = 5.0
SIGN_OUT_TIMEOUT = 5.0
ICE_SERVERS_TIMEOUT = 5.0
PROBE_TIMEOUT = 2.0
#: Largest answer read (a browser's SDP is a few kB; pcsignal's own limit on
#: messages is 64 KiB, the reference server has none): a larger one is
#: dropped and its connection closed, so a hostile peer cannot fill memory.
MAX_ANSWER_BYTES = 256 * 1024
#: Longest pause a ``Retry-After`` may ask for; a longer one is cut to this.
MAX_RETRY_AFTER = 60.0
#: /wait answers that mean "later", not "we do not know you": the wait is
#: made again with the same id.  Any other (the protocol's 500 for an
#: unknown id, 409 when another client waits as us, ...) means sign in again.
_WAIT_TRANSIENT = frozenset({408, 429, 502, 503, 504})


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    """Connects without the factory's "Starting factory" log lines."""

    def __init__(self, endpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory):
        # Every request has its own connection: those lines would drown the log.
        factory.noisy = False
        return self._endpoint.connect(factory)


@implementer(IAgentEndpointFactory)
class _QuietEndpoints:
    """Endpoints for http:// and https:// URLs, as Agent makes them, but quiet."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return _QuietEndpoint(endpoint)


class SignalingError(Exception):
    """The server answered, but not as the protocol says it should."""


class NotSignedIn(SignalingError):
    """A message could not be sent: we are not signed in."""


class AnswerTooLarge(SignalingError):
    """The server's answer is larger than MAX_ANSWER_BYTES: dropped."""


class RateLimited(SignalingError):
    """``429 Too Many Requests``: ``delay`` is the pause asked for (None: not said)."""

    def __init__(self, text: str, delay: Optional[float]) -> None:
        super().__init__(text)
        self.delay = delay


class SignalingClient(TwistedEventEmitter):
    """One peer's session with a signaling server (see the module docstring)."""

    def __init__(
        self,
        server_url: str,
        name: str,
        reactor=None,
        clock=None,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
    ) -> None:
        super().__init__()
        self.log = logs.logger("pcpeer.signaling")
        if reactor is None:
            from twisted.internet import reactor
        self.server_url = server_url.rstrip("/")
        self.name = name
        self.retry_delay = retry_delay
        self.max_retry_delay = max(retry_delay, max_retry_delay)
        self._backoff = backoffPolicy(
            initialDelay=retry_delay,
            maxDelay=self.max_retry_delay,
            factor=2.0,
            jitter=lambda: random.uniform(0, retry_delay),
        )
        self._clock = clock if clock is not None else reactor
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = HTTPClient(Agent.usingEndpointFactory(reactor, _QuietEndpoints(reactor), pool=pool))
        #: Our id while signed in, else None.
        self.peer_id: Optional[int] = None
        #: Our name as the server spells it (it may clean it).
        self.server_name: Optional[str] = None
        #: The other signed-in peers: id -> name.
        self.peers: dict[int, str] = {}
        self._running = False
        self._run: Optional[Deferred] = None
        self._pending: Optional[Deferred] = None
        self._first_sign_in: Optional[Deferred] = None
        self._outbox: collections.deque = collections.deque()
        self._sending = False
        self._drained: list[Deferred] = []
        self._outbox_pause: Optional[Deferred] = None
        self.on("failure", self._log_handler_failure)

    # -- public API --------------------------------------------------------------

    def start(self) -> Deferred:
        """Start signing in; fires with our id once signed in the first time."""
        if self._running:
            raise RuntimeError("already started")
        self._running = True
        self._first_sign_in = Deferred()
        self._run = ensureDeferred(self._run_forever())
        self._run.addErrback(self._log_crash)
        return self._first_sign_in

    def stop(self) -> Deferred:
        """Stop waiting, fail queued messages, and sign out."""
        return ensureDeferred(self._stop())

    def send(self, to_id: int, body: bytes) -> Deferred:
        """Queue a message; fires when the server has accepted it (in order)."""
        d: Deferred = Deferred()
        self._outbox.append((to_id, body, d))
        if not self._sending:
            ensureDeferred(self._drain_outbox()).addErrback(self._log_crash)
        return d

    def ice_servers(self) -> Deferred:
        """
        ``GET /ice-servers``: fires with the server's RTCConfiguration-shaped
        dict, or fails with SignalingError saying why there is none (not
        signed in, no such path, not JSON, unreachable).
        """
        return ensureDeferred(self._ice_servers())

    async def _ice_servers(self) -> dict:
        if self.peer_id is None:
            raise NotSignedIn("not signed in")
        path = ice.PATH.decode("ascii")
        try:
            response, body = await self._request(
                "GET", "%s%s?peer_id=%d" % (self.server_url, path, self.peer_id), timeout=ICE_SERVERS_TIMEOUT)
        except Exception as e:
            raise SignalingError("%s failed: %s" % (path, _describe(e)))
        if response.code != 200:
            raise SignalingError("%s answered %d" % (path, response.code))
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise SignalingError("%s answered something other than a JSON object" % (path,))
        return answer

    def find_peer(self, name_or_id: str) -> Optional[int]:
        """The id of a listed peer given its id or its name (oldest first)."""
        peer_id = protocol.atoi(name_or_id) if name_or_id.strip().isdigit() else None
        if peer_id in self.peers:
            return peer_id
        for pid, name in self.peers.items():
            if name == name_or_id:
                return pid
        return None

    # -- the session loop ----------------------------------------------------------

    async def _run_forever(self) -> None:
        attempt = 0
        while self._running:
            try:
                await self._sign_in()
            except Exception as e:
                if not self._running:
                    return  # cancelled by stop()
                reason = await self._why_not(e)
                if not self._running:
                    return
                if isinstance(e, RateLimited):
                    delay = self._after(e.delay, attempt)
                else:
                    delay = self._backoff(attempt)
                attempt += 1
                self.log.warn(
                    "cannot sign in to {url}: {reason}; retrying in {delay:.1f} s",
                    url=self.server_url,
                    reason=reason,
                    delay=delay,
                )
                # Schedule the retry before telling anyone, so that a handler
                # driving the clock (a test) finds it scheduled.
                sleep = self._sleep(delay)
                self.emit("retrying", delay, reason)
                if not await sleep:
                    return
                continue
            attempt = 0
            reason = await self._wait_forever()
            if reason is None:
                return
            self._signed_out(reason)

    async def _sign_in(self) -> None:
        old_id, old_name = self.peer_id, self.server_name
        url = "%s/sign_in?%s" % (self.server_url, quote(self.name, safe=""))
        response, body = await self._request("GET", url, timeout=SIGN_IN_TIMEOUT, loop=True)
        if response.code == 429:
            raise rate_limited("sign-in", response, body, self._clock.seconds())
        if response.code != 200:
            raise SignalingError("sign-in answered %d" % (response.code,))
        peer_id = protocol.atoi(_pragma(response))
        entries = protocol.parse_entries(body)
        if peer_id is None or not entries or entries[0].peer_id != peer_id:
            raise SignalingError("sign-in answer without our id (Pragma %r)" % (_pragma(response),))
        # Our own stale entry has our old id AND our old name: with sequential
        # ids, a restarted server may have given the old id to someone else.
        stale = old_id is not None and any(e.peer_id == old_id and e.name == old_name for e in entries[1:])
        old_peers = self.peers
        self.peer_id, self.server_name = peer_id, entries[0].name
        self.peers = {
            e.peer_id: e.name
            for e in entries[1:]
            if e.connected and not (stale and e.peer_id == old_id and e.name == old_name)
        }
        self.log.info(
            "signed in to {url} as {name} ({id}); {count} other peer(s)",
            url=self.server_url,
            name=self.server_name,
            id=peer_id,
            count=len(self.peers),
        )
        if stale:
            self.log.info("signing out our previous id {id}", id=old_id)
            ensureDeferred(self._sign_out(old_id))
        self._announce_sign_in(old_peers)

    def _announce_sign_in(self, old_peers: dict) -> None:
        """Events for a sign-in (self.peers is its list): who left meanwhile, us, who is new."""
        for pid, name in old_peers.items():
            if pid not in self.peers:
                self.emit("peer_left", pid, name)
        self.emit("signed_in", self.peer_id, dict(self.peers))
        for pid, name in self.peers.items():
            if pid not in old_peers:
                self.emit("peer_joined", pid, name)
        if self._first_sign_in is not None:
            first, self._first_sign_in = self._first_sign_in, None
            first.callback(self.peer_id)

    async def _wait_forever(self) -> Optional[str]:
        """Keep the hanging GET parked; returns why we are no longer signed in (None: stopped)."""
        failures = 0
        while self._running:
            url = "%s/wait?peer_id=%d" % (self.server_url, self.peer_id)
            asked_for = None
            try:
                response, body = await self._request("GET", url, loop=True)
            except AnswerTooLarge as e:
                # The server has handed it over: drop it, stay signed in.
                self.log.warn("dropped a message: {reason}", reason=e)
                continue
            except Exception as e:
                if not self._running:
                    return None  # cancelled by stop()
                reason = "the hanging GET failed (%s)" % (_describe(e),)
            else:
                if response.code == 200:
                    failures = 0
                    self._waited(response, body)
                    continue
                if response.code not in _WAIT_TRANSIENT:
                    return "the server answered %d on /wait: it has forgotten us" % (response.code,)
                reason = "the server answered %d on /wait" % (response.code,)
                if response.code == 429:
                    asked_for = retry_after(_header(response, b"Retry-After"), self._clock.seconds())
            # The server may be restarting, or busy: it may still know us.
            delay = self._after(asked_for, failures)
            failures += 1
            self.log.warn("{reason}: waiting again as {id} in {delay:.1f} s",
                          reason=reason, id=self.peer_id, delay=delay)
            sleep = self._sleep(delay)
            self.emit("retrying", delay, reason)
            if not await sleep:
                return None
        return None

    def _waited(self, response, body: bytes) -> None:
        """One /wait answer: a notification about the peer list, or a message."""
        sender = protocol.atoi(_pragma(response))
        if sender is None:
            self.log.warn("ignoring a /wait answer without a peer id in Pragma")
        elif sender == self.peer_id:
            self._notification(body)
        else:
            self.emit("message", sender, body)

    def _notification(self, body: bytes) -> None:
        for entry in protocol.parse_entries(body):
            self._presence(entry.peer_id, entry.name, entry.connected)

    def _presence(self, peer_id: int, name: str, connected: bool) -> None:
        """Another peer signed in or out (told once per change, whatever the transport)."""
        if peer_id == self.peer_id:
            return
        if connected and peer_id not in self.peers:
            self.peers[peer_id] = name
            self.log.info("{name} ({id}) signed in", name=name, id=peer_id)
            self.emit("peer_joined", peer_id, name)
        elif not connected and peer_id in self.peers:
            name = self.peers.pop(peer_id)
            self.log.info("{name} ({id}) signed out", name=name, id=peer_id)
            self.emit("peer_left", peer_id, name)

    def _signed_out(self, reason: str) -> None:
        self.log.warn("no longer signed in: {reason}; signing in again", reason=reason)
        self.emit("disconnected", reason)

    async def _stop(self) -> None:
        self._running = False
        if self._pending is not None:
            self._pending.cancel()
        if self._outbox_pause is not None:
            self._outbox_pause.cancel()  # a message waiting out a 429 fails now
        if self._run is not None:
            await self._run
        if self._first_sign_in is not None:
            first, self._first_sign_in = self._first_sign_in, None
            first.errback(NotSignedIn("stopped before signing in"))
        if self._sending:
            # Let queued messages (hang-ups, typically) go out before signing out.
            drained: Deferred = Deferred()
            self._drained.append(drained)
            drained.addTimeout(SIGN_OUT_TIMEOUT, self._clock)
            try:
                await drained
            except Exception:
                self.log.warn("stopping with {n} message(s) unsent", n=len(self._outbox))
        while self._outbox:
            _, _, d = self._outbox.popleft()
            d.errback(NotSignedIn("stopping"))
        if self.peer_id is not None:
            peer_id, self.peer_id = self.peer_id, None
            await self._sign_out(peer_id)
            self.emit("disconnected", "signed out")

    async def _sign_out(self, peer_id: int) -> None:
        url = "%s/sign_out?peer_id=%d" % (self.server_url, peer_id)
        try:
            response, _ = await self._request("GET", url, timeout=SIGN_OUT_TIMEOUT)
        except Exception as e:
            self.log.warn("sign-out of {id} failed: {reason}", id=peer_id, reason=_describe(e))
        else:
            self.log.info("signed out {id} ({code})", id=peer_id, code=response.code)

    # -- sending ---------------------------------------------------------------

    async def _drain_outbox(self) -> None:
        self._sending = True
        try:
            while self._outbox:
                to_id, body, d = self._outbox.popleft()
                if self.peer_id is None:
                    self.log.warn("not sending a message to {to}: not signed in", to=to_id)
                    d.errback(NotSignedIn("not signed in"))
                    continue
                try:
                    response, answer = await self._post(to_id, body)
                except Exception as e:
                    self.log.warn("message to {to} failed: {reason}", to=to_id, reason=_describe(e))
                    d.errback(e)
                    continue
                if response.code != 200:
                    reason = answer.decode("utf-8", "replace").strip() or str(response.code)
                    self.log.warn("message to {to} refused ({code}): {reason}", to=to_id, code=response.code, reason=reason)
                    d.errback(SignalingError("message refused (%d): %s" % (response.code, reason)))
                else:
                    d.callback(None)
        finally:
            self._sending = False
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    async def _post(self, to_id: int, body: bytes):
        """POST one message; after a 429, again once the Retry-After has passed (order kept)."""
        attempt = 0
        while True:
            url = "%s/message?peer_id=%d&to=%d" % (self.server_url, self.peer_id, to_id)
            response, answer = await self._request("POST", url, body)
            if response.code != 429 or not self._running:
                return response, answer
            limited = rate_limited("message to %d" % (to_id,), response, answer, self._clock.seconds())
            delay = self._after(limited.delay, attempt)
            attempt += 1
            self._outbox_pause = deferLater(self._clock, delay)  # scheduled before it is logged
            self.log.warn("{reason}: sending it again in {delay:.1f} s", reason=limited, delay=delay)
            try:
                await self._outbox_pause
            except CancelledError:
                raise NotSignedIn("stopping")
            finally:
                self._outbox_pause = None
            if self.peer_id is None:
                raise NotSignedIn("not signed in")

    # -- plumbing --------------------------------------------------------------

    def _after(self, asked_for: Optional[float], attempt: int) -> float:
        """Seconds until the next try: what a 429 asked for (bounded, jittered), else the back-off."""
        if asked_for is None:
            return self._backoff(attempt)
        return min(asked_for, MAX_RETRY_AFTER) + random.uniform(0, self.retry_delay)

    async def _request(
        self, method: str, url: str, body: Optional[bytes] = None, timeout: Optional[float] = None, loop: bool = False
    ):
        """One request and its whole answer; loop=True: the session loop's, which stop() cancels."""
        headers = {b"Content-Type": [b"text/plain"]} if body is not None else None
        d = self._http.request(method, url, data=body, headers=headers)
        timer = None
        if timeout is not None:
            # Not addTimeout: the cancelled request fails with a wrapped
            # CancelledError, which addTimeout would not recognise.
            timer = self._clock.callLater(timeout, d.cancel)
        if loop:
            self._pending = d
        try:
            response = await d
            content = await _read_body(response)
        except Exception:
            if timer is not None and not timer.active():
                raise TimeoutError("no answer within %g s" % (timeout,))
            raise
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            if self._pending is d:
                self._pending = None
        return response, content

    async def _why_not(self, error: Exception) -> str:
        """Why signing in failed, in words; asks in plain HTTP when TLS got no answer."""
        if not isinstance(error, TimeoutError):
            return _describe(error)
        reason = "no answer within %g s" % (SIGN_IN_TIMEOUT,)
        scheme, netloc, _, _, _ = urlsplit(self.server_url)
        if scheme != "https":
            return reason
        plain = urlunsplit(("http", netloc, "/", "", ""))
        try:
            await self._request("GET", plain, timeout=PROBE_TIMEOUT, loop=True)
        except Exception:
            return reason
        return "%s: it speaks plain HTTP, not TLS (use %s)" % (reason, plain.rstrip("/"))

    def _sleep(self, delay: float) -> Deferred:
        """Fires after delay with True, or with False if stopped meanwhile."""
        self._pending = deferLater(self._clock, delay)

        def done(result):
            self._pending = None
            return self._running and not isinstance(result, Failure)

        self._pending.addBoth(done)
        return self._pending

    def _log_handler_failure(self, failure) -> None:
        self.log.failure("an event handler failed", failure)

    def _log_crash(self, failure) -> None:
        self.log.failure("signaling client crashed", failure)


async def _read_body(response) -> bytes:
    """The whole body, or AnswerTooLarge (and the connection closed) past MAX_ANSWER_BYTES."""
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > MAX_ANSWER_BYTES:
            raise AnswerTooLarge("an answer of more than %d bytes (from peer %s)" % (MAX_ANSWER_BYTES, _pragma(response)))
        chunks.append(data)

    await treq.collect(response, collect)
    return b"".join(chunks)


def rate_limited(what: str, response, body: bytes, now: float) -> RateLimited:
    """A 429 answer as RateLimited, with the pause its ``Retry-After`` asks for."""
    text = body.decode("utf-8", "replace").strip()[:200] or "Too Many Requests"
    delay = retry_after(_header(response, b"Retry-After"), now)
    asked = "" if delay is None else ", Retry-After %g s" % (delay,)
    return RateLimited("%s answered 429 (%s%s)" % (what, text, asked), delay)


def retry_after(value: str, now: float) -> Optional[float]:
    """Seconds a ``Retry-After`` value asks for (delay-seconds or an HTTP-date), None if unusable."""
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def _header(response, name: bytes) -> str:
    values = response.headers.getRawHeaders(name) or [b""]
    return values[0].decode("latin-1")


def _pragma(response) -> str:
    return _header(response, b"Pragma")


def _describe(error: BaseException) -> str:
    """A one-line reason for a connection error (treq wraps them in lists)."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(_describe(r.value) for r in reasons)
    return str(error) or error.__class__.__name__
