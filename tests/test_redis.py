"""
Several ``twistd pcsignal --redis`` processes on one real redis-server, and
HAProxy in front of them: presence and ordered delivery across instances,
``kill -9`` of an instance, a restart of every instance, Redis stopped and
started under a parked wait, the pub/sub connection alone kept down, a
password-protected Redis, a unix socket, TLS
with client certificates (and a certificate from the wrong CA), the
Redis round trips a relayed message costs, and WebSocket peers on one
instance with hanging-GET peers on another (resume included).
"""

import base64
import collections
import re
import secrets
import signal
import socket
import threading
import time

import pytest

from conftest import LISTENING, REDIS_UP, LoggedProcess, TwistdProcess
from deploy_support import write_mutual_tls
from httpclients import address, metric_samples, native, read_answer
from pcsignal.channel.redis import load_scripts
from redis_support import Haproxy, RedisServer, free_port
from test_bench import run_bench
from wsclients import Socket

UNAVAILABLE = b"Service unavailable: the signaling store cannot be reached; try again shortly."


class Instance:
    """
    One ``twistd pcsignal --redis`` on fixed loopback ports (kept across
    restarts): ``port`` for clients, ``proxy_port`` for HAProxy (PROXY protocol).
    """

    def __init__(self, redis_url, prefix, *args, port=None, env=None):
        self.env = env
        self.port = port or free_port()
        self.proxy_port = free_port()
        self.argv = ["--listen", "tcp:%d:interface=127.0.0.1" % self.port,
                     "--listen", "haproxy:tcp:%d:interface=127.0.0.1" % self.proxy_port,
                     "--redis", redis_url, "--redis-prefix", prefix, *args]
        self.process = None
        self.processes = []

    @property
    def url(self):
        return "http://127.0.0.1:%d" % (self.port,)

    def start(self):
        self.process = TwistdProcess("pcsignal", self.argv, self.env)
        self.processes.append(self.process)
        self.process.wait_for_log(LISTENING)
        self.process.wait_for_log(REDIS_UP)
        return self

    def stop(self, sig=signal.SIGTERM):
        self.process.stop(sig)

    def kill(self):
        for p in self.processes:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()

    def output(self):
        return "\n".join(p.output() for p in self.processes)


@pytest.fixture
def instances():
    started = []

    def start(*args, **kwargs):
        instance = Instance(*args, **kwargs).start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.kill()
    for instance in started:
        assert "Traceback" not in instance.output(), instance.output()


def sign_in(url, name):
    answer = native(url, "GET", "/sign_in?" + name)
    assert answer.status == 200, answer.body
    return answer.pragma, answer.body


def wait(url, peer, timeout=10):
    return native(url, "GET", "/wait?peer_id=%d" % peer, timeout=timeout)


def send(url, sender, to, body):
    return native(url, "POST", "/message?peer_id=%d&to=%d" % (sender, to), body)


def until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never came true"
        time.sleep(0.01)


def parked(url, count, timeout=10):
    deadline = time.monotonic() + timeout
    while b"pcsignal_parked_waits %d.0" % count not in native(url, "GET", "/metrics").body:
        assert time.monotonic() < deadline, "parked waits never became %d" % count


