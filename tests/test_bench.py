"""
pcsignal-bench: each scenario at a tiny size against a real ``twistd
pcsignal``, run as its console script would be, plus its pure helpers.

These check that the tool measures and reports correctly; they are not
timed benchmarks (see docs/benchmarks.rst for the measured numbers).
"""

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from conftest import ROOT, start_pcsignal
from httpclients import metric_samples
from pcsignal.bench import signaling as bench
from pcsignal.protocol import parse_entries


def run_bench(url, *args, timeout=60):
    """Run ``python -m pcsignal.bench.signaling URL ARGS --json``; (exit code, result)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "pcsignal.bench.signaling", url, *args, "--json"],
        capture_output=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert done.stdout, "no output; stderr:\n%s" % (done.stderr.decode(),)
    return done.returncode, json.loads(done.stdout)


def signed_in_peers(url):
    """Everyone else the server lists for a fresh peer (which then leaves)."""
    with urllib.request.urlopen(url + "/sign_in?bench-test-probe", timeout=10) as answer:
        own_id = int(answer.headers["Pragma"])
        entries = parse_entries(answer.read())
    with urllib.request.urlopen(url + "/sign_out?peer_id=%d" % (own_id,), timeout=10):
        pass
    return [e for e in entries if e.peer_id != own_id]


def test_relay_counts_every_message_and_its_latency(pcsignal_server):
    proc, url = pcsignal_server
    code, result = run_bench(
        url, "relay", "--pairs", "3", "--messages", "301", "--server-pid", str(proc.proc.pid)
    )
    assert code == 0, result
    assert result["errors"] == 0, result["error_samples"]
    assert result["messages"] == 301
    latency = result["latency"]
    assert latency["count"] == 301
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"] < 5000
    assert result["messages_per_second"] > 0
    assert result["server_rss_mib"] > 1
    assert result["server_cpu_seconds"] > 0
    assert result["client"]["event_loop"] in ("asyncio", "uvloop")
    assert signed_in_peers(url) == []


def test_relay_with_abandoned_waits_loses_nothing(pcsignal_server):
    """A third of the waits reset 5 ms after sending: every message still
    arrives once, in order, and the server put back what it had answered
    to the abandoned ones."""
    proc, url = pcsignal_server
    code, result = run_bench(url, "relay", "--pairs", "2", "--messages", "200",
                             "--abandon", "0.3", "--seed", "3", "--timeout", "5")
    assert code == 0, result
    delivery = result["delivery"]
    assert (delivery["sent"], delivery["received"], delivery["lost"], delivery["duplicated"],
            delivery["out_of_order"]) == (200, 200, 0, 0, 0)
    assert delivery["abandoned_waits"] > 20
    assert sorted(delivery["per_receiver"][name]["received"]
                  for name in delivery["per_receiver"]) == [50, 50, 50, 50]
    assert result["abandon"] == {"fraction": 0.3, "after_seconds": 0.005}
    metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    requeued = re.search(r"^pcsignal_requeued_total (\S+)$", metrics, re.M)
    assert float(requeued.group(1)) > 0
    assert signed_in_peers(url) == []


def test_delivery_check_counts_lost_duplicated_and_out_of_order():
    assert bench.delivery_check([0, 2, 4, 6], [0, 4, 2, 4, 6]) == {
        "sent": 4, "received": 4, "lost": 0, "duplicated": 1, "out_of_order": 1,
    }
    assert bench.delivery_check([1, 3, 5], [1, 5]) == {
        "sent": 3, "received": 2, "lost": 1, "duplicated": 0, "out_of_order": 0,
    }


def test_relay_over_websocket_reports_cpu_per_message(pcsignal_server):
    proc, url = pcsignal_server
    code, result = run_bench(
        url, "relay", "--transport", "ws", "--pairs", "2", "--messages", "200",
        "--server-pid", str(proc.proc.pid))
    assert code == 0, result
    assert (result["transport"], result["messages"], result["errors"]) == ("ws", 200, 0)
    assert result["latency"]["count"] == 200
    assert result["server_cpu_us_per_message"] == pytest.approx(
        result["server_cpu_seconds"] / 200 * 1e6, abs=0.1)
    assert signed_in_peers(url) == []


def test_relay_compares_targets_in_one_run(pcsignal_server):
    proc, url = pcsignal_server
    code, result = run_bench(
        url, "relay", "--transport", "ws", "--transport", "http", "--pairs", "1",
        "--messages", "50", "--rounds", "2", "--server-pid", str(proc.proc.pid))
    assert code == 0, result
    assert result["scenario"] == "relay-compare" and result["rounds"] == 2
    assert sorted(result["summary"]) == ["pcsignal-http", "pcsignal-ws"]
    for label, runs in result["runs"].items():
        assert [run["messages"] for run in runs] == [50, 50], label
        assert [run["transport"] for run in runs] == [label.split("-")[1]] * 2
        row = result["summary"][label]
        assert row["server_cpu_us_per_message"] in sorted(
            run["server_cpu_us_per_message"] for run in runs)
    summary = bench.summary(result)
    assert "pcsignal-ws" in summary and "server CPU us/msg" in summary
    assert signed_in_peers(url) == []


def test_relay_against_a_baseline_reports_the_ratio_round_by_round(pcsignal_server, run_twistd):
    proc, url = pcsignal_server
    baseline_proc, baseline_url = start_pcsignal(run_twistd)
    code, result = run_bench(
        url, "relay", "--pairs", "1", "--messages", "40", "--rounds", "3",
        "--server-pid", str(proc.proc.pid), "--extra-pid", str(os.getpid()),  # any process
        "--baseline", baseline_url, "--baseline-pid", str(baseline_proc.proc.pid))
    assert code == 0, result
    assert (result["scenario"], result["baseline"]) == ("relay-compare", baseline_url)
    assert sorted(result["summary"]) == sorted([url, baseline_url])
    runs, base_runs = result["runs"][url], result["runs"][baseline_url]
    assert [run["url"] for run in runs + base_runs] == [url] * 3 + [baseline_url] * 3
    row = result["summary"][url]
    assert row["ratios_to_baseline"] == [
        round(run["messages_per_second"] / base["messages_per_second"], 3)
        for run, base in zip(runs, base_runs)]
    assert row["ratio_to_baseline"] == sorted(row["ratios_to_baseline"])[1]
    # --extra-pid counts for URL's runs only.
    assert all(run["extra_cpu_us_per_message"] >= 0 for run in runs)
    assert all("extra_cpu_us_per_message" not in run for run in base_runs)
    assert "ratio_to_baseline" not in result["summary"][baseline_url]
    text = bench.summary(result)
    assert "%s against %s: %.2fx its msgs/s" % (url, baseline_url, row["ratio_to_baseline"]) in text
    assert signed_in_peers(url) == [] and signed_in_peers(baseline_url) == []


@pytest.mark.parametrize("extra", [
    ["--peerjs", "http://127.0.0.1:9"], ["--transport", "http", "--transport", "ws"]])
def test_relay_baseline_refuses_a_second_kind_of_comparison(extra, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(["http://127.0.0.1:1", "relay", "--baseline", "http://127.0.0.1:2", *extra])
    assert exit.value.code == 2
    assert "--baseline compares two servers on one transport" in capsys.readouterr().err


def test_relay_second_url_is_for_a_single_relay(capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(["http://127.0.0.1:1", "relay", "--second-url", "http://127.0.0.1:2",
                    "--baseline", "http://127.0.0.1:3"])
    assert exit.value.code == 2
    assert "--second-url is for a single relay" in capsys.readouterr().err


def gc_collections(url):
    """The server's python_gc_collections_total, by generation."""
    return {labels["generation"]: value
            for labels, value in metric_samples(url, "python_gc_collections_total")}


