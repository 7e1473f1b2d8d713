"""
``twistd pcpeer``: options and service.

aiortc runs on asyncio, so pcpeer needs Twisted's asyncio reactor.  It
installs it itself while parsing options, before anything imports the
default reactor; if a different reactor was chosen (``--reactor=epoll``)
it stops with a message saying so.
"""

from __future__ import annotations

import getpass
import importlib
import ipaddress
import os
import socket
import sys
from urllib.parse import urlsplit

from twisted.application.service import MultiService, Service
from twisted.python import usage

from pcsignal.listeners import ListenerService, check_endpoint
from pcsignal.options import BadValue, Options as CheckedOptions, bad_option, log_level
from pcsignal.options import non_negative_float, positive_float, positive_int
from pcsignal.peer.recording import RECORDABLE_KINDS, record_folder_problem


#: What ``pip install 'pcsignal[peer]'`` adds to the server-only install.
PEER_MODULES = ("aiortc", "av", "numpy", "treq", "txaio", "pyee", "aiohttp")


def require_peer_extra() -> None:
    """Stop with one line, not a traceback, when the peer extra is missing."""
    missing = []
    for name in PEER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(
            "twistd pcpeer needs %s, which this installation lacks: "
            "pip install 'pcsignal[peer]'" % (", ".join(missing),))


def install_asyncio_reactor():
    """Install Twisted's asyncio reactor, or fail clearly if another one is installed."""
    from twisted.internet import asyncioreactor

    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor

        if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
            raise usage.UsageError(
                "pcpeer needs Twisted's asyncio reactor (aiortc runs on asyncio), but the %s.%s is "
                "already installed: run twistd without --reactor, or with --reactor=asyncio"
                % (type(reactor).__module__, type(reactor).__name__)
            )
        return reactor
    asyncioreactor.install()
    from twisted.internet import reactor

    return reactor


def default_name() -> str:
    """``user@host``, the native client's default."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    return "%s@%s" % (user, socket.gethostname())


def _video_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise BadValue("must look like 640x480, not %r" % (text,))
    if width % 2 or height % 2 or width < 64 or height < 48:
        raise BadValue("must be even and at least 64x48, not %r" % (text,))
    return width, height


_video_size.coerceDoc = "Even, at least 64x48."


def _server_url(text: str) -> str:
    try:
        url = urlsplit(text)
        url.port  # raises ValueError if out of range or not a number
    except ValueError as e:
        raise BadValue("must be an http:// or https:// URL, not %r (%s)" % (text, e))
    if url.scheme not in ("http", "https") or not url.hostname:
        hint = " (did you mean http://%s?)" % (text,) if "://" not in text else ""
        raise BadValue("must be an http:// or https:// URL, not %r%s" % (text, hint))
    return text


def _transport(text: str) -> str:
    if text not in ("auto", "ws", "http"):
        raise BadValue("must be auto, ws or http, not %r" % (text,))
    return text


class Options(CheckedOptions):
    synopsis = "[options]"
    longdesc = (
        "A headless WebRTC peer (aiortc): signs in to a pcsignal server (or any server speaking "
        "the peerconnection protocol), answers calls and makes them, streaming a test pattern, "
        "a file or a device, and optionally recording what it receives."
    )

    # No short option may mean something else to twistd itself (-n is
    # --nodaemon there, -s --source...): tests/test_options.py compares.
    optFlags = [
        ["no-answer", None, "Refuse incoming calls (answering is the default)."],
        ["loop", None, "Loop the --play file."],
        ["echo", None, "Send each caller its own media back instead of our source."],
        ["relay-only", None, "Gather, offer and use TURN relay candidates only (ICE transport "
         "policy relay): proves the relay works, and hides this host's addresses."],
    ]
    optParameters = [
        ["server", None, "http://127.0.0.1:8888", "Signaling server URL.", _server_url],
        ["transport", None, "auto", "Signaling over ws (pcsignal's WebSocket), http (hanging "
         "GETs), or auto: WebSocket, else hanging GETs (a server without /ws, like the "
         "reference).", _transport],
        ["name", None, None, "Name to sign in with [default: user@host]."],
        ["call", "c", None, "Call this peer (name or id) as soon as it is listed."],
        ["play", None, None, "Send this file, URL or device (read with PyAV) instead of the test pattern."],
        ["play-format", None, None, "PyAV/FFmpeg input format for --play, e.g. v4l2, alsa, pulse."],
        ["video-size", None, "640x480", "Test pattern size, WIDTHxHEIGHT.", _video_size],
        ["fps", None, 30.0, "Test pattern frame rate.", positive_float],
        ["record", None, None, "Record each call to PATH-NAME-ID-TIME.EXT (.mp4, .webm, .mkv or .wav); "
         "the folder is created if missing."],
        ["ice-username", None, None, "Username for the --ice-server TURN servers."],
        ["ice-credential", None, None, "Credential for the --ice-server TURN servers."],
        ["ice-timeout", None, 20.0, "Seconds for ICE to connect; then the call ends with one line saying "
         "which addresses were tried.", positive_float],
        ["max-calls", None, None, "Refuse calls beyond this many at once.", positive_int],
        ["stats-interval", None, 5.0, "Seconds between statistics log lines per call (0: none).",
         non_negative_float],
        ["retry-delay", None, 2.0, "Seconds before retrying an unreachable server, plus up to as much "
         "again at random.", positive_float],
        ["max-retry-delay", None, 10.0, "Cap of the doubling retry delay (before the random part).",
         positive_float],
        ["metrics", None, None, "Serve Prometheus metrics (calls, frames) at /metrics on this "
         "Twisted endpoint, e.g. tcp:9101:interface=127.0.0.1."],
        ["log-level", None, "info", "Least severe pcpeer events logged: debug (adds ICE and "
         "signaling details, candidates, data-channel text), info, warn, error, critical.", log_level],
    ]

    def __init__(self):
        CheckedOptions.__init__(self)
        self["ice-servers"] = []
        self["ice-addresses"] = []
        self["play-options"] = {}

    def opt_ice_server(self, url):
        """STUN/TURN server URL (repeatable). Default: what the server's /ice-servers offers, per call."""
        self["ice-servers"].append(url)

    def opt_ice_address(self, address):
        """Offer only this local address as a host candidate (repeatable; default: all but loopback)."""
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise bad_option("ice-address", "must be an IP address, not %r" % (address,))
        self["ice-addresses"].append(address)

    def opt_play_option(self, option):
        """KEY=VALUE option for the --play input, e.g. video_size=640x480 (repeatable)."""
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise bad_option("play-option", "must be KEY=VALUE, not %r" % (option,))
        self["play-options"][key] = value

    def postOptions(self):
        require_peer_extra()
        if self["name"] is None:
            self["name"] = default_name()
        if isinstance(self["video-size"], str):  # the default, as written in --help
            self["video-size"] = _video_size(self["video-size"])
        record = self["record"]
        if record is not None:
            ext = os.path.splitext(record)[1].lower()
            if ext not in RECORDABLE_KINDS:
                raise bad_option("record", "must end in one of %s" % (", ".join(sorted(RECORDABLE_KINDS)),))
            problem = record_folder_problem(record)
            if problem:
                raise bad_option("record", "%s: %s" % (record, problem))
        play = self["play"]
        if play is not None and self["play-format"] is None and "://" not in play and not os.path.isfile(play):
            raise bad_option("play", "%s: no such file" % (play,))
        if self["echo"] and play is not None:
            raise usage.UsageError("--echo and --play exclude each other")
        from pcsignal.peer.ice import ice_configuration

        try:
            ice_configuration(self["ice-servers"], self["ice-username"], self["ice-credential"], self["relay-only"])
        except ValueError as e:
            raise usage.UsageError("--ice-server: %s" % (e,))
        self["reactor"] = reactor = install_asyncio_reactor()
        if self["metrics"] is not None:
            # As the server checks --listen: type, port, interface, files.
            self["metrics-endpoint"] = check_endpoint(self["metrics"], reactor, "metrics")


