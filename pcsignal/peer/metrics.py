"""
Prometheus metrics for pcpeer (``--metrics ENDPOINT``), through prometheus-client.

Frame counters are read at scrape time: the frames of ended calls, kept as
totals, plus those of the calls in progress, so the counters never go back.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.twisted import MetricsResource
from twisted.web import resource, server


class PeerCollector:
    def __init__(self, peer):
        self.peer = peer
        self.started = 0
        self.ended = 0
        self._frames_of_ended_calls = Tally()  # (direction, kind) -> frames
        peer.calls.on("call_started", self._call_started)
        peer.calls.on("call_ended", self._call_ended)

    def _call_started(self, call):
        self.started += 1

    def _call_ended(self, call, _reason):
        self.ended += 1
        for direction, kinds in call.counts().items():
            for kind, frames in kinds.items():
                self._frames_of_ended_calls[direction, kind] += frames

    def collect(self):
        calls = self.peer.calls.calls
        yield GaugeMetricFamily("pcpeer_signed_in", "1 while signed in to the server.",
                                value=1 if self.peer.signaling.peer_id is not None else 0)
        yield GaugeMetricFamily("pcpeer_calls", "Calls in progress.", value=len(calls))
        yield CounterMetricFamily("pcpeer_calls_started", "Calls started (made or answered).",
                                  value=self.started)
        yield CounterMetricFamily("pcpeer_calls_ended", "Calls ended.", value=self.ended)
        frames = Tally(self._frames_of_ended_calls)
        for call in list(calls.values()):
            for direction, kinds in call.counts().items():
                for kind, count in kinds.items():
                    frames[direction, kind] += count
        family = CounterMetricFamily(
            "pcpeer_frames", "Media frames sent (to the encoder) and received (decoded).",
            labels=["direction", "kind"])
        for direction in ("sent", "received"):
            for kind in ("audio", "video"):
                family.add_metric([direction, kind], frames[direction, kind])
        yield family


def metrics_site(peer) -> server.Site:
    """A Site serving /metrics for this peer."""
    registry = CollectorRegistry()
    registry.register(PeerCollector(peer))
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    site = server.Site(root)
    site.noisy = False
    return site
