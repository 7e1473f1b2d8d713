"""The sign-in rate limit's token buckets on a fake clock, and the descriptor limits."""

import resource

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock

from pcsignal.fds import default_max_connections, raise_open_files_limit
from pcsignal.ratelimit import TokenBuckets, address_key, retry_after


def test_burst_then_rate():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=2.0, burst=3)
    assert [buckets.take("a") for _ in range(3)] == [0.0] * 3
    assert buckets.take("a") == 0.5  # one token takes 1/rate seconds to come back
    clock.advance(0.25)
    assert buckets.take("a") == 0.25  # refusals take nothing
    clock.advance(0.25)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == 0.5
    assert buckets.take("b") == 0.0  # every address has its own bucket


def test_full_buckets_are_forgotten_losslessly():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=10.0, burst=5)
    for i in range(100):
        buckets.take("10.0.0.%d" % (i,))
    assert len(buckets) == 100
    clock.advance(0.5)  # burst / rate: every bucket is full again
    buckets.take("10.0.1.1")
    assert len(buckets) == 1


def test_memory_is_bounded_whatever_the_number_of_addresses():
    clock = Clock()
    buckets = TokenBuckets(clock, rate=1.0, burst=1, max_addresses=1000)
    for i in range(20000):
        assert buckets.take("a%d" % (i,)) == 0.0
        assert len(buckets) <= 1000
    # The most recent addresses are remembered: still limited.
    assert buckets.take("a19999") > 0


def test_addresses_are_keyed_by_host_and_ipv6_by_64():
    assert address_key(IPv4Address("TCP", "198.51.100.7", 5000)) == "198.51.100.7"
    one = address_key(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 5000))
    other = address_key(IPv6Address("TCP", "2001:db8:1:2:bbbb::9", 6000))
    assert one == other == "2001:db8:1:2::/64"
    assert address_key(IPv6Address("TCP", "2001:db8:1:3::1", 1)) != one
    assert address_key(IPv6Address("TCP", "::ffff:198.51.100.7", 1)) == "198.51.100.7"
    assert address_key(UNIXAddress(None)) == "local"


def test_retry_after_is_whole_seconds_at_least_one():
    assert [retry_after(s) for s in (0.01, 1.0, 1.2, 59.5)] == [1, 1, 2, 60]


def test_connection_cap_leaves_descriptors_spare():
    assert default_max_connections(1024) == 921
    assert default_max_connections(20000) == 18000
    assert default_max_connections(100) == 36
    assert default_max_connections(10) == 16


def test_open_files_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
