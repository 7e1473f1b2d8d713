"""
``twistd pcsignal``: options and the service tree.

Every option is checked when it is parsed (twistd's usage error names it).
makeService then listens on every endpoint at once, so a port in use ends
start-up with one line naming the option and the address; then it loads
the ``--state-file``, if any.  The services:

- one listener per endpoint string (anything ``endpoints.serverFromString``
  takes: tcp:, ssl:, unix:, systemd:, ...), and per ``--internal-listen``;
- the signaling service, which owns the channel and, on stop, answers (or,
  with a state file, hangs up) every parked wait, lets the answers reach
  their clients, and writes the state file;
- the reloader (SIGHUP).
"""

from __future__ import annotations

import dataclasses
import gc
import getopt
import shlex
import sys

from twisted.application import service
from twisted.python import usage

from pcsignal import ice, logs, ws, state
from pcsignal.channel import Limits, random_ids, sequential_ids
from pcsignal.channel.memory import MemoryChannel
from pcsignal.channel.redis import RedisChannel
from pcsignal.channel.redis_link import parse_redis_url
from pcsignal.fds import default_max_connections, raise_open_files_limit
from pcsignal.listeners import ListenerService, check_endpoint
from pcsignal.metrics import ServerMetrics
from pcsignal.options import (
    BadValue,
    Options as CheckedOptions,
    bad_option,
    log_level,
    non_negative_float,
    port_number,
    positive_float,
    positive_int,
    writable_file,
)
from pcsignal.reload import Change, Reloader, flag, restart_only, setting
from pcsignal.turn_secret import TurnSecret, UnusableSecretFile, read_secret
from pcsignal.web import InternalSite, SignalingSite

log = logs.logger('pcsignal.server')


def config_words(path: str) -> list[str]:
    """The options in a --config file: as on a command line, # starts a comment."""
    try:
        with open(path, encoding="utf-8") as f:
            words = shlex.split(f.read(), comments=True)
    except OSError as e:
        raise bad_option("config", "%s: cannot read it: %s" % (path, e.strerror or e))
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_option("config", "%s: %s" % (path, e))
    return words


