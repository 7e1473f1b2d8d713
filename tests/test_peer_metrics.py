"""pcpeer --metrics: call count and media counters in Prometheus text format."""

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import start_pcsignal

PEER_ARGS = ("--ice-address=127.0.0.1", "--video-size=160x120", "--fps=15")


def scrape(url):
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def test_pcpeer_metrics_follow_a_call(run_twistd):
    _, url = start_pcsignal(run_twistd)
    bot = run_twistd("pcpeer", "--server", url, "--name", "bot", *PEER_ARGS,
                     "--metrics", "tcp:0:interface=127.0.0.1")
    port = bot.wait_for_log(r"pcpeer metrics on 127\.0\.0\.1:(\d+)").group(1)
    metrics = "http://127.0.0.1:%s" % port
    bot.wait_for_log(r"signed in to .* as bot")
    before = scrape(metrics)
    assert before[("pcpeer_signed_in", ())] == 1
    assert before[("pcpeer_calls", ())] == 0
    assert before[("pcpeer_frames_total", (("direction", "received"), ("kind", "video")))] == 0

    caller = run_twistd("pcpeer", "--server", url, "--name", "caller", *PEER_ARGS, "--call", "bot")
    bot.wait_for_log(r"received 30 video frames from caller")
    during = scrape(metrics)
    assert during[("pcpeer_calls", ())] == 1
    assert during[("pcpeer_calls_started_total", ())] == 1
    assert during[("pcpeer_frames_total", (("direction", "received"), ("kind", "video")))] >= 30
    assert during[("pcpeer_frames_total", (("direction", "sent"), ("kind", "video")))] > 0

    caller.stop()  # hangs up with BYE and signs out
    bot.wait_for_log(r"call with caller \(\d+\) ended")
    after = scrape(metrics)
    assert after[("pcpeer_calls", ())] == 0
    assert after[("pcpeer_calls_ended_total", ())] == 1
    received = ("pcpeer_frames_total", (("direction", "received"), ("kind", "video")))
    assert after[received] >= during[received]  # a counter never goes back
    assert not re.search(r"Traceback", bot.output())