def test_two_instances_behind_haproxy_survive_kill_and_restart(redis_server, instances,
                                                               tmp_path):
    prefix = "test:%s:" % secrets.token_hex(4)
    x = instances(redis_server.url, prefix)
    y = instances(redis_server.url, prefix)
    balancer = Haproxy(tmp_path, [x.proxy_port, y.proxy_port]).start()
    try:
        lb = balancer.url
        # Presence across instances: sign-ins alternate between x and y.
        alice, _ = sign_in(x.url, "alice")
        bob, listing = sign_in(y.url, "bob")
        assert listing == b"bob,%d,1\nalice,%d,1\n" % (bob, alice)
        assert wait(lb, alice).body == b"bob,%d,1\n" % bob
        # Ordered delivery across instances, every request through the balancer.
        for i in range(10):
            assert send(lb, alice, bob, b"m%d" % i).status == 200
        assert [wait(lb, bob).body for _ in range(10)] == [b"m%d" % i for i in range(10)]

        # Bob's wait is parked on x when x dies.
        parked_on_x = {}
        t = threading.Thread(target=lambda: parked_on_x.setdefault(
            "answer", _answer_or_error(x.url, bob)))
        t.start()
        parked(x.url, 1)
        # x has applied bob's ack of m9 in Redis (acks ride with the next
        # script or go alone within ack_delay: an instance killed while it
        # holds one delivers that item again, docs/deploying.rst).
        until(lambda: redis_server.cli("LLEN", "%sf:%d" % (prefix, bob)).strip() == "0")
        x.kill()
        t.join(10)
        assert "error" in parked_on_x["answer"]
        # 100 messages while x is dead: none lost, in order, bob keeps his id.
        for i in range(100):
            assert send(lb, alice, bob, b"k%d" % i).status == 200
        assert [wait(lb, bob).body for _ in range(100)] == [b"k%d" % i for i in range(100)]

        # Every instance restarted: peers within the peer timeout stay signed in.
        y.stop()
        x.start()
        y.start()
        assert send(lb, bob, alice, b"after restart").status == 200
        assert wait(lb, alice).body == b"after restart"
        assert send(lb, alice, bob, b"and back").status == 200
        assert wait(lb, bob).body == b"and back"
        carol, listing = sign_in(lb, "carol")
        assert set(listing.split(b"\n")[1:-1]) == {b"alice,%d,1" % alice, b"bob,%d,1" % bob}
    finally:
        balancer.stop()


def _answer_or_error(url, peer):
    try:
        return {"answer": wait(url, peer, timeout=30)}
    except (OSError, AssertionError) as e:  # reset, or closed with no answer
        return {"error": e}


def test_redis_restarted_under_a_parked_wait(instances, tmp_path):
    """
    Redis with persistence (appendonly) stopped and started again: 503 at
    once meanwhile, service again within 2 s of Redis accepting connections,
    nothing lost and nothing twice: the parked wait is served, the queued
    messages come once each, and one read just before the stop (its ack
    perhaps still held by the instance) does not come again.  With a
    password, so the restart also proves AUTH is sent again.
    """
    redis = RedisServer(tmp_path, password="s3cret").start()
    try:
        x = instances(redis.url, "pcsignal:")
        alice, _ = sign_in(x.url, "alice")
        bob, _ = sign_in(x.url, "bob")
        carol, _ = sign_in(x.url, "carol")
        assert [wait(x.url, alice).body for _ in range(2)] == [
            b"bob,%d,1\n" % bob, b"carol,%d,1\n" % carol]
        assert wait(x.url, bob).body == b"carol,%d,1\n" % carol
        for i in range(4):
            assert send(x.url, alice, carol, b"q%d" % i).status == 200
        assert wait(x.url, carol).body == b"q0"
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("item", wait(x.url, bob, 60)))
        t.start()
        parked(x.url, 1)

        redis.stop()
        x.process.wait_for_log(r"Redis link down")
        refused = native(x.url, "GET", "/sign_in?dave")
        assert (refused.status, refused.body) == (503, UNAVAILABLE)
        refused = send(x.url, alice, bob, b"lost?")
        assert (refused.status, refused.body) == (503, UNAVAILABLE)
        health = native(x.url, "GET", "/healthz")
        assert health.status == 503 and health.body.startswith(b"unavailable: Redis")

        mark = len(x.process.lines)
        redis.start()
        accepting = time.monotonic()
        x.process.wait_for_log(REDIS_UP, after=mark)
        recovered = time.monotonic() - accepting
        assert native(x.url, "GET", "/healthz").status == 200
        # The wait parked before the outage is still parked, and served.
        assert send(x.url, alice, bob, b"after the outage").status == 200
        t.join(10)
        assert got["item"].body == b"after the outage"
        # Queued messages survived Redis's restart, once each, in order.
        assert [wait(x.url, carol).body for _ in range(3)] == [b"q1", b"q2", b"q3"]
        parked_carol = {}
        t = threading.Thread(target=lambda: parked_carol.setdefault("item", wait(x.url, carol)))
        t.start()
        parked(x.url, 1)  # nothing more, no duplicate
        assert send(x.url, alice, carol, b"last").status == 200
        t.join(10)
        assert parked_carol["item"].body == b"last"
        output = x.process.output()
        assert len(re.findall(r"Redis link down", output)) == 1
        assert len(re.findall(REDIS_UP, output)) == 2
        assert recovered < 2, recovered
    finally:
        redis.stop()


