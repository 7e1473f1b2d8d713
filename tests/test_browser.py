"""
The browser client (pcsignal/static/) in a real headless Chromium.

Debian's /usr/bin/chromium is driven by Playwright for Python against a real
``twistd pcsignal`` (and, for the interoperability tests, a real ``twistd
pcpeer``).  Chromium's fake camera and microphone stand in for the hardware;
everything else — HTTP, WebRTC, ICE, DTLS, SRTP, SCTP — is Chromium's own.

The suite runs on Twisted's asyncio reactor, whose loop counts as running in
the main thread, and Playwright's sync API refuses to start inside a running
asyncio loop.  So every Playwright call runs in one worker thread
(BrowserThread); the test body hands it a scenario function and waits.  The
scenario only talks to separate processes, so the paused reactor is no
obstacle.
"""

import re
import time

import pytest_twisted
from playwright.sync_api import expect
from twisted.internet import threads

from conftest import start_pcsignal
from httpclients import Browser
from browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    chat,
    expect_connected,
    expect_idle,
    expect_remote_video_playing,
    open_page,
    peer_button,
    save_screenshot,
    sign_in,
)


# -- tests ---------------------------------------------------------------------------


def test_page_signs_in_and_follows_peers(chromium, pcsignal_server):
    _, url = pcsignal_server

    def scenario(browser):
        alice = open_page(browser, url)
        # Keyboard only: type the name and press Enter.
        alice.focus("#name")
        alice.keyboard.type("alice")
        alice.keyboard.press("Enter")
        expect(alice.locator("#presence-text")).to_contain_text("alice")
        expect(alice.locator("#peers-empty")).to_be_visible()

        bob = open_page(browser, url)
        sign_in(bob, "bob smith")
        expect(peer_button(alice, "bob smith")).to_be_visible()
        expect(peer_button(bob, "alice")).to_be_visible()
        expect(alice.locator("#peer-count")).to_have_text("1")

        # Sign out with the button: alice sees bob leave.
        bob.click("#sign-out")
        expect(bob.locator("#sign-in")).to_be_visible()
        expect(peer_button(alice, "bob smith")).to_have_count(0)
        expect(alice.locator("#peers-empty")).to_be_visible()

        # The name is remembered; signing in again is one click.
        bob.reload()
        expect(bob.locator("#name")).to_have_value("bob smith")
        bob.click("#sign-in")
        expect(peer_button(alice, "bob smith")).to_be_visible()

        # Closing the page signs out (pagehide).
        bob.context.close()
        expect(peer_button(alice, "bob smith")).to_have_count(0)
        assert alice.js_errors == []
        alice.context.close()

    chromium.run(scenario, chromium.browser)


def test_two_browsers_call_each_other_and_chat(chromium, pcsignal_server):
    _, url = pcsignal_server

    def scenario(browser):
        alice = open_page(browser, url)
        bob = open_page(browser, url)
        sign_in(alice, "alice")
        sign_in(bob, "bob")

        # alice calls bob; bob answers automatically, like the native client.
        peer_button(alice, "bob").click()
        expect_connected(alice, "bob")
        expect_connected(bob, "alice")
        expect_remote_video_playing(alice)
        expect_remote_video_playing(bob)
        chat(alice, bob, "hello bob, can you see me?")
        chat(bob, alice, "loud and clear, alice")
        save_screenshot(alice, "screenshot-browsers.png")

        # A third page calling bob meanwhile is turned away politely (BYE).
        carol = open_page(browser, url)
        sign_in(carol, "carol")
        peer_button(carol, "bob").click()
        expect(carol.locator("#chat-log")).to_contain_text("bob is busy or declined the call.")
        expect_idle(carol)
        expect(bob.locator("#chat-log")).to_contain_text("carol tried to call you")
        expect(bob.locator("#call-title")).to_have_text("In call with alice")
        carol.context.close()

        # The callee hangs up: both are back at the peer list.
        bob.click("#hang-up")
        expect_idle(bob)
        expect_idle(alice)
        expect(alice.locator("#chat-log")).to_contain_text("bob hung up.")

        # bob calls alice this time, and the caller hangs up with the keyboard.
        peer_button(bob, "alice").click()
        expect_connected(alice, "bob")
        expect_connected(bob, "alice")
        expect_remote_video_playing(alice)
        chat(alice, bob, "second call")
        bob.locator("#hang-up").focus()
        bob.keyboard.press("Enter")
        expect_idle(bob)
        expect_idle(alice)
        expect(alice.locator("#chat-log")).to_contain_text("bob hung up.")

        # A third call ends when bob closes his page: it hangs up and signs out.
        peer_button(alice, "bob").click()
        expect_connected(alice, "bob")
        bob.context.close()
        expect_idle(alice)
        expect(peer_button(alice, "bob")).to_have_count(0)
        expect(alice.locator("#chat-log .chat-line.system")).to_have_text(
            ["Chat connected with bob.", "bob hung up."] * 2
            + ["Chat connected with bob.", re.compile(r"^bob (hung up|left)\.$")]
        )
        assert alice.js_errors == []
        alice.context.close()

    chromium.run(scenario, chromium.browser)


