"""
Listening services for both plugins: one per Twisted endpoint string, so
``tcp:``, ``ssl:``, ``unix:`` and ``systemd:`` all work with no extra code.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService

from pcsignal import logs

log = logs.logger("pcsignal.server")


def describe(address) -> str:
    """An address as an operator would write it: 127.0.0.1:8888, [::1]:8888, unix:PATH."""
    host = getattr(address, "host", None)
    if host is None:
        return "unix:%s" % (getattr(address, "name", address),)
    if ":" in host:
        return "[%s]:%d" % (host, address.port)
    return "%s:%d" % (host, address.port)


class ListenerService(StreamServerEndpointService):
    """A StreamServerEndpointService that logs where it listens."""

    def __init__(self, description, factory, what="pcsignal listening", reactor=None):
        from twisted.internet import endpoints

        if reactor is None:
            from twisted.internet import reactor
        super().__init__(endpoints.serverFromString(reactor, description), factory)
        self._raiseSynchronously = True  # a bad endpoint fails twistd at start
        self.description = description
        self.what = what

    def privilegedStartService(self):
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        tls = " (TLS)" if self.description.startswith("ssl:") else ""
        # The text is part of the format, so JSON logs keep it searchable.
        log.info(self.what + " on {address}{tls}", address=describe(port.getHost()), tls=tls)
        return port