def test_redis_not_there_at_start(tmp_path):
    """503 at once and one log line while Redis is not there; service once it is, no restart."""
    redis = RedisServer(tmp_path)
    x = TwistdProcess("pcsignal", ["--listen", "tcp:0:interface=127.0.0.1", "--redis", redis.url])
    try:
        url = "http://127.0.0.1:%s" % x.wait_for_log(LISTENING).group("port")
        x.wait_for_log(r"Redis at 127\.0\.0\.1:%d db 0 not reachable" % redis.port)
        refused = native(url, "GET", "/sign_in?alice")
        assert (refused.status, refused.body) == (503, UNAVAILABLE)
        assert native(url, "GET", "/healthz").status == 503
        redis.start()
        x.wait_for_log(REDIS_UP)
        assert native(url, "GET", "/healthz").status == 200
        assert native(url, "GET", "/sign_in?alice").status == 200
        assert len(re.findall(r"not reachable|Redis link down", x.output())) == 1, x.output()
    finally:
        assert x.stop() in (0, -15)
        redis.stop()
    assert "Traceback" not in x.output(), x.output()


def test_redis_that_answers_nothing_gets_503_not_a_hang(instances, tmp_path):
    """Redis stopped dead (SIGSTOP): a request gets 503 within the 2 s deadline, then service resumes."""
    redis = RedisServer(tmp_path).start()
    try:
        x = instances(redis.url, "pcsignal:")
        alice, _ = sign_in(x.url, "alice")
        redis.process.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        refused = native(x.url, "GET", "/sign_in?bob")
        assert (refused.status, refused.body) == (503, UNAVAILABLE)
        assert time.monotonic() - started < 4
        x.process.wait_for_log(r"Redis link down \(.*no answer within 2s")
        mark = len(x.process.lines)
        redis.process.proc.send_signal(signal.SIGCONT)
        x.process.wait_for_log(REDIS_UP, after=mark)
        assert native(x.url, "GET", "/sign_out?peer_id=%d" % alice).status == 200
    finally:
        redis.process.proc.send_signal(signal.SIGCONT)
        redis.stop()


def test_refused_auth_is_retried_until_accepted(instances, tmp_path):
    """txredisapi's own factory stops for good after a failed AUTH; pcsignal retries."""
    redis = RedisServer(tmp_path, password="first").start()
    try:
        x = instances(redis.url, "pcsignal:")
        alice, _ = sign_in(x.url, "alice")
        redis.cli("CONFIG", "SET", "requirepass", "second")
        redis.password = "second"
        redis.cli("CLIENT", "KILL", "TYPE", "normal")
        redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        x.process.wait_for_log(r"Redis link down")
        assert native(x.url, "GET", "/healthz").status == 503
        mark = len(x.process.lines)
        redis.cli("CONFIG", "SET", "requirepass", "first")
        redis.password = "first"
        x.process.wait_for_log(REDIS_UP, after=mark)
        assert native(x.url, "GET", "/sign_out?peer_id=%d" % alice).status == 200, \
            x.process.output()
    finally:
        redis.stop()


