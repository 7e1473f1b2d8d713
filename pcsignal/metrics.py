"""
Prometheus metrics for pcsignal, through prometheus-client.

Each server gets its own CollectorRegistry (not the process-global one), so
several servers in one process, as in the tests, do not collide.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, GCCollector, Histogram, ProcessCollector)

from pcsignal import ice, protocol

# Request paths worth a label; everything else is "other" (bounded cardinality).
_ENDPOINTS = {
    protocol.SIGN_IN: "sign_in",
    protocol.SIGN_OUT: "sign_out",
    protocol.WAIT: "wait",
    protocol.MESSAGE: "message",
    ice.PATH: "ice_servers",
}


class ServerMetrics:
    def __init__(self, channel):
        self.registry = r = CollectorRegistry()
        # prometheus-client's own: process_* (CPU, memory, open files) and
        # python_gc_* (collections by generation).
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        Gauge("pcsignal_peers", "Peers signed in.", registry=r).set_function(
            lambda: channel.peer_count)
        Gauge("pcsignal_parked_waits", "Hanging GETs parked.", registry=r).set_function(
            lambda: channel.waiting_count)
        Gauge("pcsignal_queued_items", "Items held for all peers: queued, or handed out and not yet settled.", registry=r).set_function(
            lambda: channel.queued_count)
        Gauge("pcsignal_queued_message_bytes", "Bytes of message bodies in all mailboxes.",
              registry=r).set_function(lambda: channel.queued_bytes)
        self.sign_ins = Counter("pcsignal_sign_ins", "Peers signed in.", registry=r)
        self.sign_outs = Counter("pcsignal_sign_outs", "Peers signed out.", registry=r)
        self.timeouts = Counter("pcsignal_timeouts",
                                "Peers dropped for not re-issuing /wait in time.", registry=r)
        self.messages = Counter("pcsignal_messages", "Messages relayed between peers.", registry=r)
        self.message_bytes = Counter("pcsignal_message_bytes",
                                     "Bytes of message bodies relayed.", registry=r)
        self.requeued = Counter(
            "pcsignal_requeued",
            "Items handed to a client that did not read them, put back at the head of its "
            "mailbox.", registry=r)
        self.deliveries_settled = Counter(
            "pcsignal_deliveries_settled",
            "/wait answers settled as read (removed from the mailbox) or unread (requeued), "
            "by the evidence (see the protocol docs, Delivery).",
            ["outcome", "evidence"], registry=r)
        self.unsettled = Gauge(
            "pcsignal_unsettled_deliveries",
            "/wait answers written whose connection has not yet shown whether they were read.",
            registry=r)
        self.redis_scripts = Counter(
            "pcsignal_redis_scripts",
            "Lua scripts run on Redis (--redis), by script: each one round trip.",
            ["script"], registry=r)
        self.slow_peers_dropped = Counter(
            "pcsignal_slow_peers_dropped",
            "Peers dropped because a notification found their mailbox full.", registry=r)
        self.rejections = Counter("pcsignal_rejections", "Requests refused, by reason.",
                                  ["reason"], registry=r)
        self.request_seconds = Histogram(
            "pcsignal_request_seconds",
            "Time from request received to answer written (a /wait includes its parking).",
            ["endpoint"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 60),
        )
        self._observers = {
            path: self.request_seconds.labels(name) for path, name in _ENDPOINTS.items()
        }
        self._other = self.request_seconds.labels("other")

    def watch_site(self, site) -> None:
        """Gauges read from the web site: its connections and rate-limit memory."""
        Gauge("pcsignal_connections", "Client connections open.",
              registry=self.registry).set_function(lambda: len(site.connections))
        if site.sign_in_limit is not None:
            Gauge("pcsignal_sign_in_rate_addresses",
                  "Client addresses the sign-in rate limit remembers.",
                  registry=self.registry).set_function(lambda: len(site.sign_in_limit))

    def observe_request(self, path: bytes, seconds: float) -> None:
        self._observers.get(path, self._other).observe(seconds)