def test_a_storm_costs_the_server_few_garbage_collections(run_twistd, redis_server):
    # server_tap.tune_collector: startup's objects frozen out of every
    # collection, and a young-generation pass every 10,000 objects.  With
    # Python's 700, a Redis-backed server makes about 75 passes in this
    # storm (the in-memory one, a few).
    proc, url = start_pcsignal(run_twistd, "--redis", redis_server.url,
                               "--redis-prefix", "test:gc:")
    before = gc_collections(url)
    code, result = run_bench(url, "storm", "--peers", "80")
    assert code == 0, result
    assert result["pushes"] == 80 * 79 // 2
    after = gc_collections(url)
    assert after["0"] - before["0"] < 30, (before, after)


@pytest.mark.parametrize("processes", [1, 3])
def test_storm_every_peer_learns_every_other(pcsignal_server, processes):
    proc, url = pcsignal_server
    peers = 40
    code, result = run_bench(
        url, "storm", "--peers", str(peers), "--processes", str(processes),
        "--server-pid", str(proc.proc.pid),
    )
    assert code == 0, result
    assert result["processes"] == processes
    assert result["complete"] is True
    assert result["errors"] == 0, result["error_samples"]
    assert result["timed_out_peers"] == 0
    assert result["peers_announced_gone"] == 0
    assert result["peers_not_knowing_everyone"] == 0
    # Peer i is told about each of the peers signing in after it.
    assert result["pushes"] == peers * (peers - 1) // 2
    assert result["pushes_per_second"] > 0
    assert result["server_peak_rss_mib"] > 1
    assert result["client_cpu_seconds"] > 0
    assert signed_in_peers(url) == []


