"""
The link to Redis under RedisChannel: an address, and two connections kept up.

- ``parse_redis_url`` reads ``--redis``: ``redis://[[user]:password@]host[:port][/db]``,
  ``rediss://`` (TLS: the host's certificate checked against the system's
  CAs, or those in ``?ssl_ca_certs=FILE``; ``ssl_certfile`` and
  ``ssl_keyfile`` give the client certificate a Redis with
  ``tls-auth-clients yes`` asks for; redis-py's names; a relative file name
  is looked up in systemd's ``$CREDENTIALS_DIRECTORY`` if set),
  ``unix:///path/redis.sock[?db=N&password=P]`` or a bare socket path.
  Certificate files are read once, at start: a bad one is an error then.
- ``RedisLink`` keeps one connection for commands and one for pub/sub (a
  subscribed connection can send nothing else), on txredisapi's protocols but
  with our own connecting: AUTH and SELECT are sent by us, so a refused one
  is retried with back-off like any other failure (txredisapi's own factory
  stops reconnecting for good after one), and the pub/sub connection
  subscribes again each time it is made.  While either is down, every
  command fails at once with StoreUnavailable (a 503), rather than hanging
  until Redis returns; when Redis has sent nothing on either connection for
  ``command_timeout`` while a command waits, the connection it waits on is
  dropped, which fails every command waiting on it.  Each change of state is logged once.
"""

from __future__ import annotations

import collections
import os
import random
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)

from pcsignal import logs
from pcsignal.channel import StoreUnavailable
from pcsignal.options import BadValue

log = logs.logger("pcsignal.redis")

# Refusals that mean "not now" rather than "wrong": answered 503, like an outage.
_TRANSIENT = ("OOM", "LOADING", "READONLY", "MASTERDOWN", "BUSY", "NOREPLICAS", "MISCONF",
              "TRYAGAIN", "CLUSTERDOWN")


@dataclass(frozen=True)
class RedisAddress:
    host: Optional[str] = None
    port: int = 6379
    path: Optional[str] = None  # a unix socket instead of host and port
    tls: bool = False
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    # With tls: the client's TLS settings, certificates loaded (client_tls()).
    tls_options: object = field(default=None, compare=False, repr=False)

    def endpoint(self, reactor, timeout: float):
        if self.path is not None:
            return UNIXClientEndpoint(reactor, self.path, timeout=timeout)
        endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        if self.tls:
            endpoint = wrapClientTLS(self.tls_options, endpoint)
        return endpoint

    def __str__(self):
        """For logs: never the password."""
        where = self.path if self.path is not None else "%s:%d" % (self.host, self.port)
        return "%s%s db %d" % ("TLS " if self.tls else "", where, self.db)


# The query parameters each scheme takes.
_PARAMETERS = {
    "unix": ("db", "password"),
    "redis": (),
    "rediss": ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"),
}


