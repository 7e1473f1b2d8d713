"""
Any peer name is shown as text by the browser client, in a real Chromium:
markup stays text, a right-to-left name or one carrying bidi controls
cannot reorder the words around it, a very long name stays inside its box,
emoji survive.  Peers with hostile names sign in with the native client's
requests; one of them is a browser page that takes a call.
"""

from urllib.parse import quote

from playwright.sync_api import expect

from browser import open_page, peer_button, sign_in
from httpclients import native

FSI, PDI = "\u2068", "\u2069"  # first-strong isolate ... pop directional isolate
MARKUP = '<img src=x onerror="window.__pwned=1">'
OVERRIDE = "\u202egnp.exe"  # right-to-left override: reads "exe.png"
HEBREW = "שלום עולם"
EMOJI = "😀👍🏽 party 🎉"
LONG = "W" * 512  # the longest name the server keeps, one unbreakable word
CALLEE = "\u202eevil <img src=x onerror=window.__pwned=1> שלום 😀"

NAMES = [MARKUP, OVERRIDE, HEBREW, EMOJI, LONG]
BIDI = {OVERRIDE, HEBREW, CALLEE}


def shown(name):
    """How the page writes a name: isolated where it has right-to-left text or bidi controls."""
    return FSI + name + PDI if name in BIDI else name


def no_horizontal_overflow(page):
    return page.evaluate(
        "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )


def test_hostile_names_are_shown_as_text(chromium, pcsignal_server):
    _, url = pcsignal_server

    def scenario(browser):
        alice = open_page(browser, url)
        sign_in(alice, "alice")
        ids = [native(url, "GET", "/sign_in?" + quote(name)).pragma for name in NAMES]
        expect(alice.locator("#peer-count")).to_have_text(str(len(NAMES)))
        labels = alice.eval_on_selector_all("#peer-list .peer-name", "els => els.map(e => e.textContent)")
        assert sorted(labels) == sorted(shown(name) for name in NAMES)
        assert alice.evaluate("() => window.__pwned") is None
        # Initials skip invisible format characters: the override's avatar shows a letter.
        expect(peer_button(alice, OVERRIDE).locator(".avatar")).to_have_text("G")
        assert alice.locator("img").count() == 0
        # The long name is cut with an ellipsis inside its button, not across the page.
        long_button = peer_button(alice, LONG)
        assert long_button.evaluate(
            "b => b.getBoundingClientRect().right <= b.parentElement.getBoundingClientRect().right")
        assert no_horizontal_overflow(alice)

        # A call with a hostile name: the title, the chat and the announcements.
        callee = open_page(browser, url)
        sign_in(callee, CALLEE)
        peer_button(alice, CALLEE).click()
        expect(alice.locator("#call-title")).to_have_text("In call with " + shown(CALLEE))
        expect(alice.locator("#chat-input")).to_be_enabled()
        callee.fill("#chat-input", "<b>bold?</b>")
        callee.press("#chat-input", "Enter")
        line = alice.locator("#chat-log .chat-line.theirs")
        expect(line.locator(".author")).to_have_text(shown(CALLEE))
        expect(line.locator(".text")).to_have_text("<b>bold?</b>")
        assert alice.locator("#chat-log b").count() == 0
        expect(alice.locator("#chat-log .chat-line.system").first).to_have_text(
            "Chat connected with " + shown(CALLEE) + ".")
        assert no_horizontal_overflow(alice)
        callee.click("#hang-up")
        expect(alice.locator("#chat-log .chat-line.system").last).to_have_text(
            shown(CALLEE) + " hung up.")
        for page in (alice, callee):
            assert page.evaluate("() => window.__pwned") is None
            assert page.js_errors == []
        for peer_id in ids:
            native(url, "GET", "/sign_out?peer_id=%d" % (peer_id,))
        alice.context.close()
        callee.context.close()

    chromium.run(scenario, chromium.browser)