class Options(CheckedOptions):
    synopsis = "[options]"
    longdesc = (
        "WebRTC signaling server, wire-compatible with WebRTC's example "
        "peerconnection_server (sign_in / wait / message / sign_out over HTTP "
        "with hanging GETs) and over a WebSocket at /ws, one channel behind "
        "both, serving a browser client at / and Prometheus metrics at /metrics."
    )

    optParameters = [
        ["config", None, None, "Read options from this file too, before the command line's "
         "(written as on the command line, any number per line, # comments). SIGHUP "
         "reads it again and applies what can change without a restart."],
        # No short options: each letter means something to twistd itself
        # (-p is --profile there); tests/test_options.py compares.
        ["port", None, None, "Listen on this TCP port, all interfaces "
         "(shorthand for --listen tcp:PORT). Default when no --listen: 8888.", port_number],
        ["peer-timeout", None, 30.0, "Drop a peer that has had no /wait parked for "
         "this many seconds, as if it had signed out.", positive_float],
        ["max-peers", None, 10000, "Most peers signed in at once; sign-in beyond it "
         "gets 503.", positive_int],
        ["max-message-bytes", None, 64 * 1024, "Largest message body; a larger one gets "
         "413 and is refused before it is buffered.", positive_int],
        ["max-queue", None, 1000, "Most items waiting in one peer's mailbox; a message "
         "beyond it gets 503 (the sender knows it was not queued), a peer whose "
         "mailbox overflows with notifications is dropped.", positive_int],
        ["max-queued-bytes", None, 256 * 1024 * 1024, "Most bytes of message bodies "
         "waiting in all mailboxes together; a message beyond it gets 503. With the "
         "other limits, this bounds the server's memory.", positive_int],
        ["request-timeout", None, 10.0, "Close a connection that takes longer than this "
         "to send one request's headers and body (slowloris).", positive_float],
        ["idle-timeout", None, 60.0, "Close a keep-alive connection idle this long.",
         positive_float],
        # Hardening (docs/server.rst, "Limits and errors").
        ["sign-in-rate", None, 10.0, "Sign-ins a second allowed from one client address "
         "(IPv6: one /64) after a burst of --sign-in-burst; beyond it, 429 with "
         "Retry-After. 0: no limit (load tests from one address).", non_negative_float],
        ["sign-in-burst", None, 100, "Sign-ins one address may make at once before "
         "--sign-in-rate applies.", positive_int],
        ["max-connections", None, None, "Most client connections open at once; beyond it "
         "new ones are closed at once. Default: 90% of the open-files limit, which "
         "pcsignal raises to its hard limit at start.", positive_int],
        ["redis", None, None, "Keep peers, mailboxes and liveness in this Redis, shared "
         "with every pcsignal on it: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], "
         "rediss://...[?ssl_ca_certs=PEM&ssl_certfile=PEM&ssl_keyfile=PEM] (TLS), "
         "unix:///PATH[?db=N&password=P] or a socket path. Default: "
         "in this process's memory.", parse_redis_url],
        ["redis-prefix", None, "pcsignal:", "Prefix of every Redis key and channel, so "
         "several deployments can share one Redis."],
        ["ping-interval", None, 10.0, "Ping every WebSocket this often; a socket that "
         "leaves a ping unanswered this long is dropped (its peer may resume within "
         "--peer-timeout).", positive_float],
        ["log-level", None, "info", "Least severe pcsignal events logged: debug (adds "
         "one line per message relayed; never bodies), info (sign-in, sign-out, "
         "timeouts, refusals), warn, error, critical.", log_level],
        ["state-file", None, None, "Keep peers and their queued messages across a "
         "restart: written here on a graceful stop, read (then removed) at start."],
        ["turn-secret-file", None, None, "File holding the TURN server's shared secret "
         "(coturn's static-auth-secret): /ice-servers hands signed-in peers TURN "
         "credentials made with it. Read at start and on SIGHUP; never logged."],
        ["turn-ttl", None, ice.DEFAULT_TTL, "Seconds the TURN credentials from "
         "/ice-servers stay valid.", positive_int],
    ]
    optFlags = [
        ["sequential-ids", None, "Number peers 1, 2, 3... as the reference server "
         "does. Default: unpredictable ids in 1..2^31-1, so nobody can read another "
         "peer's mailbox or sign it out by guessing its id."],
        ["access-log", None, "Log every request (off by default: request lines carry "
         "peer names and ids)."],
    ]

    def __init__(self):
        CheckedOptions.__init__(self)
        self["listen"] = []
        self["internal-listen"] = []
        self["turn-uri"] = []
        self["stun-uri"] = []
        self["turn-secret"] = None
        self.argv: list[str] = []
        self._probing = False

    def opt_listen(self, endpoint):
        """Listen on this Twisted server endpoint string; repeatable. Examples:
        tcp:8888:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem,
        unix:/run/pcsignal.sock, systemd:domain=INET6:index=0."""
        self["listen"].append(endpoint)

    def opt_internal_listen(self, endpoint):
        """Serve /metrics and /healthz on this endpoint (repeatable), and no
        longer on the --listen ones; e.g. tcp:9888:interface=127.0.0.1."""
        self["internal-listen"].append(endpoint)

    def opt_turn_uri(self, uri):
        """TURN server for /ice-servers, e.g. turn:HOST:3478?transport=udp (repeatable; needs --turn-secret-file)."""
        self["turn-uri"].append(_checked_uri("--turn-uri", ice.parse_turn_uri, uri))

    def opt_stun_uri(self, uri):
        """STUN server for /ice-servers, e.g. stun:turn.example.org:3478; repeatable."""
        self["stun-uri"].append(_checked_uri("--stun-uri", ice.parse_stun_uri, uri))

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        self.argv = list(options)
        path = self._config_path(self.argv)
        if path is not None:
            words = config_words(path)
            self._check_config(path, words)
            options = words + self.argv
        CheckedOptions.parseOptions(self, options)

    def _config_path(self, argv):
        try:
            opts, _ = getopt.getopt(argv, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e))
        paths = [value for name, value in opts if name == "--config"]
        if len(paths) > 1:
            raise bad_option("config", "is given twice")
        return paths[0] if paths else None

    def _check_config(self, path, words):
        """Parse the file's options alone, so an error there says where it is."""
        probe = type(self)()
        probe._probing = True
        try:
            _, rest = getopt.getopt(words, self.shortOpt, self.longOpt)
            if rest:
                raise usage.UsageError("%r is not an option" % (rest[0],))
            CheckedOptions.parseOptions(probe, words)
        except usage.UsageError as e:
            raise usage.UsageError("%s (in --config %s)" % (e, path))
        if probe["config"] is not None:
            raise bad_option("config", "%s: a --config file cannot name another" % (path,))

    def postOptions(self):
        if self._probing:
            return
        from twisted.internet import reactor

        self["endpoints"] = [check_endpoint(d, reactor, "listen") for d in self["listen"]]
        if self["port"] is not None:
            self["endpoints"].append(check_endpoint("tcp:%d" % (self["port"],), reactor, "port",
                                                    str(self["port"])))
        if not self["endpoints"]:
            self["endpoints"].append(check_endpoint("tcp:8888", reactor, "port",
                                                    "8888 (the default)"))
        self["internal-endpoints"] = [check_endpoint(d, reactor, "internal-listen")
                                      for d in self["internal-listen"]]
        if self["turn-uri"] and not self["turn-secret-file"]:
            raise usage.UsageError("--turn-uri needs --turn-secret-file (the secret the "
                                   "TURN server checks credentials with)")
        if self["turn-secret-file"]:
            if not self["turn-uri"]:
                raise usage.UsageError("--turn-secret-file needs at least one --turn-uri")
            try:
                self["turn-secret"] = TurnSecret(self["turn-secret-file"])
            except UnusableSecretFile as e:
                raise usage.UsageError("--turn-secret-file: %s" % (e,))
        if self["state-file"] is not None:
            if self.get("redis"):
                raise usage.UsageError(
                    "--state-file and --redis exclude each other: with --redis, peers and "
                    "messages already live in Redis and survive a restart")
            try:
                writable_file(self["state-file"])
            except BadValue as e:
                raise bad_option("state-file", "%s: %s" % (self["state-file"], e))

    def reparse(self) -> "Options":
        """The options parsed again from the same sources (for a reload)."""
        fresh = type(self)()
        fresh.parseOptions(self.argv)
        return fresh


