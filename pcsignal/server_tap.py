"""
``twistd pcsignal``: options and the service tree.

The service is a MultiService: one listener per endpoint string (anything
``endpoints.serverFromString`` takes: tcp:, ssl:, unix:, systemd:, ...) and
the signaling service that owns the channel and, on stop, answers every
parked wait and lets the answers reach their clients before exiting.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.python import usage

from pcsignal import ice, logs, __version__
from pcsignal.channel import Limits, random_ids, sequential_ids
from pcsignal.channel.memory import MemoryChannel
from pcsignal.fds import default_max_connections, raise_open_files_limit
from pcsignal.listeners import ListenerService
from pcsignal.metrics import ServerMetrics
from pcsignal.options import non_negative_float, positive_float, positive_int
from pcsignal.turn_secret import TurnSecret, UnusableSecretFile
from pcsignal.web import SignalingSite

log = logs.logger('pcsignal.server')


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "WebRTC signaling server, wire-compatible with WebRTC's example "
        "peerconnection_server (sign_in / wait / message / sign_out over HTTP "
        "with hanging GETs), serving a browser client at / and Prometheus "
        "metrics at /metrics."
    )

    optParameters = [
        ["port", "p", None, "Listen on this TCP port, all interfaces "
         "(shorthand for --listen tcp:PORT). Default when no --listen: 8888.", int],
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
        ["log-level", None, "info", "Least severe pcsignal events logged: debug (adds "
         "one line per message relayed; never bodies), info (sign-in, sign-out, "
         "timeouts, refusals), warn, error, critical."],
        ["turn-secret-file", None, None, "File holding the TURN server's shared secret "
         "(coturn's static-auth-secret): /ice-servers hands signed-in peers TURN "
         "credentials made with it. Read at start; never logged."],
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
        usage.Options.__init__(self)
        self["listen"] = []
        self["turn-uris"] = []
        self["stun-uris"] = []
        self["turn-secret"] = None

    def opt_listen(self, endpoint):
        """Listen on this Twisted server endpoint string; repeatable. Examples:
        tcp:8888:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem,
        unix:/run/pcsignal.sock, systemd:domain=INET6:index=0."""
        self["listen"].append(endpoint)

    def opt_turn_uri(self, uri):
        """TURN server for /ice-servers, e.g. turn:HOST:3478?transport=udp (repeatable; needs --turn-secret-file)."""
        self["turn-uris"].append(_checked_uri("--turn-uri", ice.parse_turn_uri, uri))

    def opt_stun_uri(self, uri):
        """STUN server for /ice-servers, e.g. stun:turn.example.org:3478; repeatable."""
        self["stun-uris"].append(_checked_uri("--stun-uri", ice.parse_stun_uri, uri))

    def postOptions(self):
        if self["log-level"] not in logs.LEVELS:
            raise usage.UsageError("--log-level must be one of " + ", ".join(logs.LEVELS))
        if self["turn-uris"] and not self["turn-secret-file"]:
            raise usage.UsageError("--turn-uri needs --turn-secret-file (the secret the "
                                   "TURN server checks credentials with)")
        if self["turn-secret-file"]:
            if not self["turn-uris"]:
                raise usage.UsageError("--turn-secret-file needs at least one --turn-uri")
            try:
                self["turn-secret"] = TurnSecret(self["turn-secret-file"])
            except UnusableSecretFile as e:
                raise usage.UsageError("--turn-secret-file: %s" % (e,))
        if self["port"] is not None:
            self["listen"].append("tcp:%d" % (self["port"],))
        if not self["listen"]:
            self["listen"].append("tcp:8888")

    def opt_version(self):
        """Print the version and exit."""
        print("pcsignal %s" % (__version__,))
        raise SystemExit(0)


def _checked_uri(option, parse, text):
    try:
        return parse(text).text
    except ice.BadUri as e:
        raise usage.UsageError("%s: %s" % (option, e))


class SignalingService(service.Service):
    """
    Owns the channel; on stop, answers parked waits, settles the answers
    still in flight from what their sockets show, and drains connections.
    """

    def __init__(self, channel, site):
        self.channel = channel
        self.site = site

    def stopService(self):
        service.Service.stopService(self)
        self.site.stopping = True
        d = defer.maybeDeferred(self.channel.close)
        d.addCallback(lambda _: self.site.deliveries.settle_all())
        d.addCallback(lambda _: self.site.drain())
        return d


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    logs.set_level(config["log-level"])
    channel = MemoryChannel(
        reactor,
        Limits(
            peer_timeout=config["peer-timeout"],
            max_peers=config["max-peers"],
            max_queue=config["max-queue"],
            max_queued_bytes=config["max-queued-bytes"],
        ),
        new_id=sequential_ids() if config["sequential-ids"] else random_ids(),
    )
    channel.metrics = metrics = ServerMetrics(channel)
    open_files = raise_open_files_limit()
    max_connections = config["max-connections"] or default_max_connections(open_files)
    logs.logger("pcsignal.limits").info(
        "open files limit {open_files}: at most {max_connections} connections",
        open_files=open_files, max_connections=max_connections)
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
        ice_settings=ice.IceSettings(
            tuple(config["turn-uris"]), tuple(config["stun-uris"]), config["turn-ttl"]),
        # TurnSecret.reload() re-reads the file; the next answer uses it.
        turn_secret=config["turn-secret"],
    )
    top = service.MultiService()
    SignalingService(channel, site).setServiceParent(top)
    for description in config["listen"]:
        ListenerService(description, site).setServiceParent(top)
    return top
