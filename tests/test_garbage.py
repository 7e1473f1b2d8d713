"""
Bad input never crashes or wedges pcsignal: a real server takes malformed,
truncated and hostile requests, each on its own connection -- a few
hundred from a hand-made generator, and whatever hypothesis makes of any
byte string -- then still answers, with no traceback in its log and no log
line over 2,000 characters.
"""

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import LISTENING, TwistdProcess, start_pcsignal
from httpclients import native, parse_answer, shut_and_read

LONGEST_LOG_LINE = 2000

TARGETS = [b"/sign_in?%", b"/sign_in?%zz%0", b"/wait?peer_id=", b"/wait?peer_id=-1",
           b"/wait?peer_id=99999999999999999999", b"/message?peer_id=1&to=", b"/message?to=x",
           b"/sign_out?peer_id=%00", b"/", b"//", b"/..%2f..%2fetc/passwd", b"/app.js/x",
           b"/metrics?x", b"/healthz", b"*", b"http://example.org/sign_in?x", b"/sign_in?" + b"a" * 5000]
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"BREW", b"get", b""]
HEADERS = [b"Content-Length: -1", b"Content-Length: abc", b"Content-Length: 99999999999999999999",
           b"Content-Length: 5", b"Content-Length: 1\r\nContent-Length: 2",
           b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
           b"Content-Type: multipart/form-data; boundary=", b"Connection: keep-alive, close",
           b"Expect: 100-continue", b"Host:", b"X: " + b"y" * 20000, b"NoColonHere", b" folded"]
BODIES = [b"", b"x", b"0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n", b"--\r\n\r\n", b"\x00\xff" * 100]


def garbage(rng):
    if rng.random() < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    line = b" ".join([rng.choice(METHODS), rng.choice(TARGETS),
                      rng.choice([b"HTTP/1.0", b"HTTP/1.1", b"HTTP/9.9", b"", b"HTTP/1.1 extra"])])
    headers = rng.sample(HEADERS, rng.randrange(0, 4))
    raw = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + rng.choice(BODIES)
    if rng.random() < 0.2:
        raw = raw[: rng.randrange(len(raw))]  # cut short
    return raw


def test_garbage_requests_do_not_hurt_the_server(run_twistd):
    proc, url = start_pcsignal(run_twistd, "--request-timeout", "0.5", "--max-message-bytes", "1024")
    port = int(url.rsplit(":", 1)[1])
    rng = random.Random(1234)
    watcher = native(url, "GET", "/sign_in?watcher").pragma
    for _ in range(300):
        # The server may answer, or hang up on garbage: both are fine; silence is not.
        assert shut_and_read(port, garbage(rng)) is not None
    health = native(url, "GET", "/healthz")
    assert health.status == 200
    # The watcher is still signed in and its mailbox still works (garbage
    # that happened to be a valid sign-in queued notifications before).
    other = native(url, "GET", "/sign_in?other").pragma
    for _ in range(300):
        item = native(url, "GET", "/wait?peer_id=%d" % watcher)
        assert item.status == 200
        if item.body == b"other,%d,1\n" % other:
            break
    else:
        raise AssertionError("the watcher never heard of other")
    assert proc.stop() in (0, -15)
    assert_clean_log(proc)


def assert_clean_log(proc):
    output = proc.output()
    assert "Traceback" not in output, output[-3000:]
    assert "Unhandled" not in output
    assert max(map(len, proc.lines)) <= LONGEST_LOG_LINE


# -- any bytes at all --------------------------------------------------------------------

VALID = [
    b"GET /sign_in?x HTTP/1.0\r\n\r\n",
    b"POST /message?peer_id=1&to=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    b"POST /message?peer_id=1&to=2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"GET /wait?peer_id=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /app.js HTTP/1.1\r\nRange: bytes=1-2\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n\r\n",
]
PIECES = [b"\r\n", b"\n", b" ", b":", b"%", b"%00", b"%ff", b"\xff", b"\x00", b"?", b"/",
          b"Content-Length: ", b"Transfer-Encoding: chunked", b"HTTP/1.1", b"GET", b"9" * 30]


def spliced(template, at, insert, cut):
    """A valid request with bytes inserted at one place, perhaps cut short."""
    at = at % (len(template) + 1)
    data = template[:at] + insert + template[at:]
    return data[:cut] if cut else data


ANY_BYTES = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.sampled_from(PIECES + VALID) | st.binary(max_size=20), max_size=30).map(b"".join),
    st.builds(spliced, st.sampled_from(VALID), st.integers(0, 200),
              st.binary(max_size=40) | st.sampled_from(PIECES), st.integers(0, 300)),
)


@pytest.fixture(scope="module")
def open_server():
    """One server for every example: no sign-in limit, sequential ids."""
    proc = TwistdProcess("pcsignal", ["--listen", "tcp:0:interface=127.0.0.1",
                                      "--sign-in-rate", "0", "--sequential-ids",
                                      "--request-timeout", "1", "--max-message-bytes", "1024"])
    port = int(proc.wait_for_log(LISTENING).group("port"))
    yield proc, port
    assert proc.stop() in (0, -15)
    assert_clean_log(proc)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=ANY_BYTES)
def test_any_bytes_get_an_answer_or_a_close(open_server, data):
    proc, port = open_server
    raw = shut_and_read(port, data)
    assert raw is not None, "neither answered nor closed"
    assert raw == b"" or re.match(rb"HTTP/1\.1 [1-5]\d\d ", raw), raw[:300]
    # A normal sign-in (and sign-out) still works after it.
    signed_in = parse_answer(shut_and_read(port, b"GET /sign_in?after HTTP/1.0\r\n\r\n"))
    assert signed_in.status == 200 and signed_in.body.startswith(b"after,")
    signed_out = shut_and_read(port, b"GET /sign_out?peer_id=%d HTTP/1.0\r\n\r\n" % signed_in.pragma)
    assert parse_answer(signed_out).status == 200
    assert_clean_log(proc)
