"""
HTTPS: pcsignal listening on an ``ssl:`` endpoint with certificate files in
certbot's layout, configured exactly as the etc/pcsignal.service.d/tls.conf
drop-in does (only the port and the credentials directory differ).  The
certificate chain (private CA, intermediate, server certificate) is made in
the test with ``cryptography``.
"""

import base64
import hashlib
import os
import re

import pytest
import pytest_twisted
import treq
from cryptography.hazmat.primitives import serialization
from playwright import sync_api as playwright_sync
from playwright.sync_api import expect
from treq.client import HTTPClient
from twisted.internet import reactor, ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseNeverReceived

from conftest import TWISTD, start_pcsignal
from browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    BrowserThread,
    chat,
    expect_connected,
    expect_idle,
    open_page,
    peer_button,
    sign_in,
)
from deploy_support import (
    ETC,
    INSTALLED_TWISTD,
    CommandProcess,
    environment_assignments,
    environment_file,
    exchange_message,
    expand_command,
    unit_setting,
    unit_settings,
    write_certificate_chain,
)

TLS_DROPIN = os.path.join(ETC, "pcsignal.service.d", "tls.conf")


def tls_listen_arguments(credentials_dir):
    """
    The drop-in's ``--listen ssl:...`` with systemd's %d (the credentials
    directory) set to ``credentials_dir`` and port 8443 replaced by a free
    loopback port.
    """
    env = environment_assignments(unit_setting(TLS_DROPIN, "Environment"))
    option, endpoint = env["PCSIGNAL_TLS"].split()
    assert option == "--listen" and endpoint.startswith("ssl:8443:"), endpoint
    endpoint = endpoint.replace("ssl:8443:", "ssl:0:interface=127.0.0.1:", 1)
    return [option, endpoint.replace("%d", credentials_dir)]


def test_dropin_loads_every_file_it_uses():
    """Each %d/FILE in the endpoint is a credential the drop-in loads."""
    env = environment_assignments(unit_setting(TLS_DROPIN, "Environment"))
    used = set(re.findall(r"%d/([^:\s]+)", env["PCSIGNAL_TLS"]))
    loaded = {v.split(":", 1)[0] for k, v in unit_settings(TLS_DROPIN) if k == "LoadCredential"}
    assert used == loaded == {"cert.pem", "chain.pem", "privkey.pem"}


@pytest.fixture
def https_server(tmp_path, run_twistd):
    """pcsignal on HTTPS only: (process, base URL, CA certificate PEM)."""
    ca_pem, _ = write_certificate_chain(str(tmp_path))
    process, url = start_pcsignal(run_twistd, *tls_listen_arguments(str(tmp_path)))
    assert re.search(r"pcsignal listening on 127\.0\.0\.1:\d+ \(TLS\)", process.output())
    return process, url.replace("http://", "https://"), ca_pem


def trusting_client(ca_pem):
    """A treq client that trusts only our private CA, and checks host names."""
    policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(ca_pem))
    return HTTPClient(Agent(reactor, contextFactory=policy))


@pytest_twisted.ensureDeferred
async def test_https_sign_in_message_and_metrics(https_server):
    _, base, ca_pem = https_server
    client = trusting_client(ca_pem)
    await exchange_message(client, base)
    # A Prometheus elsewhere can scrape over HTTPS.
    response = await client.get(base + "/metrics")
    assert response.code == 200
    metrics = await response.text()
    assert re.search(r"^pcsignal_messages_total 1\.0$", metrics, re.M), metrics


@pytest_twisted.ensureDeferred
async def test_https_certificate_is_verified(https_server):
    """The check above can fail: a client without our CA refuses the server."""
    _, base, _ = https_server
    with pytest.raises(ResponseNeverReceived) as failure:
        await treq.get(base + "/sign_in?mallory")
    assert "certificate verify failed" in str(failure.value.reasons[0].value)


def test_websocket_over_tls_on_the_same_listener(https_server):
    from wsclients import Socket

    _, base, ca_pem = https_server
    alice, bob = Socket(base, ca_pem=ca_pem), Socket(base, ca_pem=ca_pem)
    alice_id = alice.sign_in("alice")["id"]
    bob.sign_in("bob")
    alice.expect("peer")
    bob.send({"type": "message", "to": alice_id, "data": "over wss", "seq": 1})
    assert bob.expect("ack")["seq"] == 1
    assert alice.expect("message")["data"] == "over wss"
    alice.close()
    bob.close()


