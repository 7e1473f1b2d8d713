"""The option checks both plugins share (pcsignal.options), in process."""

import argparse

import pytest
from twisted.python import usage

from pcsignal.listeners import split_endpoint
from pcsignal.options import (
    BadValue,
    Options,
    port_number,
    positive_float,
    positive_int,
    redis_url,
    writable_file,
)


class Example(Options):
    optParameters = [
        ["count", "c", 1, "How many.", positive_int],
        ["delay", None, 1.0, "Seconds.", positive_float],
        ["name", None, None, "No check."],
    ]


class Derived(Example):
    optParameters = [["port", None, 80, "A port.", port_number]]


@pytest.mark.parametrize("args, message", [
    (["--count", "0"], "--count must be positive, not '0'"),
    (["-c", "ten"], "--count must be a positive whole number, not 'ten'"),
    (["--delay", "inf"], "--delay must be positive, not 'inf'"),
    (["--port", "65536"], "--port must be a port number (0 to 65535), not '65536'"),
])
def test_a_bad_value_names_its_option(args, message):
    options = Derived()
    with pytest.raises(usage.UsageError) as raised:
        options.parseOptions(args)
    assert str(raised.value) == message


def test_good_values_and_help_are_unchanged():
    options = Derived()
    options.parseOptions(["-c", "3", "--delay", "0.5", "--name", "x", "--port", "0"])
    assert (options["count"], options["delay"], options["name"], options["port"]) == (3, 0.5, "x", 0)
    assert "Must be positive." in str(Derived())  # the check's coerceDoc still shows in --help


def test_the_checks_work_with_argparse_too():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=positive_float)
    assert parser.parse_args(["--rate", "2"]).rate == 2.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--rate", "-1"])


@pytest.mark.parametrize("url", [
    "redis://localhost:6379/0", "redis://localhost", "rediss://user:pw@redis.example.org:6380/2",
    "redis://[::1]:6379", "unix:///run/redis/redis.sock",
])
def test_redis_urls_accepted(url):
    assert redis_url(url) == url


@pytest.mark.parametrize("url, problem", [
    ("localhost:6379", "must be a redis://, rediss:// or unix:// URL"),
    ("http://localhost:6379", "must be a redis://, rediss:// or unix:// URL"),
    ("redis://localhost:99999/0", "must be a Redis URL such as"),
    ("redis://localhost:port/0", "must be a Redis URL such as"),
    ("redis:///0", "must name a host"),
    ("redis://localhost/zero", "must end in a database number"),
    ("unix://", "must name a socket"),
])
def test_redis_urls_refused(url, problem):
    with pytest.raises(BadValue) as raised:
        redis_url(url)
    assert str(raised.value).startswith(problem)


def test_writable_file(tmp_path):
    assert writable_file(str(tmp_path / "state.json"))
    with pytest.raises(BadValue, match="is a directory"):
        writable_file(str(tmp_path))
    with pytest.raises(BadValue, match="does not exist"):
        writable_file(str(tmp_path / "no" / "state.json"))


@pytest.mark.parametrize("description, parsed", [
    ("tcp:8888:interface=127.0.0.1", ("tcp", ["8888"], {"interface": "127.0.0.1"})),
    (r"tcp6:8888:interface=\:\:1", ("tcp6", ["8888"], {"interface": "::1"})),
    ("ssl:443:privateKey=a=b.pem", ("ssl", ["443"], {"privateKey": "a=b.pem"})),
    ("SSL:443", ("ssl", ["443"], {})),
    ("systemd:domain=INET6:name=pcsignal", ("systemd", [], {"domain": "INET6", "name": "pcsignal"})),
])
def test_endpoint_strings_split_as_twisted_splits_them(description, parsed):
    assert split_endpoint(description) == parsed


@pytest.mark.parametrize("plugin", ["pcsignal", "pcpeer"])
def test_no_short_option_means_something_else_to_twistd(plugin):
    """``twistd pcsignal -p 8888`` must not be read as twistd's -p (--profile) by a
    reader, nor ``twistd pcpeer -n`` as --name: no plugin short option shadows twistd's."""
    from twisted.scripts.twistd import ServerOptions

    from pcsignal import server_tap
    from pcsignal.peer import tap

    def short_options(options):
        return {short for short, long in options.synonyms.items() if len(short) == 1 and short != long}

    twistd_shorts = short_options(ServerOptions())
    assert {"n", "s", "l", "p", "u", "g"} <= twistd_shorts  # the table is what we think
    options = {"pcsignal": server_tap.Options, "pcpeer": tap.Options}[plugin]()
    assert short_options(options) & twistd_shorts == set()
