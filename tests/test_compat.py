"""
Byte-for-byte compatibility with the reference peerconnection_server.

Every exchange captured from the reference (tests/data/, a copy of the
shared reference transcript) is replayed against a real ``twistd pcsignal
--sequential-ids`` by a client that behaves like the native one, and the
answer must equal the reference's bytes, except for these deliberate,
documented differences (docs/server.rst, "Compatibility"):

- ``Server:`` names pcsignal;
- sign-in names are percent-decoded (newer reference builds do this too);
- an unknown peer on /wait gets the same ``500 Error`` / ``Peer most likely
  gone.`` as on /message, instead of an HTML "not yet implemented" page;
- an unknown path is a plain ``404 Not Found``;
- an HTTP/1.1 client is kept alive (no ``Connection: close``) unless it
  asks to close; HTTP/1.0 clients, like the native one, get the reference's
  ``Connection: close``;
- presence is coalesced: a peer that signed in and out before another peer
  was told reaches it as nothing (the transcript's last /wait gets
  ``peer_3,3,1`` from the reference, about a peer long gone; pcsignal
  answers it with the next real item instead).
"""

import os
import socket

import pytest

import pcsignal

from conftest import start_pcsignal
from httpclients import address, native, native_raw, parked_waits_become, parse_answer

pytestmark = pytest.mark.usefixtures("pcsignal_backend")

TRANSCRIPT = os.path.join(os.path.dirname(__file__), "data", "peerconnection_server-transcript.txt")


def exchanges():
    text = open(TRANSCRIPT, encoding="utf-8").read()
    blocks = text.split("-" * 60 + "\n")
    out = []
    for block in blocks:
        lines = [l for l in block.split("\n") if not l.startswith("#")]
        while lines and not lines[0].startswith(">>> "):
            lines.pop(0)
        if not lines:
            continue
        req = [l[4:] for l in lines if l.startswith(">>> ")]
        resp = lines[len(req):]
        request = "".join(req).replace("\\r\\n", "\r\n").encode()
        response = "\n".join(resp).replace("\\r\\n\n", "\r\n").encode()
        out.append((request, response))
    return out


def split(raw):
    head, _, rest = raw.partition(b"\r\n\r\n")
    status, *headers = head.split(b"\r\n")
    headers = [tuple(h.split(b": ", 1)) for h in headers]
    length = int(dict(headers)[b"Content-Length"])
    return status, headers, rest[:length]


def join(status, headers, body):
    out = [status]
    for name, value in headers:
        if name == b"Content-Length":
            value = b"%d" % len(body)
        out.append(name + b": " + value)
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def pcsignal_version_of(request, reference):
    """The reference's answer with pcsignal's documented differences applied."""
    status, headers, body = split(reference)
    server = b"pcsignal/" + pcsignal.__version__.encode()
    headers = [(n, server if n == b"Server" else v) for n, v in headers]
    body = body.replace(b"bob%20smith", b"bob smith")
    target = request.split(b" ")[1]

    def plain(new_status, text):
        hs = [(n, b"text/plain" if n == b"Content-Type" else v) for n, v in headers]
        return new_status, hs, text

    if target == b"/wait?peer_id=99":
        status, headers, body = plain(b"HTTP/1.1 500 Error", b"Peer most likely gone.")
    elif target == b"/nosuch":
        status, headers, body = plain(b"HTTP/1.1 404 Not Found", b"No such resource.")
    if b" HTTP/1.1\r\n" in request.split(b"\r\n")[0] + b"\r\n":
        headers = [(n, v) for n, v in headers if n != b"Connection"]
    return join(status, headers, body)


def test_transcript_has_every_kind_of_exchange():
    targets = [req.split(b" ")[1].split(b"?")[0] for req, _ in exchanges()]
    assert {b"/sign_in", b"/wait", b"/message", b"/sign_out", b"/nosuch"} <= set(targets)
    assert len(targets) == 15


def test_replay_reference_transcript(run_twistd):
    _, url = start_pcsignal(run_twistd, "--sequential-ids")
    *replayed, (last_request, last_reference) = exchanges()
    for request, reference in replayed:
        answer = native_raw(url, request)
        assert answer == pcsignal_version_of(request, reference), request
    # Bob was never told of peer_3, who came and went: nothing about it is
    # due, so his /wait parks, and gets the next real item in its place.
    assert last_request.startswith(b"GET /wait?peer_id=2 ") and b"peer_3,3,1" in last_reference
    with socket.create_connection(address(url), timeout=10) as bob:
        bob.sendall(last_request)
        parked_waits_become(url, 1)
        assert native(url, "POST", "/message?peer_id=1&to=2", b"after").status == 200
        answer = b""
        while chunk := bob.recv(65536):
            answer += chunk
    got = parse_answer(answer)
    assert (got.status, got.pragma, got.body) == (200, 1, b"after")


@pytest.mark.parametrize("header", [
    b"\r\nContent-Length: ", b"\r\nConnection: close", b"\r\nPragma: ",
])
def test_native_client_finds_its_headers_by_exact_bytes(run_twistd, header):
    _, url = start_pcsignal(run_twistd, "--sequential-ids")
    answer = native_raw(url, b"GET /sign_in?x HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert header in answer.partition(b"\r\n\r\n")[0] + b"\r\n"
