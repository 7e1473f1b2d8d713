"""
Operating ``twistd pcsignal``: errors a person can read, JSON logs, the
internal listener, SIGHUP reloads, the state file.  Real twistd processes,
real sockets.
"""

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, TWISTD, LoggedProcess, start_pcsignal
from deploy_support import write_certificate_chain
from httpclients import native, parse_answer, scrape

INTERNAL = r"pcsignal internal listener \(metrics, health\) on 127\.0\.0\.1:(?P<port>\d+)"
ENV = dict(os.environ, PYTHONPATH=ROOT)


def twistd_exit(*args):
    """Run ``twistd -n pcsignal ARGS`` to its end: (exit status, output lines)."""
    out = subprocess.run([TWISTD, "-n", "--pidfile=", "--logfile=-", "pcsignal", *args],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    lines = [l for l in (out.stdout + out.stderr).splitlines() if l.strip()]
    return out.returncode, lines


def metric_values(url):
    return {name: value for name, _, value in scrape(url)}


# -- errors a person can read -----------------------------------------------------


@pytest.fixture
def files(tmp_path):
    """Certificate files, a directory where a file belongs, a garbage file, a config file."""
    write_certificate_chain(str(tmp_path))
    os.mkdir(tmp_path / "directory.pem")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    (tmp_path / "bad.conf").write_text("# limits\n--max-queue 10\n--max-peers 0\n")
    return str(tmp_path)


BAD_OPTIONS = [
    (["--port", "99999"], r"--port must be a port number \(0 to 65535\), not '99999'"),
    (["--listen", "tcp:abc"],
     r"--listen tcp:abc: port must be a port number \(0 to 65535\), not 'abc'"),
    (["--listen", "nosuch:"], r"--listen nosuch:: unknown endpoint type 'nosuch'"),
    (["--listen", "127.0.0.1:8891"], r"--listen 127\.0\.0\.1:8891: unknown endpoint type "
     r"'127\.0\.0\.1' .*did you mean tcp:8891:interface=127\.0\.0\.1\?"),
    (["--listen", "tcp:8888:interface=localhost"],
     r"--listen tcp:8888:interface=localhost: interface must be an IP address"),
    (["--internal-listen", "tcp:70000"], r"--internal-listen tcp:70000: port must be"),
    (["--peer-timeout", "0"], r"--peer-timeout must be positive, not '0'"),
    (["--max-peers", "ten"], r"--max-peers must be a positive whole number, not 'ten'"),
    (["--log-level", "loud"], r"--log-level must be one of debug, info, warn, error, critical"),
    (["--listen", "ssl:0:privateKey={d}/missing.pem:certKey={d}/cert.pem"],
     r"--listen ssl:\S+: privateKey=\S+/missing\.pem: cannot read it: No such file"),
    (["--listen", "ssl:0:privateKey={d}/privkey.pem:certKey={d}/directory.pem"],
     r"--listen ssl:\S+: certKey=\S+/directory\.pem: cannot read it: Is a directory"),
    (["--listen", "ssl:0:privateKey={d}/privkey.pem:certKey={d}/garbage.pem"],
     r"--listen ssl:\S+: certKey=\S+/garbage\.pem: no PEM certificate in it"),
    (["--listen", "ssl:0:privateKey={d}/privkey.pem:certKey={d}/chain.pem"],
     r"--listen ssl:\S+: privateKey=\S+/privkey\.pem is not the key of certKey=\S+/chain\.pem"),
    (["--state-file", "{d}/no/such/dir/state.json"],
     r"--state-file \S+/state\.json: directory \S+/no/such/dir does not exist"),
    (["--config", "{d}/bad.conf"],
     r"--max-peers must be positive, not '0' \(in --config \S+/bad\.conf\)"),
    (["--config", "{d}/missing.conf"], r"--config \S+/missing\.conf: cannot read it"),
]


@pytest.mark.parametrize("args, expected", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_a_usage_error_naming_it(files, args, expected):
    """twistd's usage error: its last line names the option and the problem."""
    status, lines = twistd_exit(*[a.replace("{d}", files) for a in args])
    assert status != 0
    output = "\n".join(lines)
    assert "Traceback" not in output and "Parameter type enforcement" not in output
    assert "invalid literal" not in output
    assert re.search(r"twistd -n: " + expected, lines[-1]), lines[-1]


def test_a_busy_port_ends_start_up_in_one_line(run_twistd):
    """A second pcsignal on a busy port: one line naming the option and the address."""
    first, url = start_pcsignal(run_twistd)
    port = url.rsplit(":", 1)[1]
    status, lines = twistd_exit("--listen", "tcp:%s:interface=127.0.0.1" % port)
    assert status == 1
    assert lines == ["--listen tcp:%s:interface=127.0.0.1: cannot listen on 127.0.0.1:%s: "
                     "address already in use (is another pcsignal running?)" % (port, port)]
    # --port binds all interfaces, which includes the first one's address.
    status, lines = twistd_exit("--port", port)
    assert (status, lines) == (1, ["--port %s: cannot listen on 0.0.0.0:%s: address already "
                                   "in use (is another pcsignal running?)" % (port, port)])
    assert native(url, "GET", "/healthz").status == 200  # the first one is unharmed


# -- JSON logs --------------------------------------------------------------------

# A real twistd whose reactor also runs a callback that raises (Twisted logs
# the failure with its traceback) and one that prints to stdout.
TWISTD_WITH_A_FAILURE = """
import sys
from twisted.internet import reactor
def broken():
    raise ZeroDivisionError("provoked for the test")
reactor.callWhenRunning(broken)
reactor.callWhenRunning(print, "printed to stdout")
from twisted.scripts.twistd import run
sys.argv = ["twistd"] + sys.argv[1:]
run()
"""


def test_json_logs_carry_readable_text_and_no_twisted_internals():
    p = LoggedProcess([sys.executable, "-c", TWISTD_WITH_A_FAILURE, "-n", "--pidfile=",
                       "--logger=pcsignal.logs.json", "pcsignal",
                       "--listen", "tcp:0:interface=127.0.0.1", "--max-queue", "1"])
    try:
        m = p.wait_for_log(r'"text": "pcsignal listening on 127\.0\.0\.1:(\d+)"')
        url = "http://127.0.0.1:%s" % (m.group(1),)
        a = native(url, "GET", "/sign_in?a").pragma
        b = native(url, "GET", "/sign_in?b").pragma
        assert native(url, "POST", "/message?peer_id=%d&to=%d" % (b, a), b"x").status == 503
        p.wait_for_log(r'"text": "refused POST /message: mailbox_full"')
    finally:
        assert p.stop() in (0, -signal.SIGTERM)
    records = [json.loads(line) for line in p.lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "namespace", "text"} <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert not any(k.startswith("log_") for k in record), record
    raw = "\n".join(p.lines)
    for internal in ("log_flattened", "__class_uuid__", "unpersistable", "log_format"):
        assert internal not in raw
    texts = {r["text"]: r for r in records}
    # twistd's own events, pcsignal's (with their fields), Twisted's legacy ones, stdout.
    assert any(t.startswith("twistd ") and t.endswith("starting up.") for t in texts)
    sign_in = next(r for r in records if r["text"].startswith("sign-in 'b' as %d" % b))
    assert (sign_in["level"], sign_in["peer_id"], sign_in["name"]) == ("info", b, "b")
    assert texts["Received SIGTERM, shutting down."]["namespace"] == "twisted.internet.base"
    assert texts["printed to stdout"]["namespace"] == "stdout"
    failure = next(r for r in records if "traceback" in r)
    assert failure["level"] == "critical" and failure["text"]
    assert "ZeroDivisionError: provoked for the test" in failure["traceback"]
    assert "Traceback (most recent call last)" in failure["traceback"]


# -- the internal listener ----------------------------------------------------------


def test_internal_listener_takes_metrics_and_health_off_the_public_port(run_twistd):
    p, url = start_pcsignal(run_twistd, "--internal-listen", "tcp:0:interface=127.0.0.1")
    internal = "http://127.0.0.1:%s" % (p.wait_for_log(INTERNAL).group("port"),)
    assert native(url, "GET", "/sign_in?alice").status == 200
    for path in ("/metrics", "/healthz"):
        assert native(url, "GET", path).status == 404
    health = native(internal, "GET", "/healthz")
    assert (health.status, health.body) == (200, b"ok 1 peers\n")
    assert metric_values(internal)["pcsignal_sign_ins_total"] == 1
    # The internal listener serves nothing else.
    assert native(internal, "GET", "/sign_in?bob").status == 404
    assert native(internal, "GET", "/").status == 404
    assert metric_values(internal)["pcsignal_peers"] == 1


def test_without_internal_listener_every_listener_serves_metrics(run_twistd):
    _, url = start_pcsignal(run_twistd)
    assert native(url, "GET", "/healthz").status == 200
    assert "pcsignal_peers" in metric_values(url)


def test_metrics_include_the_process_and_its_garbage_collector(run_twistd):
    _, url = start_pcsignal(run_twistd)
    values = metric_values(url)
    assert values["process_resident_memory_bytes"] > 10 * 2**20
    assert values["process_cpu_seconds_total"] > 0
    assert "python_gc_collections_total" in values


# -- SIGHUP ------------------------------------------------------------------------


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def reload(process, expected):
    """SIGHUP; returns the match of the reload's log line (make each one unique)."""
    process.proc.send_signal(signal.SIGHUP)
    return process.wait_for_log(expected)


def start_with_config(tmp_path, run_twistd, text):
    """pcsignal with an options file holding text: (process, url, the file's path)."""
    config = str(tmp_path / "pcsignal.conf")
    write(config, text)
    return start_pcsignal(run_twistd, "--config", config) + (config,)


def test_sighup_applies_what_changed_and_refuses_a_bad_value(tmp_path, run_twistd):
    p, url, config = start_with_config(tmp_path, run_twistd, "--max-message-bytes 10  # bytes\n")
    a = native(url, "GET", "/sign_in?a").pragma
    b = native(url, "GET", "/sign_in?b").pragma
    send = "/message?peer_id=%d&to=%d" % (a, b)
    assert native(url, "POST", send, b"x" * 15).status == 413
    source = re.escape(config)

    changed = ("--max-message-bytes 20\n--log-level debug\n--access-log\n"
               "--sign-in-rate 0.01 --sign-in-burst 2\n--max-connections 50\n")
    write(config, changed)
    reload(p, r"reloaded %s: --log-level info -> debug, --max-message-bytes 10 -> 20, "
              r"--access-log on, --sign-in-rate 10 -> 0\.01, --sign-in-burst 100 -> 2, "
              r"--max-connections \(default\) -> 50$" % source)
    assert native(url, "POST", send, b"y" * 15).status == 200
    p.wait_for_log(r"message %d -> %d: 15 bytes" % (a, b))  # debug is on
    p.wait_for_log(r'pcsignal\.access.*"POST /message\?peer_id=%d' % a)
    # The new sign-in limit counts from its burst of 2.
    assert [native(url, "GET", "/sign_in?c%d" % i).status for i in range(3)] == [200, 200, 429]

    # All or nothing: one bad value, and nothing changes.
    write(config, "--max-message-bytes 30\n--log-level info\n--request-timeout -1\n")
    reload(p, r"reload of %s refused, nothing changed: --request-timeout must be positive, "
              r"not '-1' \(in --config %s\)$" % (source, source))
    assert native(url, "POST", send, b"z" * 25).status == 413  # still 20
    write(config, changed + "--sequential-ids\n--stun-uri stun:stun.example.net:3478\n")
    reload(p, r"reloaded %s: nothing changed; --sequential-ids differs but needs a restart, "
              r"--stun-uri differs but needs a restart$" % source)
    os.unlink(config)
    reload(p, r"reload of %s refused, nothing changed: --config %s: cannot read it: No such "
              r"file or directory$" % (source, source))
    assert native(url, "POST", send, b"w" * 20).status == 200
    assert "Traceback" not in p.output()


def https_get(port, ca_pem, connection=None):
    """GET /healthz over HTTPS trusting ca_pem, on a new or the given keep-alive connection."""
    import http.client

    if connection is None:
        context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"ok 0 peers\n")
    return connection


def test_sighup_replaces_the_certificate_for_new_connections(tmp_path, run_twistd):
    from cryptography.hazmat.primitives.serialization import Encoding

    chains = {}
    for name in ("old", "new"):
        os.mkdir(tmp_path / name)
        chains[name] = write_certificate_chain(str(tmp_path / name))
    live = str(tmp_path / "live")
    shutil.copytree(str(tmp_path / "old"), live)
    endpoint = ("ssl:0:interface=127.0.0.1:privateKey={0}/privkey.pem:certKey={0}/cert.pem:"
                "extraCertChain={0}/chain.pem".format(live))
    p, url = start_pcsignal(run_twistd, "--listen", endpoint)
    port = int(url.rsplit(":", 1)[1])
    kept = https_get(port, chains["old"][0])

    reload(p, r"reloaded the command line: nothing changed$")  # same files
    for name in ("privkey.pem", "cert.pem", "chain.pem"):
        shutil.copy(str(tmp_path / "new" / name), live)
    reload(p, r"reloaded the command line: certificate of --listen ssl:\S+ replaced "
              r"\(localhost, valid until \d{4}-\d\d-\d\d \d\d:\d\d UTC\)$")

    fresh = https_get(port, chains["new"][0])
    assert fresh.sock.getpeercert(binary_form=True) == chains["new"][1].public_bytes(Encoding.DER)
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(port, chains["old"][0])
    # The connection made before the reload goes on with the old certificate.
    assert https_get(port, None, kept) is kept
    assert kept.sock.getpeercert(binary_form=True) == chains["old"][1].public_bytes(Encoding.DER)

    # An unreadable key: the reload is refused and the listener keeps serving.
    os.unlink(os.path.join(live, "privkey.pem"))
    reload(p, r"reload of the command line refused, nothing changed: --listen ssl:\S+: "
              r"privateKey=\S+: cannot read it: No such file or directory$")
    https_get(port, chains["new"][0]).close()
    kept.close()
    fresh.close()


def parked(url, count):
    """Block until the server has ``count`` parked waits (it says so in /metrics)."""
    deadline = time.monotonic() + 20
    while metric_values(url)["pcsignal_parked_waits"] != count:
        assert time.monotonic() < deadline, "never %d parked waits" % (count,)


def wait_in_thread(url, peer_id, answers):
    """A native /wait in a thread; its raw answer (b"" if closed unanswered) goes to answers."""
    from httpclients import native_raw

    def run():
        answers[peer_id] = native_raw(url, b"GET /wait?peer_id=%d HTTP/1.0\r\n\r\n" % peer_id, 30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sighup_changes_limits_while_waits_are_parked(tmp_path, run_twistd):
    p, url, config = start_with_config(tmp_path, run_twistd, "--max-peers 2 --peer-timeout 30\n")
    alice = native(url, "GET", "/sign_in?alice").pragma
    bob = native(url, "GET", "/sign_in?bob").pragma
    assert native(url, "GET", "/wait?peer_id=%d" % alice).status == 200  # bob joined
    assert native(url, "GET", "/sign_in?carol").status == 503
    answers = {}
    threads = [wait_in_thread(url, peer, answers) for peer in (alice, bob)]
    parked(url, 2)

    write(config, "--max-peers 3 --peer-timeout 60\n")
    reload(p, r"reloaded %s: --peer-timeout 30 -> 60, --max-peers 2 -> 3$" % re.escape(config))
    assert answers == {}  # nobody was dropped or answered by the reload
    assert metric_values(url)["pcsignal_parked_waits"] == 2
    carol = native(url, "GET", "/sign_in?carol")
    assert carol.status == 200  # the new limit is in force
    for t in threads:
        t.join(10)
    for peer in (alice, bob):
        got = parse_answer(answers[peer])
        assert (got.status, got.body) == (200, b"carol,%d,1\n" % carol.pragma)
    refused = native(url, "GET", "/sign_in?dave")
    assert (refused.status, refused.body) == (
        503, b"Server full: 3 peers signed in, try again later.")


# -- the state file -------------------------------------------------------------------

STATE_WRITTEN = r"state written to \S+: (\d+) peers, (\d+) queued items"
STATE_RESTORED = r"state restored from \S+: (\d+) peers, (\d+) queued items"


def test_state_file_keeps_peers_and_queued_messages_across_a_restart(tmp_path, run_twistd):
    path = str(tmp_path / "state.json")
    options = ("--state-file", path, "--sequential-ids")
    first, url = start_pcsignal(run_twistd, *options)
    alice, bob, carol = (native(url, "GET", "/sign_in?" + n).pragma
                         for n in ("alice", "bob", "carol"))
    for i in range(100):
        send = "/message?peer_id=%d&to=%d" % (bob, alice)
        assert native(url, "POST", send, b"message %03d" % i).status == 200
    answers = {}
    carol_waits = wait_in_thread(url, carol, answers)
    parked(url, 1)
    assert first.stop() in (0, -signal.SIGTERM)
    carol_waits.join(10)
    # carol's parked wait was closed without an answer: the native client
    # simply asks again (a 503 would make it give up).
    assert answers[carol] == b""
    # alice: bob and carol joined, 100 messages; bob: carol joined.
    assert first.wait_for_log(STATE_WRITTEN).groups() == ("3", "103")

    # A short peer timeout from now on, so that bob's leaving is quick to see.
    second, url = start_pcsignal(run_twistd, *options, "--peer-timeout", "3")
    assert second.wait_for_log(STATE_RESTORED).groups() == ("3", "103")
    assert not os.path.exists(path)
    got = [native(url, "GET", "/wait?peer_id=%d" % alice) for _ in range(102)]
    assert [(a.pragma, a.body) for a in got[:2]] == [
        (alice, b"bob,%d,1\n" % bob), (alice, b"carol,%d,1\n" % carol)]
    assert [(a.pragma, a.body) for a in got[2:]] == [
        (bob, b"message %03d" % i) for i in range(100)]
    assert (alice, bob, carol) == (1, 2, 3)
    assert native(url, "GET", "/sign_in?dave").pragma == 4  # the allocator went on
    # (dave joins and leaves before anyone is told: nobody hears of him.)
    assert native(url, "GET", "/sign_out?peer_id=4").status == 200
    # alice and carol come back and wait; bob does not, and leaves as usual.
    threads = [wait_in_thread(url, peer, answers) for peer in (alice, carol)]
    for t in threads:
        t.join(15)
    for peer in (alice, carol):
        answer = parse_answer(answers[peer])
        assert (answer.status, answer.body) == (200, b"bob,%d,0\n" % bob), answers[peer]
    second.wait_for_log(r"timed out after 3s without /wait: 'bob' \(2\)")
    assert "Traceback" not in first.output() + second.output()


def test_a_truncated_state_file_is_set_aside_and_the_server_starts_empty(tmp_path, run_twistd):
    path = str(tmp_path / "state.json")
    first, url = start_pcsignal(run_twistd, "--state-file", path)
    peer = native(url, "GET", "/sign_in?alice").pragma
    native(url, "POST", "/message?peer_id=%d&to=%d" % (peer, peer), b"to myself")
    assert first.stop() in (0, -signal.SIGTERM)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])

    second, url = start_pcsignal(run_twistd, "--state-file", path)
    line = second.wait_for_log(r"state file \S+ unusable, starting empty: not a complete JSON "
                               r"document \(.*\); moved to (\S+)$")
    assert os.path.exists(line.group(1)) and not os.path.exists(path)
    assert native(url, "GET", "/wait?peer_id=%d" % peer).status == 500  # forgotten
    assert native(url, "GET", "/sign_in?bob").status == 200
    assert "Traceback" not in second.output()