def _checked_uri(option, parse, text):
    try:
        return parse(text).text
    except ice.BadUri as e:
        raise usage.UsageError("%s: %s" % (option, e))


# The collector's default is a young-generation pass for every 700 objects
# allocated and not yet freed: made for scripts.  A server keeps hundreds
# of requests parked, so those passes keep promoting live objects, and the
# full passes rescan everything startup imported.  In a Redis-backed storm
# the collector took a fifth of the instance's CPU time (docs/benchmarks.rst).
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """
    Take what startup built (modules, classes, the service itself) out of
    every future collection, and collect the young generation less often.
    """
    gc.collect()  # garbage is not frozen forever
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class SignalingService(service.Service):
    """
    Owns the channel.  On stop: with a state file, hangs up the connections
    of parked waits (no answer, so the native client simply asks again, and
    finds the next process), closes the WebSockets that serve peers (1001)
    and gives their clients SOCKETS_GRACE seconds to answer, settles the
    answers still in flight from what their sockets show, closes the
    channel, drains the connections and writes the state; without one, the
    same, and every parked wait gets ``503 Server shutting down.``
    """

    # Seconds for WebSocket clients to answer the server's close.
    SOCKETS_GRACE = 2.0

    def __init__(self, channel, site, sockets, state_file=None):
        self.channel = channel
        self.site = site
        self.sockets = sockets
        self.state_file = state_file

    def startService(self):
        service.Service.startService(self)
        # After twistd has daemonized, when everything startup builds exists.
        tune_collector()

    def stopService(self):
        service.Service.stopService(self)
        self.site.stopping = True
        if self.state_file is not None:
            self.site.hang_up()
        # Every ack before the channel closes (a Redis channel's retirement
        # carries the acks it holds; after it, what was read comes again):
        # the sockets' clean closes, then the hanging GETs' answers.
        d = self.sockets.close_all(self.SOCKETS_GRACE)
        d.addCallback(lambda _: self.site.deliveries.settle_all())
        d.addCallback(lambda _: self.channel.close())
        d.addCallback(lambda _: self.site.deliveries.settle_all())  # handed meanwhile
        d.addCallback(lambda _: self.site.drain())
        if self.state_file is not None:
            d.addCallback(lambda _: state.save(self.state_file, self.channel))
        return d


def _limits_part(channel):
    """Reload prepare functions for the channel's limits (a new frozen Limits each)."""
    fields = {"peer-timeout": "peer_timeout", "max-peers": "max_peers",
              "max-queue": "max_queue", "max-queued-bytes": "max_queued_bytes"}

    def apply_to(field):
        def apply(value):
            channel.limits = dataclasses.replace(channel.limits, **{field: value})
        return apply

    return [setting(key, apply_to(field)) for key, field in fields.items()]


def _tls_part(endpoints):
    """Reload prepare function: read every ssl: listener's certificate files again."""

    def prepare(current, new):
        changes = []
        for endpoint in endpoints:
            if endpoint.tls is None:
                continue
            try:
                apply, summary = endpoint.tls.prepare_reload()
            except BadValue as e:
                raise bad_option(endpoint.option.lstrip("-"), "%s: %s" % (endpoint.description, e))
            if apply is not None:
                changes.append(Change("certificate of %s replaced (%s)"
                                      % (endpoint.named, summary), apply))
        return changes

    return prepare