@pytest.mark.parametrize("processes", [1, 2])
def test_hold_delivers_to_random_parked_peers(pcsignal_server, processes):
    proc, url = pcsignal_server
    code, result = run_bench(
        url, "hold", "--peers", "25", "--messages", "60", "--seed", "7",
        "--processes", str(processes), "--server-pid", str(proc.proc.pid),
    )
    assert code == 0, result
    assert result["errors"] == 0, result["error_samples"]
    assert result["parked"] == 25
    assert result["timed_out_peers"] == 0
    latency = result["delivery_latency"]
    assert latency["count"] == 60
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"] < 5000
    rss = result["server_rss_mib"]
    assert 1 < rss["before"] <= rss["peak"]
    assert 1 < rss["parked"] <= rss["peak"]
    assert signed_in_peers(url) == []


def test_storm_reports_refused_sign_ins(run_twistd):
    proc, url = start_pcsignal(run_twistd, "--max-peers", "6")
    code, result = run_bench(url, "storm", "--peers", "9")
    assert code == 1
    assert result["errors"] == 3
    assert all("sign_in answered 503" in e for e in result["error_samples"])
    # The six that got in still all met.
    assert result["complete"] is True
    assert result["pushes"] == 6 * 5 // 2
    assert signed_in_peers(url) == []