def test_pub_sub_link_down_alone_fails_healthz(instances, tmp_path):
    """
    Centrifugo's known failure, not repeated: the pub/sub connection cannot
    come back (its user may no longer SUBSCRIBE) while commands still work.
    Deliveries from other instances would be lost, so /healthz fails and
    requests answer 503 until it is back; a message sent across instances
    before and after arrives.
    """
    redis = RedisServer(tmp_path).start()
    try:
        redis.cli("ACL", "SETUSER", "pcsignal", "on", ">pw", "~*", "&*", "+@all")
        url = redis.url.replace("redis://", "redis://pcsignal:pw@")
        x = instances(url, "pcsignal:")
        y = instances(url, "pcsignal:")
        alice, _ = sign_in(x.url, "alice")
        bob, _ = sign_in(y.url, "bob")
        assert wait(x.url, alice).body == b"bob,%d,1\n" % bob
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("item", wait(x.url, alice, 60)))
        t.start()
        parked(x.url, 1)

        redis.cli("ACL", "SETUSER", "pcsignal", "-subscribe")
        redis.cli("CLIENT", "KILL", "USER", "pcsignal", "TYPE", "pubsub")
        x.process.wait_for_log(r"Redis link down \(pub/sub: ")
        y.process.wait_for_log(r"Redis link down \(pub/sub: ")
        # Only pub/sub is down: both command connections are still there.
        commands = redis.cli("CLIENT", "LIST", "TYPE", "normal")
        assert commands.count("user=pcsignal") == 2, commands
        for z in (x, y):
            health = native(z.url, "GET", "/healthz")
            assert health.status == 503 and health.body.startswith(b"unavailable: Redis"), \
                health.body
            refused = native(z.url, "GET", "/sign_in?carol")
            assert (refused.status, refused.body) == (503, UNAVAILABLE)
        # /healthz says why, as it stands after each new try.
        until(lambda: b"NOPERM" in native(x.url, "GET", "/healthz").body)

        mark = len(x.process.lines)
        redis.cli("ACL", "SETUSER", "pcsignal", "+subscribe")
        x.process.wait_for_log(REDIS_UP, after=mark)
        y.process.wait_for_log(REDIS_UP, after=mark)
        assert native(x.url, "GET", "/healthz").status == 200
        assert send(y.url, bob, alice, b"across, after").status == 200
        t.join(10)
        assert got["item"].body == b"across, after"
        assert len(re.findall(r"Redis link down", x.process.output())) == 1, x.process.output()
    finally:
        redis.stop()


def shared_peers(x, y, body):
    """alice on instance x and bob on y see each other, and bob's message reaches alice."""
    alice, _ = sign_in(x.url, "alice")
    bob, listing = sign_in(y.url, "bob")
    assert listing == b"bob,%d,1\nalice,%d,1\n" % (bob, alice)
    assert send(y.url, bob, alice, body).status == 200
    assert wait(x.url, alice).body == b"bob,%d,1\n" % bob
    assert wait(x.url, alice).body == body


def test_unix_socket(instances, tmp_path):
    redis = RedisServer(tmp_path, unix=True).start()
    try:
        x = instances(redis.socket, "pcsignal:")
        y = instances("unix://" + redis.socket + "?db=0", "pcsignal:")
        shared_peers(x, y, b"hi")
    finally:
        redis.stop()


def test_tls_with_a_client_certificate(instances, tmp_path):
    """rediss:// to a Redis that asks for client certificates: two instances share peers over it."""
    redis = RedisServer(tmp_path, tls=True).start()
    try:
        x = instances(redis.url, "pcsignal:")
        # The other as under systemd with LoadCredential=: relative names.
        y = instances(redis.url.replace(redis.tls + "/", ""), "pcsignal:",
                      env={"CREDENTIALS_DIRECTORY": redis.tls})
        x.process.wait_for_log(r"Redis link up: TLS 127\.0\.0\.1:%d db 0" % redis.port)
        shared_peers(x, y, b"over TLS")
        # Both links of both instances are TLS connections with our client certificate.
        clients = redis.cli("CLIENT", "LIST")
        assert len(re.findall(r"cmd=(?:evalsha|subscribe|ping)", clients)) >= 4, clients
    finally:
        redis.stop()


