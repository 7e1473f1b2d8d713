"""
Chromium driven by Playwright for Python, for the browser tests.

Debian's /usr/bin/chromium, headless, with a fake camera and microphone.
The suite runs on Twisted's asyncio reactor, whose loop counts as running in
the main thread, and Playwright's sync API refuses to start inside a running
asyncio loop.  So every Playwright call runs in one worker thread
(BrowserThread); a test hands it a scenario function and waits.  Scenarios
only talk to separate processes, so the paused reactor is no obstacle.
"""

import os
import re
from concurrent.futures import ThreadPoolExecutor

from playwright import sync_api as playwright_sync
from playwright.sync_api import expect


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    # A fake camera (a moving test picture) and microphone, granted without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    # The machine has no internet: keep Chromium from trying (and waiting).
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebRtcHideLocalIpsWithMdns: a page without camera permission would
    # hide its host candidates behind mDNS names, resolved by multicast.
    "--disable-features=Translate,OptimizationHints,MediaRouter,WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    # Offer 127.0.0.1 as a host candidate: the suite runs in a network
    # namespace that has nothing but loopback (see .ci/run).
    "--allow-loopback-in-peer-connection",
]
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
TIMEOUT_MS = 20_000
SCENARIO_TIMEOUT_S = 120

class BrowserThread:
    """One Chromium, driven by sync Playwright confined to one worker thread."""

    def __init__(self):
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="playwright")
        self._playwright = None
        self.browser = self.run(self._launch)

    def _launch(self):
        self._playwright = playwright_sync.sync_playwright().start()
        return self._playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )

    def run(self, scenario, *args):
        """Run scenario(*args) in the Playwright thread; return its result or raise."""
        return self._executor.submit(scenario, *args).result(SCENARIO_TIMEOUT_S)

    def close(self):
        def stop():
            self.browser.close()
            self._playwright.stop()

        try:
            self.run(stop)
        finally:
            self._executor.shutdown(wait=True)




# -- page helpers (run inside the Playwright thread) ------------------------------


def open_page(browser, url, width=1280, height=800):
    """A fresh page (own context: own storage, own connections) showing the client."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors
    page.goto(url + "/")
    expect(page.locator("#sign-in")).to_be_visible()
    return page


def sign_in(page, name):
    page.fill("#name", name)
    page.click("#sign-in")
    expect(page.locator("#presence-text")).to_contain_text(name)
    return int(page.evaluate("pcsignal.app.client.id"))


def peer_button(page, name):
    return page.locator("#peer-list button.peer", has_text=name)


def expect_connected(page, peer_name):
    """Connected, with the chat's data channel open."""
    expect(page.locator("#call-title")).to_have_text("In call with " + peer_name)
    expect(page.locator("#state-ice")).to_have_text(re.compile("connected|completed"))
    expect(page.locator("#chat-input")).to_be_enabled()


def expect_remote_video_playing(page, size=None):
    """The remote <video> has a picture and the decoder keeps producing frames."""
    page.wait_for_function(
        "() => { const v = document.getElementById('remote-video');"
        " return v.videoWidth > 0 && v.videoHeight > 0 && !v.paused; }"
    )
    stats = page.locator("#stats")
    expect(stats).to_have_attribute("data-frames-decoded", re.compile(r"^[1-9]\d*$"))
    first = int(stats.get_attribute("data-frames-decoded"))
    page.wait_for_function(
        "(n) => Number(document.getElementById('stats').dataset.framesDecoded) > n", arg=first
    )
    expect(page.locator("#stats-in")).to_contain_text(re.compile(r"bit/s.*\d+×\d+ · \d+ fps"))
    if size is not None:
        assert page.evaluate(
            "() => { const v = document.getElementById('remote-video'); return [v.videoWidth, v.videoHeight]; }"
        ) == list(size)


def expect_idle(page):
    """Back at the peer list: no call, every peer callable again."""
    expect(page.locator("#call-title")).to_have_text("No call")
    expect(page.locator("#hang-up")).to_be_disabled()
    expect(page.locator("#chat-input")).to_be_disabled()
    expect(page.locator("#peer-list button.peer:disabled")).to_have_count(0)


def chat(sender, receiver, text):
    sender.fill("#chat-input", text)
    sender.press("#chat-input", "Enter")
    expect(sender.locator("#chat-log .chat-line.mine", has_text=text)).to_have_count(1)
    expect(receiver.locator("#chat-log .chat-line.theirs", has_text=text)).to_have_count(1)


def save_screenshot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path)
    return path
