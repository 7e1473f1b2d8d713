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
    writable_file,
)
from pcsignal.channel.redis_link import RedisAddress, parse_redis_url


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


@pytest.mark.parametrize("url, address", [
    ("redis://localhost:6379/0", RedisAddress(host="localhost")),
    ("redis://localhost", RedisAddress(host="localhost")),
    ("rediss://user:p%40ss@redis.example.org:6380/2",
     RedisAddress(host="redis.example.org", port=6380, tls=True, db=2, username="user",
                  password="p@ss")),
    ("redis://:secret@[::1]:6379", RedisAddress(host="::1", password="secret")),
    ("unix:///run/redis/redis.sock?db=3&password=pw",
     RedisAddress(path="/run/redis/redis.sock", db=3, password="pw")),
    ("/run/redis/redis.sock", RedisAddress(path="/run/redis/redis.sock")),
])
def test_redis_urls_accepted(url, address):
    parsed = parse_redis_url(url)
    assert parsed == address
    assert (parsed.tls_options is not None) == parsed.tls


@pytest.mark.parametrize("url, problem", [
    ("localhost:6379", "must start with redis://, rediss:// or unix://"),
    ("http://localhost:6379", "must start with redis://, rediss:// or unix://"),
    ("redis://localhost:99999/0", "is not a Redis URL"),
    ("redis://localhost:port/0", "is not a Redis URL"),
    ("redis:///0", "needs a host"),
    ("redis://localhost/zero", "has a database number that is not a number"),
    ("unix://", "needs a socket path"),
    ("unix:///run/redis.sock?database=1", "has a parameter unix:// does not take: 'database'"),
    ("redis://localhost?ssl_ca_certs=/etc/ca.pem", "takes ssl_ca_certs only with rediss://"),
    ("rediss://localhost?ssl_ca=/etc/ca.pem", "has a parameter rediss:// does not take"),
    ("rediss://localhost?ssl_ca_certs=/nonexistent/ca.pem",
     "ssl_ca_certs: cannot read /nonexistent/ca.pem (No such file or directory)"),
    ("rediss://localhost?ssl_keyfile=/etc/key.pem", "ssl_keyfile needs ssl_certfile"),
])
def test_redis_urls_refused(url, problem):
    with pytest.raises(BadValue) as raised:
        parse_redis_url(url)
    assert str(raised.value).startswith(problem), str(raised.value)


def test_redis_tls_files_are_checked_at_start(tmp_path):
    """A CA file without a certificate, or a certificate with another's key, is refused."""
    from deploy_support import write_certificate_chain

    write_certificate_chain(str(tmp_path))
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(BadValue, match="holds no PEM certificate"):
        parse_redis_url("rediss://localhost?ssl_ca_certs=%s" % (not_pem,))
    other = tmp_path / "other"
    other.mkdir()
    write_certificate_chain(str(other))
    with pytest.raises(BadValue, match="not a certificate and its private key"):
        parse_redis_url("rediss://localhost?ssl_certfile=%s/cert.pem&ssl_keyfile=%s/privkey.pem"
                        % (tmp_path, other))
    good = parse_redis_url("rediss://localhost?ssl_ca_certs=%s/chain.pem&ssl_certfile=%s/cert.pem"
                           "&ssl_keyfile=%s/privkey.pem" % (tmp_path, tmp_path, tmp_path))
    assert good.tls and good.tls_options is not None


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