@pytest.mark.parametrize("mistake", ["CA that did not sign Redis's certificate",
                                     "no client certificate"])
def test_tls_refusals_are_retried_and_said_once(tmp_path, mistake):
    """Either side refuses the other's certificate: 503, one log line saying why, retries."""
    redis = RedisServer(tmp_path, tls=True).start()
    if mistake == "no client certificate":
        url, why = redis.url.split("&ssl_certfile")[0], r"certificate required"
    else:
        stranger = write_mutual_tls(tmp_path, "stranger")
        url, why = redis.url.replace(redis.tls + "/ca.pem", stranger + "/ca.pem"), \
            r"certificate verify failed"
    x = TwistdProcess("pcsignal", ["--listen", "tcp:0:interface=127.0.0.1", "--redis", url])
    try:
        web = "http://127.0.0.1:%s" % x.wait_for_log(LISTENING).group("port")
        x.wait_for_log(r"Redis at TLS 127\.0\.0\.1:%d db 0 not reachable \(.*%s"
                       % (redis.port, why))
        refused = native(web, "GET", "/sign_in?alice")
        assert (refused.status, refused.body) == (503, UNAVAILABLE)
        assert native(web, "GET", "/healthz").status == 503
        # Retried with back-off (Redis logs each refusal), and said once.
        until(lambda: len(re.findall(r"Error accepting a client connection",
                                     redis.process.output())) >= 4)
        assert len(re.findall(r"not reachable|Redis link down", x.output())) == 1, x.output()
    finally:
        assert x.stop() in (0, -15)
        redis.stop()
    assert "Traceback" not in x.output(), x.output()


def test_a_relayed_message_costs_one_script(redis_server, instances):
    """
    A ping-pong between peers on two instances, each answering a message as
    soon as it has read it: a relayed message costs the POST's script (which
    queues it, hands it to the receiver's instance, and carries the sender's
    ack of the message it answers); waits park on their instance without a
    round trip.  Acks only go alone when no script follows within ack_delay
    (here: the last one, and any the machine's load held up).  Counted by
    Redis itself (MONITOR), by script.
    """
    prefix = "test:%s:" % secrets.token_hex(4)
    x = instances(redis_server.url, prefix)
    y = instances(redis_server.url, prefix)
    alice, _ = sign_in(x.url, "alice")
    bob, _ = sign_in(y.url, "bob")
    assert wait(x.url, alice).body == b"bob,%d,1\n" % bob
    rounds = 25
    got = {alice: [], bob: []}

    def player(url, me, other, serve):
        for i in range(rounds):
            if serve:
                assert send(url, me, other, b"%d" % (2 * i)).status == 200
            got[me].append(wait(url, me).body)
            if not serve:
                assert send(url, me, other, b"%d" % (2 * i + 1)).status == 200
        got[me].append(wait(url, me).body)  # parked until the sign-out

    # Both registered (their first /wait is a script) before counting.
    bob_plays = threading.Thread(target=player, args=(y.url, bob, alice, False))
    bob_plays.start()
    parked(y.url, 1)
    monitor = LoggedProcess(["redis-cli", "-p", str(redis_server.port), "MONITOR"])
    monitor.wait_for_log("^OK$")
    alice_plays = threading.Thread(target=player, args=(x.url, alice, bob, True))
    alice_plays.start()
    until(lambda: len(got[alice]) == rounds and len(got[bob]) == rounds)
    parked(x.url, 1)
    parked(y.url, 1)
    # The last acks (alone, within ack_delay) applied: nothing in flight.
    until(lambda: [redis_server.cli("LLEN", "%sf:%d" % (prefix, peer)).strip()
                   for peer in (alice, bob)] == ["0", "0"])
    redis_server.cli("ECHO", "end of relay")
    monitor.wait_for_log("end of relay")
    monitor.stop()
    for peer, url in ((alice, x.url), (bob, y.url)):
        assert native(url, "GET", "/sign_out?peer_id=%d" % peer).status == 200
    alice_plays.join(10)
    bob_plays.join(10)
    assert got[bob] == [b"%d" % (2 * i) for i in range(rounds)] + [b"alice,%d,0\n" % alice]
    assert got[alice] == [b"%d" % (2 * i + 1) for i in range(rounds)] + [
        b"Peer most likely gone."]
    names = {sha: name for name, (sha, _) in load_scripts().items()}
    calls = collections.Counter()
    for line in monitor.lines:
        m = re.search(r'\[\d+ [^\]]*\] "(\w+)"(?: "(\w+)")?', line)
        if m and "lua]" not in line:
            command = m.group(1).lower()
            calls[names.get(m.group(2), "?") if command == "evalsha" else command] += 1
    calls.pop("tick", None)  # the reapers, once a second each
    calls.pop("ping", None)  # liveness probes of the idle pub/sub connections
    calls.pop("echo")
    calls.pop("llen")
    messages = 2 * rounds
    assert calls["post"] == messages, calls
    assert set(calls) <= {"post", "ack"}, calls  # no wait script, nothing else
    assert calls["ack"] < messages / 2, calls  # most acks rode with a POST