def run_cli(*args, timeout=60):
    """``pcsignal-bench ARGS`` as a user runs it: (exit code, stdout, stderr)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "pcsignal.bench.signaling", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    return done.returncode, done.stdout, done.stderr


def test_unreachable_server_is_one_clear_line_not_a_hang():
    # A port nothing listens on: bind one, learn its number, close it.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = run_cli("http://127.0.0.1:%d" % (port,), "relay", "--messages", "5", timeout=30)
    assert code != 0 and out == ""
    assert err.strip().splitlines() == ["pcsignal-bench: cannot reach http://127.0.0.1:%d: Connection refused" % (port,)]


def test_url_without_scheme_is_refused_with_a_hint():
    code, out, err = run_cli("127.0.0.1:8888", "relay")
    assert code == 2
    assert "'127.0.0.1:8888' is not a URL: did you mean http://127.0.0.1:8888 ?" in err


def test_help_offers_no_internal_scenario_and_no_markup():
    code, out, _ = run_cli("--help")
    assert code == 0 and "worker" not in out and "``" not in out
    code, _, err = run_cli("http://127.0.0.1:1", "nonsense")
    assert code == 2 and "worker" not in err and "'relay'" in err
    for scenario in ("relay", "storm", "hold"):
        code, out, _ = run_cli("http://127.0.0.1:1", scenario, "--help")
        assert code == 0 and "``" not in out


def test_summary_is_readable():
    text = bench.summary(
        {
            "scenario": "relay", "pairs": 8, "messages": 30000, "seconds": 10.0,
            "messages_per_second": 3000.0, "errors": 1, "error_samples": ["boom"],
            "latency": {"count": 30000, "p50_ms": 1.5, "p99_ms": 8.25, "max_ms": 20.0},
            "client_cpu_seconds": 9.5, "server_cpu_seconds": 9.9,
            "client": {"event_loop": "asyncio"},
        }
    )
    assert "3000.0 msgs/s" in text
    assert "p99 8.25 ms" in text
    assert "errors: 1\n  boom" in text
    assert "server CPU: 9.90s" in text
    nothing = bench.summary(
        {
            "scenario": "relay", "pairs": 1, "messages": 0, "seconds": 1.0, "messages_per_second": 0.0,
            "errors": 1, "error_samples": ["sign_in answered 404"], "latency": bench.latency_summary([]),
        }
    )
    assert "None" not in nothing and "one-way latency: none measured" in nothing


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 0.50) == 50.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile([3.0], 0.99) == 3.0
    assert bench.percentile([], 0.5) is None
    # p95 of a small sample is not its maximum.
    assert bench.percentile([float(v) for v in range(1, 21)], 0.95) == 19.0
    assert bench.latency_summary([0.001, 0.003, 0.002]) == {
        "count": 3, "p50_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0,
    }


def test_exit_status_says_whether_the_run_went_well():
    clean = {"scenario": "storm", "errors": 0, "timed_out_peers": 0, "complete": True}
    assert bench.succeeded(clean)
    assert not bench.succeeded(dict(clean, timed_out_peers=1))
    assert not bench.succeeded(dict(clean, complete=False))
    assert not bench.succeeded({"scenario": "relay", "errors": 2})


def test_message_budget_is_split_exactly():
    assert [bench._share(301, 3, i) for i in range(3)] == [101, 100, 100]
    assert bench._share(None, 3, 0) is None


def test_command_line_takes_options_after_the_scenario():
    args = bench.build_parser().parse_args(
        ["http://127.0.0.1:1", "hold", "--peers", "10", "--messages", "5", "--server-pid", "42", "--json"]
    )
    assert (args.scenario, args.peers, args.messages, args.server_pid, args.json) == (
        "hold", 10, 5, 42, True,
    )
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["http://127.0.0.1:1", "relay", "--seconds", "1", "--messages", "5"])
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["http://127.0.0.1:1", "storm", "--peers", "0"])
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["http://127.0.0.1:1", "relay", "--abandon", "1.5"])


# -- pcpeer-bench ---------------------------------------------------------------


def test_pcpeer_bench_prints_a_table_or_json_with_the_negotiated_codec(tmp_path):
    """A tiny run of the real thing: 3 calls, a 2 s call, no churn."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "pcsignal.bench.calls", "--calls", "3", "--hold-seconds", "2",
               "--churn", "0", "--video-size", "160x120", "--fps", "10"]
    table = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert table.returncode == 0, table.stderr
    assert re.search(r"set-up to first video frame: median \d\.\d{3} s, p95 \d\.\d{3} s .*3 calls", table.stdout)
    assert "one 2 s call at 160x120@10 VP8:" in table.stdout
    assert "{" not in table.stdout  # no JSON unless asked
    as_json = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert as_json.returncode == 0, as_json.stderr
    results = json.loads(as_json.stdout)
    assert results["video"] == "160x120@10 VP8"
    assert results["setup_s"]["p95"] <= results["setup_s"]["max"]


def test_pcpeer_bench_help_has_no_markup():
    from pcsignal.bench import calls

    text = calls.build_parser().format_help()
    assert "``" not in text and "--json" in text