def test_server_going_away_and_coming_back(chromium, run_twistd):
    proc, url = start_pcsignal(run_twistd)
    port = url.rsplit(":", 1)[1]

    def scenario(browser):
        page = open_page(browser, url)
        sign_in(page, "carol")
        proc.stop()
        expect(page.locator("#banner")).to_contain_text("unreachable")
        expect(page.locator("#presence-text")).to_have_text("Reconnecting…")
        # A new server on the same port does not know carol's id: the page
        # says so, and signs in again with one click.
        start_pcsignal(run_twistd, "--listen", "tcp:%s:interface=127.0.0.1" % (port,))
        expect(page.locator("#banner")).to_contain_text("no longer knows this session")
        expect(page.locator("#sign-in")).to_be_visible()
        page.click("#banner-action")
        expect(page.locator("#presence-text")).to_have_text("carol")
        expect(page.locator("#banner")).to_be_hidden()
        page.context.close()

    chromium.run(scenario, chromium.browser)


# -- with pcpeer: aiortc on one side, Chromium's WebRTC on the other ----------------

PATTERN_SIZE = (320, 240)


def start_pcpeer(run_twistd, url, name, *args):
    """A pcpeer sending its test pattern, offering only 127.0.0.1 to ICE."""
    peer = run_twistd(
        "pcpeer",
        "--server", url,
        "--name", name,
        "--ice-address=127.0.0.1",
        "--video-size=%dx%d" % PATTERN_SIZE,
        *args,
    )
    peer.wait_for_log(r"signed in to .* as %s " % (re.escape(name),))
    return peer


def frames_from(name, count=30):
    """pcpeer's log line for decoded video frames received from NAME."""
    return r"received %d video frames from %s \(\d+\)" % (count, re.escape(name))


def test_browser_and_pcpeer_call_each_other(chromium, pcsignal_server, run_twistd):
    _, url = pcsignal_server
    pattern = start_pcpeer(run_twistd, url, "pattern")

    def browser_calls_pcpeer(browser):
        alice = open_page(browser, url, height=680)  # the screenshot's size
        sign_in(alice, "alice")
        # Both sides signal over WebSocket (the server offers it).
        assert alice.evaluate("pcsignal.app.client.transport") == "websocket"
        assert re.search(r"signed in to .* as pattern \(\d+\); .*, over WebSocket", pattern.output())
        peer_button(alice, "pattern").click()
        expect_connected(alice, "pattern")
        # Chromium decodes pcpeer's test pattern...
        expect_remote_video_playing(alice, size=PATTERN_SIZE)
        # ...pcpeer decodes Chromium's fake camera...
        pattern.wait_for_log(frames_from("alice"))
        # ...and echoes chat over the data channel.
        alice.fill("#chat-input", "ping over SCTP")
        alice.press("#chat-input", "Enter")
        expect(alice.locator("#chat-log .chat-line.theirs", has_text="ping over SCTP")).to_have_count(1)
        save_screenshot(alice, "screenshot-call.png")
        alice.click("#hang-up")
        expect_idle(alice)
        pattern.wait_for_log(r"call with alice \(\d+\) ended \(BYE received\)")
        assert alice.js_errors == []
        return alice

    alice = chromium.run(browser_calls_pcpeer, chromium.browser)

    # Now pcpeer calls the browser (--call), which answers.
    caller = start_pcpeer(run_twistd, url, "caller", "--call", "alice")

    def pcpeer_calls_browser():
        expect_connected(alice, "caller")
        expect_remote_video_playing(alice, size=PATTERN_SIZE)
        # The calling pcpeer opened the chat channel, and echoes on it too.
        alice.fill("#chat-input", "echo from the callee side")
        alice.press("#chat-input", "Enter")
        expect(alice.locator("#chat-log .chat-line.theirs", has_text="echo from the callee side")).to_have_count(1)
        caller.wait_for_log(frames_from("alice"))
        # pcpeer stopping hangs up: the page returns to the peer list.
        caller.stop()
        expect_idle(alice)
        expect(peer_button(alice, "caller")).to_have_count(0)
        assert alice.js_errors == []
        alice.context.close()

    chromium.run(pcpeer_calls_browser)