def scripts_run(url, script):
    return next((value for labels, value in metric_samples(url, "pcsignal_redis_scripts_total")
                 if labels["script"] == script), 0)


def test_bench_relay_across_two_instances(redis_server, instances):
    """
    pcsignal-bench relay --second-url: each pair has a peer on each
    instance, so every message crosses; --extra-pid adds their CPU time.
    """
    prefix = "test:%s:" % secrets.token_hex(4)
    x = instances(redis_server.url, prefix, "--sign-in-rate", "0")
    y = instances(redis_server.url, prefix, "--sign-in-rate", "0")
    code, result = run_bench(
        x.url, "relay", "--pairs", "2", "--messages", "100", "--second-url", y.url,
        "--server-pid", str(x.process.proc.pid), "--extra-pid", str(y.process.proc.pid),
        "--extra-pid", str(redis_server.process.proc.pid))
    assert code == 0 and result["errors"] == 0, result["error_samples"]
    assert result["messages"] == 100 and result["second_url"] == y.url
    assert result["delivery"]["lost"] == result["delivery"]["duplicated"] == 0
    assert result["extra_cpu_seconds"] >= 0 and result["server_cpu_seconds"] > 0
    # Half the messages were posted on each instance, each to the other's peer.
    assert scripts_run(x.url, "post") == scripts_run(y.url, "post") == 50


# -- the WebSocket transport across instances ---------------------------------------


def two_instances(redis_server, instances):
    prefix = "test:%s:" % secrets.token_hex(4)
    return instances(redis_server.url, prefix), instances(redis_server.url, prefix)