def parse_redis_url(text: str) -> RedisAddress:
    """The ``--redis`` value as a RedisAddress; BadValue says what is wrong."""
    if text.startswith("/"):
        return RedisAddress(path=text)
    try:
        url = urlsplit(text)
        port = url.port
        query = parse_qs(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
    except ValueError as e:
        raise BadValue("is not a Redis URL (%s): %r" % (e, text))
    if url.scheme in _PARAMETERS:
        for name in query:
            if name not in _PARAMETERS[url.scheme]:
                if name.startswith("ssl_") and url.scheme == "redis":
                    raise BadValue("takes %s only with rediss:// (TLS), not in %r"
                                   % (name, text))
                raise BadValue("has a parameter %s:// does not take: %r (it takes %s)" % (
                    url.scheme, name, ", ".join(_PARAMETERS[url.scheme]) or "none"))
    db_text = url.path.lstrip("/") if url.scheme != "unix" else query.get("db", ["0"])[0]
    if url.scheme == "unix":
        if not url.path:
            raise BadValue("needs a socket path, as in unix:///run/redis/redis.sock, not %r"
                           % (text,))
        password = query.get("password", [None])[0]
        return RedisAddress(path=url.path, db=_db(db_text, text), password=password)
    if url.scheme not in ("redis", "rediss"):
        raise BadValue("must start with redis://, rediss:// or unix://, or be a socket "
                       "path, not %r" % (text,))
    if not url.hostname:
        raise BadValue("needs a host, as in redis://localhost:6379/0, not %r" % (text,))
    tls = url.scheme == "rediss"
    return RedisAddress(
        host=url.hostname,
        port=port or 6379,
        tls=tls,
        db=_db(db_text, text),
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password is not None else None,
        tls_options=client_tls(url.hostname, *(query.get(name, [None])[0] for name in
                                               _PARAMETERS["rediss"])) if tls else None,
    )


def client_tls(host: str, ca_file: Optional[str], cert_file: Optional[str],
               key_file: Optional[str]):
    """
    TLS settings for a connection to host: its certificate checked against
    ca_file's certificates (PEM, one or more) or else the system's; with
    cert_file, that client certificate (key_file, or in cert_file itself).
    """
    trust = None
    if ca_file is not None:
        pem = _read(ca_file, "ssl_ca_certs")
        blocks = [b"-----BEGIN CERTIFICATE-----" + block
                  for block in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
        if not blocks:
            raise BadValue("ssl_ca_certs: %s holds no PEM certificate" % (ca_file,))
        try:
            trust = trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
        except Exception as e:
            raise BadValue("ssl_ca_certs: %s is not a PEM certificate file (%s)" % (ca_file, e))
    client = None
    if cert_file is not None:
        pem = _read(cert_file, "ssl_certfile")
        if key_file is not None:
            pem += b"\n" + _read(key_file, "ssl_keyfile")
        try:
            client = PrivateCertificate.loadPEM(pem)
        except Exception as e:
            raise BadValue("ssl_certfile %s with ssl_keyfile %s: not a certificate and its "
                           "private key in PEM (%s)" % (cert_file, key_file or cert_file, e))
    elif key_file is not None:
        raise BadValue("ssl_keyfile needs ssl_certfile, the certificate it belongs to")
    return optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)


def _read(path: str, name: str) -> bytes:
    # A relative name is a systemd credential (LoadCredential=) when there
    # are any: one options file then serves every instance of a template.
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and not os.path.isabs(path):
        path = os.path.join(credentials, path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadValue("%s: cannot read %s (%s)" % (name, path, e.strerror))


def _db(db_text: str, text: str) -> int:
    if not db_text:
        return 0
    if not db_text.isdigit():
        raise BadValue("has a database number that is not a number: %r" % (text,))
    return int(db_text)


parse_redis_url.coerceDoc = (
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... for TLS (with "
    "?ssl_ca_certs=, &ssl_certfile=, &ssl_keyfile=), or a unix socket path.")


def unavailable(failure):
    """Turn a lost connection or a 'not now' refusal into StoreUnavailable."""
    error = failure.value
    if isinstance(error, txredisapi.ConnectionError):  # TimeoutError is one too
        raise StoreUnavailable() from error
    if isinstance(error, txredisapi.ResponseError) and str(error).startswith(_TRANSIENT):
        raise StoreUnavailable() from error
    return failure


class _Commands(txredisapi.RedisProtocol):
    keeper = None

    def tryConvertData(self, data):
        # No charset, no number conversion: replies stay as hiredis parsed
        # them (txredisapi would rebuild every list, element by element).
        return data

    def _build_command(self, *args, **kwargs):
        # The hot path's encoding (txredisapi's own works byte by byte in a
        # bytearray): every argument is bytes, str or int here.
        parts = [b"*%d\r\n" % (len(args),)]
        add = parts.append
        for arg in args:
            if arg.__class__ is not bytes:
                arg = (arg if arg.__class__ is str else str(arg)).encode()
            add(b"$%d\r\n" % (len(arg),))
            add(arg)  # not copied into a formatted string: a body may be 64 KiB
            add(b"\r\n")
        return b"".join(parts)

    def execute_command(self, *args, **kwargs):
        # txredisapi's, less the wrapping Deferred and two callbacks per
        # command that serve only its reply timeout: RedisLink keeps its
        # own deadlines (no pipelining or transactions here either).
        if not self.connected:
            raise txredisapi.ConnectionError("Not connected")
        self.transport.write(self._build_command(*args))
        return self.replyQueue.get().addCallback(self.handle_reply)

    def connectionLost(self, why):
        if self.keeper is not None:
            self.keeper.unready(self, why)
        txredisapi.RedisProtocol.connectionLost(self, why)
        if self.keeper is not None:
            self.keeper.lost(self, why)


class _Subscriber(txredisapi.SubscriberProtocol):
    keeper = None

    def dataReceived(self, data):
        if self.keeper is not None:
            self.keeper.link.heard = self.keeper.link.reactor.seconds()
        txredisapi.SubscriberProtocol.dataReceived(self, data)

    def messageReceived(self, pattern, channel, message):
        self.keeper.link.on_message(message)

    def connectionLost(self, why):
        if self.keeper is not None:
            self.keeper.unready(self, why)
        txredisapi.SubscriberProtocol.connectionLost(self, why)
        if self.keeper is not None:
            self.keeper.lost(self, why)


class _Keeper:
    """
    Keeps one connection up: connect, AUTH, SELECT, ``prepare``; on a
    failure or a lost connection, again after a back-off delay (0.25 s
    doubling to 1 s, with jitter: a Redis that restarts is back in use
    within about a second).
    """

    initial_delay = 0.25
    max_delay = 1.0

    def __init__(self, link: "RedisLink", name: str, protocol_class, prepare: Callable):
        self.link = link
        self.name = name
        self.protocol_class = protocol_class
        self.prepare = prepare
        self.proto = None  # ready for use
        self.attempts = 0
        self.reason = "not connected yet"
        self._retry = None
        self._stopped = False

    def start(self):
        self._stopped = False
        self._connect()

    def stop(self):
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        proto, self.proto = self.proto, None
        if proto is not None:
            proto.keeper = None
            proto.transport.loseConnection()

    def _connect(self):
        self._retry = None
        link = self.link

        def build():
            p = self.protocol_class(charset=None, convertNumbers=False)
            p.keeper = self
            return p

        factory = protocol.Factory.forProtocol(build)
        factory.noisy = False
        d = link.address.endpoint(link.reactor, link.command_timeout).connect(factory)
        d.addCallback(self._handshake)
        d.addErrback(self._failed)

    def _handshake(self, proto):
        link = self.link
        if ITCPTransport.providedBy(proto.transport):
            # Commands are small and answered at once: never held back by
            # Nagle's algorithm waiting for the previous one's ACK.
            proto.transport.setTcpNoDelay(True)
        proto.sent = collections.deque()  # when each command waiting for its answer went
        # Fails if the connection is lost first (see lost()) or takes too long.
        proto.handshake = handshake = defer.Deferred()
        steps = proto.whenConnected()
        address = link.address
        if address.password is not None:
            auth = ("AUTH", address.username, address.password) if address.username \
                else ("AUTH", address.password)
            steps.addCallback(lambda _: proto.execute_command(*auth))
        if address.db:
            steps.addCallback(lambda _: proto.execute_command("SELECT", address.db))
        steps.addCallback(lambda _: self.prepare(proto))
        steps.addCallbacks(lambda r: handshake.called or handshake.callback(r),
                           lambda f: handshake.called or handshake.errback(f))
        timer = link.reactor.callLater(link.command_timeout, proto.transport.abortConnection)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        handshake.addBoth(done)
        handshake.addCallback(self._ready, proto)
        handshake.addErrback(self._refused, proto)
        return handshake

    def _ready(self, _, proto):
        if self._stopped:
            proto.keeper = None
            proto.transport.loseConnection()
            return
        self.proto = proto
        self.attempts = 0
        self.link.changed()

    def _refused(self, failure, proto):
        proto.keeper = None
        proto.transport.abortConnection()
        self._failed(failure)

    def _failed(self, failure):
        self.reason = failure.getErrorMessage() or failure.type.__name__
        self.link.changed(failed=True)
        self._schedule()

    def unready(self, proto, why):
        """
        Lost before it was ready: the handshake fails with why (a TLS
        refusal, say), not with the "Lost connection" its commands get next.
        """
        handshake = getattr(proto, "handshake", None)
        if handshake is not None and not handshake.called:
            handshake.errback(why)

    def lost(self, proto, why):
        """Lost once ready (unready() has failed a handshake still under way)."""
        proto.keeper = None
        if proto is self.proto:
            self.proto = None
            self.reason = getattr(proto, "dropped", None) or \
                "connection lost: %s" % (why.getErrorMessage(),)
            self.link.changed()
            self._schedule()

    def _schedule(self):
        if self._stopped or self._retry is not None:
            return
        delay = min(self.max_delay, self.initial_delay * 2 ** min(self.attempts, 10))
        self.attempts += 1
        delay *= random.uniform(0.8, 1.2)
        self._retry = self.link.reactor.callLater(delay, self._connect)


class RedisLink:
    """
    A command connection and a subscribed connection to one Redis.

    ``on_message(bytes)`` gets every message published on the subscribed
    channels; ``on_state(up, reason)`` hears each change: up means both
    connections are ready.  ``command(*args)`` sends one command.
    """

    def __init__(self, address: RedisAddress, channels: list[bytes], reactor,
                 on_message: Callable, on_state: Callable, command_timeout: float = 2.0):
        self.address = address
        self.channels = channels
        self.reactor = reactor
        self.on_message = on_message
        self.on_state = on_state
        self.command_timeout = command_timeout
        self.up = False
        self.heard = 0.0  # when Redis last sent anything, on either connection
        self._told = False  # on_state heard anything yet
        self._commands = _Keeper(self, "commands", _Commands, self._prepare_commands)
        self._subscriber = _Keeper(self, "pub/sub", _Subscriber, self._subscribe)
        self._watchdog = task.LoopingCall(self._check)
        self._watchdog.clock = reactor
        self.scripts: dict[str, tuple[bytes, bytes]] = {}  # name -> (sha1, source)

    def start(self):
        self._commands.start()
        self._subscriber.start()
        self._watchdog.start(self.command_timeout / 4, now=False)

    def stop(self):
        if self._watchdog.running:
            self._watchdog.stop()
        self._commands.stop()
        self._subscriber.stop()
        self.changed()

    @property
    def busy(self) -> int:
        """Commands sent and not yet answered."""
        proto = self._commands.proto
        return len(proto.sent) if proto is not None else 0

    @property
    def reason(self) -> str:
        down = [k for k in (self._commands, self._subscriber) if k.proto is None]
        return "; ".join("%s: %s" % (k.name, k.reason) for k in down)

    def changed(self, failed: bool = False):
        """Tell on_state of a change, and of the first failure to connect at all."""
        up = self._commands.proto is not None and self._subscriber.proto is not None
        if up != self.up or (failed and not self._told):
            self.up = up
            self._told = True
            self.on_state(up, self.reason)

    # -- commands ---------------------------------------------------------------------

    def command(self, *args) -> defer.Deferred:
        proto = self._commands.proto
        if proto is None or not self.up:
            return defer.fail(StoreUnavailable())
        return self._send(proto, args)

    def _send(self, proto, args):
        proto.sent.append(self.reactor.seconds())
        return proto.execute_command(*args).addCallbacks(
            self._answered, self._not_answered, (proto,), None, (proto,))

    def _answered(self, result, proto):
        if proto.sent:
            proto.sent.popleft()
        self.heard = self.reactor.seconds()
        return result

    def _not_answered(self, failure, proto):
        self._answered(None, proto)
        return unavailable(failure)

    def script(self, name: str, args: list) -> defer.Deferred:
        """EVALSHA a script loaded at connection; EVAL if Redis has forgotten it."""
        sha, source = self.scripts[name]
        return self.command("EVALSHA", sha, 0, *args).addErrback(self._reload, source, args)

    def _reload(self, failure, source, args):
        failure.trap(txredisapi.ResponseError)
        if not str(failure.value).startswith("NOSCRIPT"):
            return failure
        return self.command("EVAL", source, 0, *args)

    def _prepare_commands(self, proto):
        loads = [proto.execute_command("SCRIPT", "LOAD", source)
                 for _, source in self.scripts.values()]
        return defer.gatherResults(loads, consumeErrors=True).addErrback(
            lambda f: f.value.subFailure)

    def _subscribe(self, proto):
        return defer.gatherResults([proto.subscribe([c]) for c in self.channels],
                                   consumeErrors=True).addErrback(lambda f: f.value.subFailure)

    def _check(self):
        """
        Drop a connection with a command waiting when Redis has sent
        nothing, on either connection, for command_timeout: Redis is stuck
        or gone.  (A Redis that answers something, however long its queue of
        scripts, is only busy: a PING on the pub/sub connection may wait
        behind them while the other connection's answers come.)
        """
        now = self.reactor.seconds()
        for keeper in (self._commands, self._subscriber):
            proto = keeper.proto
            if proto is None:
                continue
            if keeper is self._subscriber and not proto.sent:
                # Nothing else travels this way on its own: ask.
                proto.sent.append(now)
                proto.ping().addCallbacks(self._answered, self._not_answered, (proto,), None,
                                          (proto,)).addErrback(lambda _: None)
            elif proto.sent and now - max(proto.sent[0], self.heard) > self.command_timeout:
                proto.dropped = "no answer within %gs" % (self.command_timeout,)
                proto.transport.abortConnection()
