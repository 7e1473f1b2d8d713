"""
pcsignal-bench's hostile scenarios (fuzz, churn, soak) at a tiny size
against a real ``twistd pcsignal``, run as the console script would be.
They check that the tool measures and reports correctly; the measured
numbers are in docs/benchmarks.rst.
"""

import random
import socket
import threading

from conftest import start_pcsignal
from pcsignal.bench import hostile
from test_bench import run_bench, signed_in_peers


def assert_clean_log(proc):
    assert proc.stop() in (0, -15)
    assert "Traceback" not in proc.output(), proc.output()[-3000:]


def test_fuzz_counts_answers_by_status(run_twistd):
    proc, url = start_pcsignal(run_twistd, "--request-timeout", "2")
    code, result = run_bench(url, "fuzz", "--requests", "400", "--seed", "3",
                             "--check-every", "100", "--server-pid", str(proc.proc.pid))
    assert code == 0, result
    assert result["requests"] == 400 and result["seed"] == 3
    assert sum(result["answers"].values()) == 400
    # Mutations hit every kind of refusal, and some requests still work.
    assert {"200", "400", "404", "405", "414"} <= set(result["answers"])
    assert "timeout" not in result["answers"]
    assert result["server_answering"] is True
    assert result["errors"] == 0
    assert result["server_rss_mib"]["after"] > 1
    assert_clean_log(proc)


def test_fuzz_is_reproducible():
    first = [hostile.mutated_request(random.Random("7-%d" % i)) for i in range(50)]
    again = [hostile.mutated_request(random.Random("7-%d" % i)) for i in range(50)]
    assert first == again and len(set(first)) > 40


def answer_once_then_fall_silent(listener):
    """Answer the benchmark's first request (is anyone there?), then accept nothing."""
    connection, _ = listener.accept()
    with connection:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_fuzz_exits_1_when_the_server_stops_answering():
    # After its first answer, a listening socket that never accepts:
    # connections hang, nothing answers.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(100)
        answering = threading.Thread(target=answer_once_then_fall_silent, args=(mute,))
        answering.start()
        url = "http://127.0.0.1:%d" % (mute.getsockname()[1],)
        code, result = run_bench(url, "fuzz", "--requests", "20", "--check-every", "10",
                                 "--timeout", "0.5", "--concurrency", "20")
        answering.join(5)
    assert code == 1
    assert result["server_answering"] is False
    assert result["requests"] == 10  # it stopped at the first failed check
    assert result["answers"] == {"timeout": 10}
    assert any("stopped answering" in e for e in result["error_samples"])


def test_churn_reports_relay_with_and_without_the_churner(run_twistd):
    proc, url = start_pcsignal(run_twistd, "--sign-in-rate", "1", "--sign-in-burst", "5")
    code, result = run_bench(url, "churn", "--pairs", "1", "--seconds", "1.5")
    assert code == 0, result
    assert result["errors"] == 0, result["error_samples"]
    assert result["undisturbed"]["messages_per_second"] > 0
    assert result["with_churner"]["messages_per_second"] > 0
    assert result["ratio"] > 0
    churner = result["churner"]
    # It signed in from its own address (127.0.0.2): its limit, not the relaying peers'.
    assert churner["answers"]["sign_in 429"] > churner["answers"]["sign_in 200"] >= 5
    assert churner["cycles"] == churner["answers"]["sign_in 200"]
    assert signed_in_peers(url) == []
    assert_clean_log(proc)


def test_soak_mixes_load_and_samples_memory(run_twistd):
    proc, url = start_pcsignal(run_twistd, "--request-timeout", "1")
    code, result = run_bench(url, "soak", "--duration", "4", "--pairs", "1", "--silent", "5",
                             "--slow", "3", "--churn-rate", "5", "--fuzz-rate", "10",
                             "--sample", "0.5", "--server-pid", str(proc.proc.pid))
    assert code == 0, result
    assert result["relay"]["messages"] > 0 and result["relay"]["errors"] == 0
    # Silent and slow clients are cut at the request timeout, again and again.
    for kind in ("silent_clients", "slow_clients"):
        assert result[kind]["closed_by_server"] >= result[kind]["clients"]
        assert 0.9 <= result[kind]["p50_s"] <= result[kind]["max_s"] < 4
    assert result["churn"]["sign_in 200"] > 5
    assert sum(result["fuzz"].values()) > 10
    rss = result["server_rss_mib"]
    assert len(rss["series"]) >= 5 and rss["first"] > 1 and rss["max"] >= rss["last"]
    assert result["server_answering"] is True
    # Its own peers signed out (those the fuzz signed in wait for the peer timeout).
    assert not [e for e in signed_in_peers(url) if e.name.startswith(("bench-", "soak-"))]
    assert_clean_log(proc)