# -- Chromium over HTTPS ---------------------------------------------------------


def spki_sha256(certificate):
    """Base64 SHA-256 of a certificate's public key, as Chromium's flags want it."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


class TrustingChromium(BrowserThread):
    """
    Chromium that accepts exactly our server's key (Chromium takes its trust
    from the system store, which a test must not change).
    """

    def __init__(self, certificate):
        self._trust = "--ignore-certificate-errors-spki-list=" + spki_sha256(certificate)
        super().__init__()

    def _launch(self):
        self._playwright = playwright_sync.sync_playwright().start()
        return self._playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + [self._trust]
        )


def test_browser_call_over_https(tmp_path, run_twistd):
    """Two Chromium pages load the client over https, sign in, call and chat."""
    _, certificate = write_certificate_chain(str(tmp_path))
    _, url = start_pcsignal(run_twistd, *tls_listen_arguments(str(tmp_path)))
    url = url.replace("http://", "https://")
    expect.set_options(timeout=TIMEOUT_MS)
    chromium = TrustingChromium(certificate)

    def scenario(browser):
        alice = open_page(browser, url)
        bob = open_page(browser, url)
        for page in (alice, bob):
            assert page.evaluate("location.protocol + String(isSecureContext)") == "https:true"
        sign_in(alice, "alice")
        sign_in(bob, "bob")
        peer_button(alice, "bob").click()
        expect_connected(alice, "bob")
        expect_connected(bob, "alice")
        chat(alice, bob, "hello over https")
        bob.click("#hang-up")
        expect_idle(alice)
        assert alice.js_errors == [] and bob.js_errors == []
        alice.context.close()
        bob.context.close()

    try:
        chromium.run(scenario, chromium.browser)
    finally:
        chromium.close()


# -- pcpeer over HTTPS -------------------------------------------------------------

PCPEER_UNIT = os.path.join(ETC, "pcpeer@.service")
PCPEER_EXAMPLE = os.path.join(ETC, "default", "pcpeer-example")
EXAMPLE_SERVER = "https://signal.example.org:8443"


def bot_command(server_url):
    """pcpeer@.service's ExecStart= with etc/default/pcpeer-example's options."""
    options = environment_file(PCPEER_EXAMPLE)["PCPEER_OPTIONS"]
    assert EXAMPLE_SERVER in options
    env = {"PCPEER_OPTIONS": options.replace(EXAMPLE_SERVER, server_url)}
    argv = expand_command(unit_setting(PCPEER_UNIT, "ExecStart"), env)
    assert argv[0] == INSTALLED_TWISTD
    # Loopback only: the tests never use another interface.
    return [TWISTD] + argv[1:] + ["--ice-address", "127.0.0.1"]


def test_pcpeer_calls_over_https(tmp_path, run_twistd, processes):
    """
    The example bot (pcpeer@.service with etc/default/pcpeer-example) signs in
    over https, trusting our CA through SSL_CERT_FILE as the example file
    says; another pcpeer calls it and receives its media.  A pcpeer that does
    not trust the CA cannot sign in.
    """
    ca_pem, _ = write_certificate_chain(str(tmp_path))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca_pem)
    with open(PCPEER_EXAMPLE, encoding="utf-8") as f:
        assert re.search(r"^# SSL_CERT_FILE=/\S+\.pem$", f.read(), re.M)
    trust = {"SSL_CERT_FILE": str(ca_file)}
    _, url = start_pcsignal(run_twistd, *tls_listen_arguments(str(tmp_path)))
    url = url.replace("http://", "https://")

    bot = CommandProcess(bot_command(url), env=trust)
    processes.append(bot)
    loopback = ("--ice-address", "127.0.0.1")
    untrusting = run_twistd("pcpeer", "--server", url, "--name", "untrusting", *loopback)
    caller = run_twistd(
        "pcpeer", "--server", url, "--name", "caller", "--call", "echo-bot", *loopback, env=trust
    )
    bot.wait_for_log(r"signed in to https://127\.0\.0\.1:\d+ as echo-bot ")
    caller.wait_for_log(r"call with echo-bot \(\d+\) connected in")
    caller.wait_for_log(r"first video frame \d+x\d+ from echo-bot")
    untrusting.wait_for_log(r"cannot sign in to https://.*certificate verify failed")
    assert " signed in to " not in untrusting.output()