# -- camera refused, and a server on another origin -------------------------------


def test_call_without_camera_permission(chromium, pcsignal_server):
    """A user who refuses the camera still gets a call: told why, receiving only."""
    _, url = pcsignal_server

    def scenario(browser):
        # A second Chromium without the fake permission UI: it denies every
        # camera and microphone request, as a user clicking "Block" would.
        refusing = browser.browser_type.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[a for a in CHROMIUM_ARGS if a != "--use-fake-ui-for-media-stream"]
            + ["--deny-permission-prompts"],
        )
        try:
            dora = open_page(refusing, url)
            bob = open_page(browser, url)
            sign_in(dora, "dora")
            sign_in(bob, "bob")
            peer_button(dora, "bob").click()
            expect(dora.locator("#banner")).to_contain_text("refused")
            expect(dora.locator("#local-video")).to_be_hidden()
            expect_connected(dora, "bob")
            expect_connected(bob, "dora")
            expect_remote_video_playing(dora)
            expect(bob.locator("#idle-text")).to_have_text("dora is not sending video.")
            chat(bob, dora, "no camera, no problem")
            dora.click("#hang-up")
            expect_idle(bob)
            assert dora.js_errors == [] and bob.js_errors == []
            bob.context.close()
        finally:
            refusing.close()

    chromium.run(scenario, chromium.browser)


def test_page_uses_a_server_on_another_origin(chromium, pcsignal_server, run_twistd):
    """The page from one pcsignal signs in to another one (CORS) and calls through it."""
    _, page_origin = pcsignal_server
    _, other_server = start_pcsignal(run_twistd)

    def scenario(browser):
        erin = open_page(browser, page_origin)
        erin.click("#server-details summary")
        erin.fill("#server", other_server)
        sign_in(erin, "erin")
        frank = open_page(browser, other_server)
        sign_in(frank, "frank")
        peer_button(erin, "frank").click()
        expect_connected(erin, "frank")
        expect_connected(frank, "erin")
        chat(frank, erin, "across origins")
        # The choice of server is remembered with the name.
        erin.click("#sign-out")
        erin.reload()
        expect(erin.locator("#server")).to_have_value(other_server)
        expect(peer_button(frank, "erin")).to_have_count(0)
        assert erin.js_errors == [] and frank.js_errors == []
        erin.context.close()
        frank.context.close()

    chromium.run(scenario, chromium.browser)


def answer_with(status):
    """A Playwright route handler answering like a server without the path."""
    def handler(route):
        route.fulfill(status=status, content_type="text/html",
                      body="<html><body>Sorry, not yet implemented</body></html>")
    return handler


def test_call_against_a_server_without_ice_servers(chromium, pcsignal_server):
    """
    /ice-servers answered like a server that lacks it (the reference's 500
    page for one browser, a 404 for the other): sign-in and calls work, with
    no ICE servers.
    """
    _, url = pcsignal_server

    def scenario(browser):
        pages = []
        for name, status in (("gina", 500), ("hank", 404)):
            page = open_page(browser, url)
            page.route("**/ice-servers?*", answer_with(status))
            sign_in(page, name)
            pages.append(page)
        gina, hank = pages
        peer_button(gina, "hank").click()
        expect_connected(gina, "hank")
        expect_connected(hank, "gina")
        expect_remote_video_playing(gina)
        expect(gina.locator("#stats")).to_have_attribute("data-path", "direct")
        for page in pages:
            assert page.evaluate("pcsignal.app.call.peerConnection.getConfiguration().iceServers") == []
            expect(page.locator("#banner")).to_be_hidden()
            assert page.js_errors == []
            page.context.close()

    chromium.run(scenario, chromium.browser)


