"""
Bad input never crashes or wedges pcsignal: a real server takes a few
hundred malformed, truncated and hostile requests, each on its own
connection, then still answers, with no traceback in its log.
"""

import random
import socket

from conftest import start_pcsignal
from httpclients import native

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
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(5)
        try:
            sock.sendall(garbage(rng))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server may hang up on garbage: fine
        finally:
            sock.close()
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
    assert "Traceback" not in proc.output(), proc.output()[-3000:]
    assert "Unhandled" not in proc.output()
