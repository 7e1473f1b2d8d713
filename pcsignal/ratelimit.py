"""
Per-address token buckets, for the sign-in rate limit.

Each client address has a bucket of ``burst`` tokens that refills at
``rate`` tokens a second; a sign-in takes one, and finds the bucket empty
when the address signs in faster than that for long enough.  An address
with no bucket has a full one, so only addresses seen in the last
``burst / rate`` seconds need memory, and at most ``max_addresses`` of them
are kept: beyond that the least recently seen is forgotten (it starts
again with a full bucket), so no number of addresses grows memory.

IPv6 clients are keyed by their /64 prefix, the block one subscriber
usually gets: otherwise one host could sign in from 2^64 addresses.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime


def address_key(address) -> str:
    """The bucket key for a client address (a twisted IAddress)."""
    host = getattr(address, "host", None)
    if host is None:
        return "local"  # a Unix socket: everyone behind the proxy in front of it
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network((ip, 64), strict=False))
    return host


class TokenBuckets:
    """
    ``take(key)`` answers 0.0 when the key may go ahead (a token taken), or
    the seconds until it may.
    """

    def __init__(self, clock: IReactorTime, rate: float, burst: int, max_addresses: int = 10000):
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        # key -> [tokens, when counted]; least recently seen first.
        self._buckets: OrderedDict[str, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        now = self.clock.seconds()
        self._forget_full(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = float(self.burst)
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            self._buckets.move_to_end(key)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        if bucket is None:
            self._buckets[key] = [tokens, now]
            if len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
        else:
            bucket[0], bucket[1] = tokens, now
        return wait

    def _forget_full(self, now: float) -> None:
        """Drop buckets untouched long enough to be full again: losslessly."""
        refill = self.burst / self.rate
        buckets = self._buckets
        while buckets:
            key, (_, seen) = next(iter(buckets.items()))
            if now - seen < refill:
                return
            del buckets[key]


def retry_after(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