def decoded_video_frames(path):
    """Video frames PyAV decodes from a recording (0 if it holds no video)."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            return 0
        return sum(1 for _ in container.decode(video=0))


def test_browser_calls_are_recorded_with_their_video(chromium, pcsignal_server, run_twistd, tmp_path):
    """Three calls in a row from Chromium to one recording pcpeer: each file holds real video."""
    _, url = pcsignal_server
    recorder = start_pcpeer(run_twistd, url, "recorder", "--record", str(tmp_path / "calls" / "call.mp4"))

    def one_call(browser, n):
        page = open_page(browser, url)
        sign_in(page, "caller%d" % n)
        peer_button(page, "recorder").click()
        expect_connected(page, "recorder")
        expect_remote_video_playing(page)
        recorder.wait_for_log(frames_from("caller%d" % n, 100), timeout=60)
        page.click("#hang-up")
        expect_idle(page)
        page.context.close()

    recordings = []
    for n in range(1, 4):
        chromium.run(one_call, chromium.browser, n)
        recordings.append(recorder.wait_for_log(r"recorded call with caller%d \(\d+\) to (\S+)" % n).group(1))
    counts = [decoded_video_frames(path) for path in recordings]
    assert all(count >= 100 for count in counts), (counts, recorder.output())
    assert "Traceback" not in recorder.output()


# -- WebSocket and hanging GETs --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pages_on_websocket_and_on_hanging_gets_call_each_other(chromium, pcsignal_server):
    """
    One page talks to pcsignal directly (WebSocket), the other through a
    proxy that has no /ws, as the reference server (hanging GETs); they list
    each other and call.  Then the WebSocket page loses its socket (a
    /wait for its id takes the peer over) and resumes on a new one.
    """
    from proxies import listen_without_websocket

    _, url = pcsignal_server
    port, plain_url = listen_without_websocket(url)

    def scenario(browser):
        ws_page = open_page(browser, url)
        sign_in(ws_page, "wendy")
        http_page = open_page(browser, url)
        http_page.click("#server-details summary")
        http_page.fill("#server", plain_url)
        sign_in(http_page, "hank")
        assert ws_page.evaluate("pcsignal.app.client.transport") == "websocket"
        assert http_page.evaluate("pcsignal.app.client.transport") == "http"
        peer_button(ws_page, "hank").click()
        expect_connected(ws_page, "hank")
        expect_connected(http_page, "wendy")
        chat(http_page, ws_page, "from hanging GETs")
        chat(ws_page, http_page, "from a WebSocket")

        wendy = ws_page.evaluate("pcsignal.app.client.id")
        # Once the pages' pongs have settled all they were sent, nothing is
        # held for wendy: the /wait below gets nothing but its refusal.
        held = Browser(url)
        deadline = time.monotonic() + 10
        while b"\npcsignal_queued_items 0.0\n" not in held.request("GET", "/metrics")[1]:
            assert time.monotonic() < deadline, "signaling never settled"
            time.sleep(0.05)
        held.close()
        taken = Browser(url)
        response, body = taken.request("GET", "/wait?peer_id=%d" % (wendy,))
        assert (response.status, body) == (409, b"Replaced by a newer /wait for this peer.")
        taken.close()
        # Resumed: still signed in as the same peer, and signaling still works.
        expect(ws_page.locator("#banner")).to_be_hidden()
        assert ws_page.evaluate("pcsignal.app.client.id") == wendy
        ws_page.click("#hang-up")
        expect_idle(ws_page)
        expect_idle(http_page)
        assert ws_page.js_errors == [] and http_page.js_errors == []
        ws_page.context.close()
        http_page.context.close()

    try:
        await threads.deferToThread(chromium.run, scenario, chromium.browser)
    finally:
        await port.stopListening()
