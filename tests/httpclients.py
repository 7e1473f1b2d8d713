"""
Two kinds of real clients for the HTTP tests, on blocking loopback sockets.

``native()`` behaves exactly like WebRTC's peerconnection_client: one TCP
connection per request, HTTP/1.0, no Host header, headers found by
case-sensitive byte search, and the socket closed when the answer says
``Connection: close``.  ``Browser`` is an HTTP/1.1 keep-alive client (the
stdlib's http.client) that sends Origin like a page on another site.
"""

import http.client
import re
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Answer:
    raw: bytes
    status: int
    headers: bytes
    body: bytes

    def header(self, name: bytes):
        """Value of a header, found the native client's way (exact bytes)."""
        key = b"\r\n" + name + b": "
        i = self.headers.find(key)
        if i < 0:
            return None
        end = self.headers.find(b"\r\n", i + len(key))
        return self.headers[i + len(key): end if end >= 0 else None]

    @property
    def pragma(self):
        value = self.header(b"Pragma")
        return None if value is None else int(value)


def parse_answer(raw: bytes) -> Answer:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, "no end of headers in %r" % (raw,)
    status = int(head.split(b" ", 2)[1])  # the number after the first space
    length = int(Answer(raw, status, head + b"\r\n", b"").header(b"Content-Length"))
    return Answer(raw[: len(head) + 4 + length], status, head + b"\r\n", rest[:length])


def address(url):
    parts = urlsplit(url)
    return parts.hostname, parts.port


def answer_end(data: bytes):
    """Where the first whole answer in data ends (by its Content-Length), or None."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    if sep:
        length = re.search(rb"\r\nContent-Length: (\d+)", head + b"\r\n")
        if length and len(data) >= len(head) + 4 + int(length.group(1)):
            return len(head) + 4 + int(length.group(1))
    return None


def native_raw(url, request: bytes, timeout=10) -> bytes:
    """
    Send raw request bytes on a new connection; read the whole answer (by
    its Content-Length, as the native client does) or to the end of the stream.
    """
    sock = socket.create_connection(address(url), timeout=timeout)
    try:
        sock.sendall(request)
        data = b""
        while answer_end(data) is None:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        sock.close()


def read_answer(sock, data=b"") -> tuple[Answer, bytes]:
    """Read one whole answer from sock; (answer, bytes after it)."""
    while answer_end(data) is None:
        chunk = sock.recv(65536)
        assert chunk, "connection closed after %d bytes of an answer" % (len(data),)
        data += chunk
    end = answer_end(data)
    return parse_answer(data[:end]), data[end:]


def read_to_end(sock) -> bytes:
    """Everything the server sends until it closes its side."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def reset(sock):
    """Close with SO_LINGER 0: the kernel sends RST, as for a killed client."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def shut_and_read(port, data: bytes, timeout=5.0):
    """
    Send any bytes on a new connection to a loopback port, shut our side,
    read until the server closes: all it sent (b"" for a close or reset
    without an answer), or None if it did neither within timeout.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            received = []
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received.append(chunk)
            except (ConnectionResetError, BrokenPipeError):
                pass
            return b"".join(received)
    except socket.timeout:
        return None


def native(url, method, target, body=None, content_type=b"text/plain", timeout=10) -> Answer:
    request = b"%s %s HTTP/1.0\r\n" % (method.encode(), target.encode())
    if body is not None:
        request += b"Content-Length: %d\r\nContent-Type: %s\r\n" % (len(body), content_type)
    request += b"\r\n" + (body or b"")
    return parse_answer(native_raw(url, request, timeout))


def scrape(url):
    """Every sample of the server's /metrics: [(name, labels, value)]."""
    text = native(url, "GET", "/metrics").body.decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples]


def metric_samples(url, name):
    """[(labels, value)] of the samples called name in the server's /metrics."""
    return [(labels, value) for sample, labels, value in scrape(url) if sample == name]


def parked_waits_become(url, count, timeout=5):
    """Poll /metrics until the server has this many parked waits (no event to wait on)."""
    deadline = time.monotonic() + timeout
    while b"pcsignal_parked_waits %d.0" % count not in native(url, "GET", "/metrics").body:
        assert time.monotonic() < deadline, "parked waits never became %d" % count


class Peer:
    """A signed-in peer driven by the native-style client."""

    def __init__(self, url, name="peer"):
        self.url = url
        answer = native(url, "GET", "/sign_in?" + name)
        assert answer.status == 200
        self.id = answer.pragma
        self.list = answer.body

    def wait(self, timeout=10):
        return native(self.url, "GET", "/wait?peer_id=%d" % self.id, timeout=timeout)

    def send(self, to, body, content_type=b"text/plain"):
        return native(self.url, "POST", "/message?peer_id=%d&to=%d" % (self.id, to), body,
                      content_type)

    def sign_out(self):
        return native(self.url, "GET", "/sign_out?peer_id=%d" % self.id)

    def drain_until(self, body):
        """Read this peer's mailbox until an item with this body arrives."""
        for _ in range(100):
            item = self.wait()
            assert item.status == 200
            if item.body == body:
                return item
        raise AssertionError("never received %r" % body)


class Browser:
    """An HTTP/1.1 keep-alive client with an Origin header."""

    def __init__(self, url, origin="http://example.org", timeout=10):
        host, port = address(url)
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.origin = origin

    def request(self, method, target, body=None, headers=None):
        h = {"Origin": self.origin}
        if body is not None:
            h["Content-Type"] = "text/plain;charset=UTF-8"
        h.update(headers or {})
        self.conn.request(method, target, body=body, headers=h)
        response = self.conn.getresponse()
        return response, response.read()

    @property
    def sock(self):
        return self.conn.sock

    def close(self):
        self.conn.close()