def _turn_secret_part(secret):
    """Reload prepare function: read the TURN secret file again (never logged)."""

    def prepare(current, new):
        if secret is None:
            return []
        try:
            value = read_secret(secret.path)
        except UnusableSecretFile as e:
            raise bad_option("turn-secret-file", str(e))
        if value == secret.value:
            return []
        return [Change("TURN secret replaced", lambda: setattr(secret, "value", value))]

    return prepare


def _set_idle_timeout(site, seconds):
    site.timeOut = seconds  # new connections; open ones keep theirs


def _sign_in_limit_part(site):
    """Reload prepare function for the sign-in rate limit, which reads its
    rate and burst at each sign-in.  Turning it on or off takes a restart."""

    def prepare(current, new):
        limit = site.sign_in_limit
        if limit is None or new["sign-in-rate"] == 0:
            return restart_only("sign-in-rate", "sign-in-burst")(current, new)
        return (setting("sign-in-rate", lambda v: setattr(limit, "rate", v))(current, new)
                + setting("sign-in-burst", lambda v: setattr(limit, "burst", v))(current, new))

    return prepare


def make_reloader(config, reactor, channel, site, endpoints, max_connections):
    reloader = Reloader(config, reactor)
    reloader.register(setting("log-level", logs.set_level))
    for prepare in _limits_part(channel):
        reloader.register(prepare)
    reloader.register(setting("max-message-bytes", lambda v: setattr(site, "max_message_bytes", v)))
    reloader.register(setting("request-timeout", lambda v: setattr(site, "request_timeout", v)))
    reloader.register(setting("idle-timeout", lambda v: _set_idle_timeout(site, v)))
    reloader.register(flag("access-log", lambda v: setattr(site, "access_log", v)))
    reloader.register(_sign_in_limit_part(site))
    reloader.register(setting("max-connections",
                              lambda v: setattr(site, "max_connections", v or max_connections)))
    reloader.register(_tls_part(endpoints))
    reloader.register(_turn_secret_part(config["turn-secret"]))
    reloader.register(restart_only("listen", "port", "internal-listen", "sequential-ids",
                                   "redis", "redis-prefix",
                                   "state-file", "turn-secret-file", "turn-uri", "stun-uri",
                                   "turn-ttl"))
    return reloader


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    logs.set_level(config["log-level"])
    limits = Limits(
        peer_timeout=config["peer-timeout"],
        max_peers=config["max-peers"],
        max_queue=config["max-queue"],
        max_queued_bytes=config["max-queued-bytes"],
    )
    if config["redis"] is not None:
        channel = RedisChannel(reactor, config["redis"], limits,
                               sequential=config["sequential-ids"],
                               prefix=config["redis-prefix"], reactor=reactor)
    else:
        channel = MemoryChannel(
            reactor, limits,
            new_id=sequential_ids() if config["sequential-ids"] else random_ids())
    channel.metrics = metrics = ServerMetrics(channel)
    open_files = raise_open_files_limit()
    max_connections = config["max-connections"] or default_max_connections(open_files)
    logs.logger("pcsignal.limits").info(
        "open files limit {open_files}: at most {max_connections} connections",
        open_files=open_files, max_connections=max_connections)
    internal = config["internal-endpoints"]
    site = SignalingSite(
        channel,
        max_message_bytes=config["max-message-bytes"],
        request_timeout=config["request-timeout"],
        idle_timeout=config["idle-timeout"],
        access_log=config["access-log"],
        metrics=metrics,
        reactor=reactor,
        sign_in_rate=config["sign-in-rate"],
        sign_in_burst=config["sign-in-burst"],
        max_connections=max_connections,
        internal_routes=not internal,
        ice_settings=ice.IceSettings(
            tuple(config["turn-uri"]), tuple(config["stun-uri"]), config["turn-ttl"]),
        turn_secret=config["turn-secret"],
    )
    sockets = ws.mount(site, channel, config["ping-interval"], reactor)
    top = service.MultiService()
    SignalingService(channel, site, sockets, config["state-file"]).setServiceParent(top)
    endpoints = config["endpoints"] + internal
    reloader = make_reloader(config, reactor, channel, site, endpoints, max_connections)
    reloader.register(setting("ping-interval", lambda v: setattr(sockets, "ping_interval", v)))
    reloader.setServiceParent(top)
    listeners = [ListenerService(e, site, reactor=reactor) for e in config["endpoints"]]
    if internal:
        internal_site = InternalSite(channel, metrics, reactor=reactor)
        listeners += [ListenerService(e, internal_site, "pcsignal internal listener (metrics, "
                                      "health)", reactor=reactor) for e in internal]
    for listener in listeners:
        # Now, not in startService: a port in use ends start-up in one line.
        listener.bind()
        listener.setServiceParent(top)
    if config["state-file"] is not None:
        state.load(config["state-file"], channel)
    return top