class PeerService(Service):
    """Runs a Peer: signs in on start; hangs up and signs out on stop."""

    def __init__(self, peer) -> None:
        self.peer = peer

    def startService(self):
        Service.startService(self)
        d = self.peer.start()
        d.addErrback(lambda failure: None)  # only fails when stopped before signing in

    def stopService(self):
        Service.stopService(self)
        return self.peer.stop()


def makeService(options):
    import txaio

    from pcsignal.peer.call import CallConfig
    from pcsignal.peer.ice import ice_configuration, restrict_host_addresses
    from pcsignal.peer.media import SharedSource, pattern_source, player_source
    from pcsignal.peer.peer import Peer

    from pcsignal import logs

    txaio.use_twisted()
    logs.set_level(options["log-level"])
    restrict_host_addresses(options["ice-addresses"] or None)
    if options["play"] is not None:
        opener = player_source(
            options["play"], format=options["play-format"], options=options["play-options"], loop=options["loop"]
        )
    else:
        width, height = options["video-size"]
        opener = pattern_source(width, height, options["fps"])
    config = CallConfig(
        answer=not options["no-answer"],
        max_calls=options["max-calls"],
        ice=ice_configuration(
            options["ice-servers"], options["ice-username"], options["ice-credential"], options["relay-only"]
        ),
        record=options["record"],
        echo=options["echo"],
        stats_interval=options["stats-interval"],
        ice_timeout=options["ice-timeout"],
    )
    peer = Peer(
        options["server"],
        options["name"],
        source=SharedSource(opener),
        config=config,
        autocall=options["call"],
        reactor=options["reactor"],
        retry_delay=options["retry-delay"],
        max_retry_delay=options["max-retry-delay"],
        transport=options["transport"],
    )
    top = MultiService()
    PeerService(peer).setServiceParent(top)
    if options["metrics"] is not None:
        from pcsignal.peer.metrics import metrics_site

        listener = ListenerService(options["metrics-endpoint"], metrics_site(peer), "pcpeer metrics",
                                   reactor=options["reactor"])
        listener.bind()  # now: a port in use ends start-up in one line, as for the server
        listener.setServiceParent(top)
    return top
