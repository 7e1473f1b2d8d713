"""
Helpers for the deployment tests: read the shipped systemd units the way
systemd does, make a certificate chain, and drive one signaling exchange.
"""

import datetime
import ipaddress
import os
import re
import shlex
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import LoggedProcess
from pcsignal.protocol import parse_entries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETC = os.path.join(ROOT, "etc")
# Where the units expect the virtualenv (docs/deploying.rst installs it there).
INSTALLED_TWISTD = "/opt/pcsignal/bin/twistd"


def systemd_tool(name):
    """Path of a tool from Debian's systemd package; fail (not skip) without it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            "%s not found: the deployment tests need Debian's systemd package "
            "(apt-get install systemd); no running systemd is needed" % (name,)
        )
    return path


# conftest's LoggedProcess (log waits, stop) for any command line.
CommandProcess = LoggedProcess




# -- systemd unit files ------------------------------------------------------


def unit_settings(path):
    """All ``Key=value`` settings of a unit file, in order, as (key, value)."""
    settings = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;[":
                continue
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def unit_setting(path, key):
    """The one value of ``key`` in a unit file."""
    values = [v for k, v in unit_settings(path) if k == key]
    assert len(values) == 1, "%s: expected one %s=, found %r" % (path, key, values)
    return values[0]


def environment_assignments(text):
    """
    Variables from an EnvironmentFile= or an Environment= value: NAME=VALUE
    words, with shell-like quoting, as systemd reads them.
    """
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        for word in shlex.split(line):
            name, sep, value = word.partition("=")
            assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), word
            env[name] = value
    return env


def environment_file(path):
    with open(path, encoding="utf-8") as f:
        return environment_assignments(f.read())


def expand_command(command, env):
    """
    Expand an ExecStart= line like systemd: ``$NAME`` alone in a word becomes
    as many words as its value has (none if unset or empty), ``${NAME}``
    becomes one word.
    """
    words = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            words.extend(env.get(whole.group(1), "").split())
        else:
            words.append(
                re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word)
            )
    return words


def installed_unit_copy(unit_names, directory, twistd):
    """
    Copy shipped units (and their .d drop-in directories) into ``directory``,
    changing only the virtualenv's twistd path to ``twistd``, so tools that
    check ExecStart= find an executable without /opt/pcsignal existing.
    """
    os.makedirs(directory, exist_ok=True)
    for name in unit_names:
        with open(os.path.join(ETC, name), encoding="utf-8") as f:
            text = f.read()
        if name.endswith(".service"):
            assert INSTALLED_TWISTD in text, "%s does not run %s" % (name, INSTALLED_TWISTD)
            text = text.replace(INSTALLED_TWISTD, twistd)
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
        dropins = os.path.join(ETC, name + ".d")
        if os.path.isdir(dropins):
            shutil.copytree(dropins, os.path.join(directory, name + ".d"))
    return directory


# -- certificates --------------------------------------------------------------


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, key, issuer, issuer_key, is_ca, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_certificate_chain(directory):
    """
    A private CA, an intermediate and a server certificate for localhost and
    127.0.0.1, written in certbot's layout: cert.pem (server), chain.pem
    (intermediate), privkey.pem (server key).  Returns the CA certificate PEM
    (what clients must trust) and the server certificate.
    """
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("pcsignal test CA", root_key, "pcsignal test CA", root_key, True)
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = _certificate("pcsignal test intermediate", mid_key, "pcsignal test CA", root_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = _certificate("localhost", key, "pcsignal test intermediate", mid_key, False, san)

    def write(name, data):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)

    pem = serialization.Encoding.PEM
    write("cert.pem", cert.public_bytes(pem))
    write("chain.pem", mid.public_bytes(pem))
    write(
        "privkey.pem",
        key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return root.public_bytes(pem), cert


def write_mutual_tls(directory, name="tls"):
    """
    A CA, a server certificate for localhost and 127.0.0.1 and a client
    certificate, both signed by it, as PEM files in directory/name: ca.pem,
    server.pem, server.key, client.pem, client.key.  Returns that directory.
    """
    where = os.path.join(str(directory), name)
    os.makedirs(where)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("%s test CA" % name, ca_key, "%s test CA" % name, ca_key, True)
    pem = serialization.Encoding.PEM
    files = {"ca.pem": ca.public_bytes(pem)}
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for role, subject in (("server", "localhost"), ("client", "pcsignal")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(subject, key, "%s test CA" % name, ca_key, False,
                            san if role == "server" else None)
        files[role + ".pem"] = cert.public_bytes(pem)
        files[role + ".key"] = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for filename, data in files.items():
        with open(os.path.join(where, filename), "wb") as f:
            f.write(data)
    return where


# -- one signaling exchange ----------------------------------------------------


async def _get(client, url):
    response = await client.get(url)
    body = await response.content()
    return response, body


def _pragma(response):
    return int(response.headers.getRawHeaders(b"pragma")[0])


async def exchange_message(client, base, names=("alice", "bob")):
    """
    Sign two peers in through ``client`` (a treq HTTPClient or the treq
    module), let the first see the second arrive, deliver one message and sign
    both out; asserts every step.
    """
    first, second = names
    response, body = await _get(client, base + "/sign_in?" + first)
    assert response.code == 200, (response.code, body)
    first_id = _pragma(response)
    assert parse_entries(body)[0].peer_id == first_id, body

    response, body = await _get(client, base + "/sign_in?" + second)
    assert response.code == 200, (response.code, body)
    second_id = _pragma(response)
    names_listed = [e.name for e in parse_entries(body)]
    assert names_listed[0] == second and first in names_listed, body

    response, body = await _get(client, "%s/wait?peer_id=%d" % (base, first_id))
    assert response.code == 200
    [entry] = parse_entries(body)
    assert (entry.name, entry.peer_id, entry.connected) == (second, second_id, True), body

    offer = b'{"type": "offer", "sdp": "v=0\\r\\n"}'
    response = await client.post(
        "%s/message?peer_id=%d&to=%d" % (base, second_id, first_id),
        data=offer,
        headers={b"Content-Type": [b"text/plain"]},
    )
    assert response.code == 200, (response.code, await response.content())
    await response.content()

    response, body = await _get(client, "%s/wait?peer_id=%d" % (base, first_id))
    assert (response.code, _pragma(response), body) == (200, second_id, offer), body

    for peer_id in (first_id, second_id):
        response, _ = await _get(client, "%s/sign_out?peer_id=%d" % (base, peer_id))
        assert response.code == 200, response.code