def test_websocket_peer_on_one_instance_and_hanging_get_peer_on_another(redis_server,
                                                                       instances):
    """
    Alice on a WebSocket to x, bob and carol on hanging GETs to y: they list
    each other, see each other's sign-in and sign-out, and exchange bodies
    byte-exact both ways (one that is not UTF-8 as data_base64).
    """
    x, y = two_instances(redis_server, instances)
    alice = Socket(x.url)
    alice_id = alice.sign_in("alice")["id"]
    bob, listing = sign_in(y.url, "bob")
    assert listing == b"bob,%d,1\nalice,%d,1\n" % (bob, alice_id)
    joined = alice.expect("peer")
    assert (joined["id"], joined["name"], joined["connected"]) == (bob, "bob", True)

    bodies = ["héllo ✓ 日本".encode(), b"\xff\xfe\x00 not UTF-8 \xc3", bytes(range(256))]
    for seq, body in enumerate(bodies):
        try:
            frame = {"type": "message", "to": bob, "data": body.decode("utf-8"), "seq": seq}
            content_type = b"text/plain"
        except UnicodeDecodeError:
            frame = {"type": "message", "to": bob, "seq": seq,
                     "data_base64": base64.b64encode(body).decode()}
            content_type = b"application/octet-stream"
        alice.send(frame)
        assert alice.expect("ack") == {"type": "ack", "seq": seq}
        answer = wait(y.url, bob)
        assert (answer.pragma, answer.body, answer.header(b"Content-Type")) == (
            alice_id, body, content_type)
        assert send(y.url, bob, alice_id, body).status == 200
        got = alice.expect("message")
        assert got["from"] == bob
        assert (got["data"].encode() if "data" in got
                else base64.b64decode(got["data_base64"])) == body
        assert ("data" in got) == ("data" in frame)

    carol, listing = sign_in(y.url, "carol")
    assert set(listing.split(b"\n")[1:-1]) == {b"alice,%d,1" % alice_id, b"bob,%d,1" % bob}
    assert alice.expect("peer")["name"] == "carol"
    assert native(y.url, "GET", "/sign_out?peer_id=%d" % bob).status == 200
    left = alice.expect("peer")
    assert (left["id"], left["connected"]) == (bob, False)
    alice.send({"type": "sign_out"})
    assert alice.expect_closed().code == 1000
    assert [wait(y.url, carol).body for _ in range(2)] == [
        b"bob,%d,0\n" % bob, b"alice,%d,0\n" % alice_id]


@pytest.mark.parametrize("killed", ["socket", "instance"])
def test_resume_on_another_instance_after_a_kill(redis_server, instances, killed):
    """
    Alice's socket to x dies (no pongs: nothing it read is proven), or x
    itself (``kill -9``), while bob on y keeps posting; she resumes on y
    with the last n she handled: what was written to the dead socket after
    that comes again, then everything queued meanwhile, in order, each once.
    """
    x, y = two_instances(redis_server, instances)
    alice = Socket(x.url, autoping=False)
    signed_in = alice.sign_in("alice")
    alice_id, token = signed_in["id"], signed_in["token"]
    bob, _ = sign_in(y.url, "bob")
    first = alice.expect("peer")
    for i in range(3):
        assert send(y.url, bob, alice_id, b"before %d" % i).status == 200
    before = [alice.expect("message") for _ in range(3)]
    assert [f["n"] for f in before] == [first["n"] + 1, first["n"] + 2, first["n"] + 3]
    if killed == "socket":
        alice.kill()
    else:
        x.kill()
    during = [b"during 0", b"\xff during 1", b"during 2"]
    for body in during:
        assert send(y.url, bob, alice_id, body).status == 200
    carol, listing = sign_in(y.url, "carol")
    assert b"alice,%d,1" % alice_id in listing  # a dropped socket is a missed wait

    again = Socket(y.url)
    again.send({"type": "resume", "id": alice_id, "token": token, "last": before[0]["n"]})
    assert again.expect("resumed") == {"type": "resumed", "id": alice_id}
    frames = [again.receive() for _ in range(6)]
    bodies = [f["data"].encode() if "data" in f else base64.b64decode(f["data_base64"])
              for f in frames[:5]]
    assert bodies == [b"before 1", b"before 2"] + during
    assert [f["from"] for f in frames[:5]] == [bob] * 5
    assert (frames[5]["type"], frames[5]["id"]) == ("peer", carol)
    assert [f["n"] for f in frames] == list(range(before[1]["n"], before[1]["n"] + 6))
    # Nothing more: no item twice.
    again.send({"type": "message", "to": alice_id, "data": "marker"})
    assert again.expect("message")["data"] == "marker"
    if killed == "socket":
        # She is served on y now: an HTTP message posted on x reaches her there.
        assert send(x.url, bob, alice_id, b"via x").status == 200
        assert again.expect("message")["data"] == "via x"
    again.close()


