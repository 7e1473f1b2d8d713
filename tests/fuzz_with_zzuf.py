"""
An independent fuzzer for a signaling server: zzuf (Debian's ``zzuf``)
flips bits in real requests -- every request of the reference transcript
and a browser's -- with a fixed seed per request; each mutated request goes
on its own connection (sent, our side shut, read until the server closes).
Not part of the suite (it needs zzuf); docs/benchmarks.rst has its results::

    python tests/fuzz_with_zzuf.py http://127.0.0.1:PORT --requests 30000 --log SERVER.log

Prints one JSON object: answers by status, whether /healthz and a sign-in
still work, and, with --log, the server log's tracebacks and longest line.
"""

import argparse
import json
import os
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from httpclients import shut_and_read

HERE = os.path.dirname(os.path.abspath(__file__))
BROWSER = [
    b"GET /sign_in?alice HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://example.org\r\n"
    b"Accept: */*\r\nConnection: keep-alive\r\n\r\n",
    b"POST /message?peer_id=1&to=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain;"
    b"charset=UTF-8\r\nContent-Length: 27\r\n\r\n{\"type\":\"offer\",\"sdp\":\"v=0\"}",
    b"OPTIONS /message?peer_id=1&to=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://example.org"
    b"\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\nAccept-Language: en\r\n\r\n",
    b"GET /app.js HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=0-99\r\n\r\n",
]


def transcript_requests():
    """The requests of the reference transcript (see tests/test_compat.py)."""
    text = open(os.path.join(HERE, "data", "peerconnection_server-transcript.txt"),
                encoding="utf-8").read()
    requests = []
    for block in text.split("-" * 60 + "\n"):
        lines = [line[4:] for line in block.split("\n") if line.startswith(">>> ")]
        if lines:
            requests.append("".join(lines).replace("\\r\\n", "\r\n").encode())
    return requests


def zzuf(data: bytes, seed: int, ratio: str) -> bytes:
    return subprocess.run(["zzuf", "-s", str(seed), "-r", ratio], input=data,
                          capture_output=True, check=True).stdout


def status(answer):
    if answer is None:
        return "timeout"
    if not answer:
        return "closed"
    parts = answer.split(b"\r\n", 1)[0].split(b" ")
    return parts[1].decode() if len(parts) > 1 and parts[1].isdigit() else "garbled"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ratio", default="0.002:0.05", help="zzuf's bit-flip ratio range")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--log", help="the server's log file, to count tracebacks and line lengths")
    args = parser.parse_args()
    port = urlsplit(args.url).port  # a loopback server
    templates = transcript_requests() + BROWSER
    counts = Counter()
    health = []

    def one(i):
        data = zzuf(templates[i % len(templates)], args.seed * 1_000_003 + i, args.ratio)
        return status(shut_and_read(port, data, 15.0))

    started = time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        for batch in range(0, args.requests, 1000):
            counts.update(pool.map(one, range(batch, min(args.requests, batch + 1000))))
            health.append(status(shut_and_read(port, b"GET /healthz HTTP/1.0\r\n\r\n", 15.0)))
    elapsed = time.monotonic() - started
    sign_in = shut_and_read(port, b"GET /sign_in?after-the-fuzz HTTP/1.0\r\n\r\n", 15.0)
    result = {
        "requests": args.requests,
        "seed": args.seed,
        "ratio": args.ratio,
        "seconds": round(elapsed, 1),
        "answers": dict(sorted(counts.items())),
        "healthz_checks": len(health),
        "healthz_failed": sum(1 for s in health if s != "200"),
        "sign_in_after": status(sign_in),
    }
    if args.log:
        lines = open(args.log, encoding="utf-8", errors="replace").read().split("\n")
        result["log_lines"] = len(lines)
        result["tracebacks"] = sum("Traceback" in line for line in lines)
        result["longest_log_line"] = max(map(len, lines))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