def test_a_resume_or_a_wait_on_another_instance_replaces_the_live_socket(redis_server,
                                                                        instances):
    """
    A socket serving a peer keeps a wait parked: a resume on y, then an HTTP
    /wait on x, each takes the peer from the socket before it (4409), as in
    one process.
    """
    x, y = two_instances(redis_server, instances)
    old = Socket(x.url)
    signed_in = old.sign_in("alice")
    alice_id = signed_in["id"]
    new = Socket(y.url, autoping=False)  # proves nothing it reads
    new.send({"type": "resume", "id": alice_id, "token": signed_in["token"], "last": 0})
    new.expect("resumed")
    closed = old.expect_closed()
    assert (closed.code, closed.reason) == (4409, "Replaced by a newer /wait for this peer.")
    bob, _ = sign_in(x.url, "bob")
    assert new.expect("peer")["id"] == bob

    result = {}
    waiting = threading.Thread(target=lambda: result.update(answer=wait(x.url, alice_id)))
    waiting.start()
    assert new.expect_closed().code == 4409
    waiting.join(10)
    assert send(y.url, bob, alice_id, b"over HTTP now").status == 200
    # Bob's presence, written to the socket but never proven read, comes again.
    assert result["answer"].body == b"bob,%d,1\n" % bob
    assert wait(x.url, alice_id).body == b"over HTTP now"


def test_stopped_instance_acks_what_its_sockets_read(redis_server, instances):
    """
    SIGTERM closes alice's socket cleanly (1001) before x leaves Redis, so
    the close proves she read what she was written: her next wait, over
    HTTP on y, gets what came after, not those items again.
    """
    x, y = two_instances(redis_server, instances)
    alice = Socket(x.url, autoping=False)  # only the close handshake proves anything
    alice_id = alice.sign_in("alice")["id"]
    bob, _ = sign_in(y.url, "bob")
    alice.expect("peer")
    for i in range(3):
        assert send(y.url, bob, alice_id, b"read %d" % i).status == 200
    assert [alice.expect("message")["data"] for _ in range(3)] == ["read 0", "read 1", "read 2"]
    x.stop()
    closed = alice.expect_closed()
    assert (closed.code, closed.reason) == (1001, "Server shutting down.")
    assert send(y.url, bob, alice_id, b"after").status == 200
    assert wait(y.url, alice_id).body == b"after"


def test_stopped_instance_acks_the_answers_its_hanging_gets_read(redis_server, instances):
    """
    Alice read her answer on a keep-alive connection and says nothing more
    (an answer counts as read after 1.5 s of quiet): SIGTERM settles it from
    the open socket, and that ack must reach Redis before x leaves it, or
    her next wait, on y, gets the same message again.
    """
    x, y = two_instances(redis_server, instances)
    alice, _ = sign_in(x.url, "alice")
    bob, _ = sign_in(y.url, "bob")
    assert wait(x.url, alice).body == b"bob,%d,1\n" % bob
    assert send(y.url, bob, alice, b"read once").status == 200
    sock = socket.create_connection(address(x.url))
    try:
        sock.sendall(b"GET /wait?peer_id=%d HTTP/1.1\r\nHost: x\r\n\r\n" % alice)
        answer, _ = read_answer(sock)
        assert answer.body == b"read once"
        x.stop()
        assert sock.recv(1) == b""  # x closed the connection: it has left Redis
    finally:
        sock.close()
    assert send(y.url, bob, alice, b"after").status == 200
    assert wait(y.url, alice).body == b"after"
