"""
Listeners for both plugins: one per Twisted endpoint string, so ``tcp:``,
``ssl:``, ``unix:`` and ``systemd:`` (socket activation) all work.

An endpoint string is checked when the options are parsed
(``check_endpoint``): its type, port number, interface, files and inherited
sockets, so a mistake is a usage error naming the option.  ``ssl:`` is
built here from its certificate files (same parameters as Twisted's), so
that a reload (``ServerTLS.prepare_reload``) can replace the certificate for new connections
while the port stays open.

``ListenerService.bind`` listens at once, from ``makeService``: a port in
use ends twistd with one line naming the option and the address, printed
before twistd starts logging, writes a pid file or daemonizes (as twistd's
own start-up errors are).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Optional

from OpenSSL import crypto
from twisted.application import service
from twisted.internet import endpoints, error, ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.python.filepath import FilePath
from zope.interface import implementer

from pcsignal import logs
from pcsignal.options import BadValue, bad_option, port_number, positive_int

log = logs.logger("pcsignal.server")

KINDS = "tcp:, tcp6:, ssl:, unix: or systemd:"


def describe(address) -> str:
    """An address as an operator would write it: 127.0.0.1:8888, [::1]:8888, unix:PATH."""
    host = getattr(address, "host", None)
    if host is None:
        return "unix:%s" % (getattr(address, "name", address),)
    if ":" in host:
        return "[%s]:%d" % (host, address.port)
    return "%s:%d" % (host, address.port)


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    (type, positional arguments, keyword arguments) of an endpoint string,
    by Twisted's grammar: ``:`` separates arguments, the first ``=`` of an
    argument names it, and a backslash escapes the next character.
    """
    parts: list[list[str]] = [[""]]
    chars = iter(description)
    for c in chars:
        if c == "\\":
            parts[-1][-1] += next(chars, "")
        elif c == ":":
            parts.append([""])
        elif c == "=" and len(parts[-1]) == 1:
            parts[-1].append("")
        else:
            parts[-1][-1] += c
    args = [p[0] for p in parts if len(p) == 1]
    kwargs = {p[0]: p[1] for p in parts if len(p) == 2}
    return args[0].lower(), args[1:], kwargs


# -- TLS ------------------------------------------------------------------------

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def _read(path: str, parameter: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadValue("%s=%s: cannot read it: %s" % (parameter, path, e.strerror or e))


def load_certificate_options(private_key: str, cert_key: str, chain: Optional[str],
                             dh_parameters: Optional[str]):
    """
    CertificateOptions from PEM files, as Twisted's ``ssl:`` endpoint makes
    them; returns (options, (certificate digest, summary for the log)).
    BadValue says which file is wrong.
    """
    key_pem = _read(private_key, "privateKey")
    cert_pem = _read(cert_key, "certKey")
    try:
        certificate = ssl.Certificate.loadPEM(cert_pem)
    except Exception:
        raise BadValue("certKey=%s: no PEM certificate in it" % (cert_key,))
    try:
        key = ssl.KeyPair.load(key_pem, crypto.FILETYPE_PEM)
    except Exception:
        raise BadValue("privateKey=%s: no PEM private key in it" % (private_key,))
    try:
        private = ssl.PrivateCertificate.fromCertificateAndKeyPair(certificate, key)
    except Exception:
        raise BadValue("privateKey=%s is not the key of certKey=%s" % (private_key, cert_key))
    extra = None
    if chain is not None:
        blocks = _PEM_CERTIFICATE.findall(_read(chain, "extraCertChain"))
        try:
            extra = [ssl.Certificate.loadPEM(block).original for block in blocks]
        except Exception:
            extra = []
        if not extra:
            raise BadValue("extraCertChain=%s: no PEM certificate in it" % (chain,))
    kwargs = {}
    if dh_parameters is not None:
        _read(dh_parameters, "dhParameters")
        kwargs["dhParameters"] = ssl.DiffieHellmanParameters.fromFile(FilePath(dh_parameters))
    options = ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=extra,
        **kwargs,
    )
    try:
        options.getContext()
    except Exception as e:  # OpenSSL's own refusal, e.g. of the chain or DH parameters
        raise BadValue("%s, %s: OpenSSL refuses them (%s)" % (private_key, cert_key, e))
    x509 = certificate.original
    summary = "%s, valid until %s" % (
        certificate.getSubject().commonName.decode("utf-8", "replace")
        if certificate.getSubject().commonName else "no common name",
        _asn1_date(x509.get_notAfter()),
    )
    return options, (certificate.digest("sha256"), summary)


def _asn1_date(value: bytes) -> str:
    text = value.decode("ascii")  # YYYYMMDDhhmmssZ
    return "%s-%s-%s %s:%s UTC" % (text[0:4], text[4:6], text[6:8], text[8:10], text[10:12])


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS side of an ``ssl:`` listener.  Each new connection gets the
    certificate loaded last; ``prepare_reload`` reads the files again.
    """

    def __init__(self, private_key, cert_key, chain=None, dh_parameters=None):
        self.files = (private_key, cert_key, chain, dh_parameters)
        self.options, (self.digest, self.summary) = load_certificate_options(*self.files)

    def prepare_reload(self):
        """Read the files again: a function that puts the new certificate in
        force (None if it is unchanged), and its summary.  Raises BadValue."""
        options, (digest, summary) = load_certificate_options(*self.files)
        if digest == self.digest:
            return None, summary

        def apply():
            self.options, self.digest, self.summary = options, digest, summary

        return apply, summary

    def serverConnectionForTLS(self, protocol):
        return self.options.serverConnectionForTLS(protocol)


# -- checking endpoint strings --------------------------------------------------


@dataclass
class Endpoint:
    """A checked endpoint string, ready to listen on."""

    option: str  # how the operator asked for it, e.g. "--listen"
    description: str
    endpoint: object  # IStreamServerEndpoint
    tls: Optional[ServerTLS] = None
    value: Optional[str] = None  # what the option was given, if not the description

    @property
    def named(self) -> str:
        """The option as the operator wrote it: ``--listen tcp:8888``, ``--port 8888``."""
        return "%s %s" % (self.option, self.value or self.description)


_TCP_PARAMETERS = {"port", "interface", "backlog"}
_TLS_PARAMETERS = {"privateKey", "certKey", "extraCertChain", "dhParameters"}


def _tcp_arguments(kind, args, kwargs):
    allowed = _TCP_PARAMETERS | (_TLS_PARAMETERS if kind == "ssl" else set())
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise BadValue("unknown parameter %s (%s: takes %s)" % (
            unknown[0], kind, ", ".join(sorted(allowed))))
    if len(args) > 1:
        raise BadValue("too many arguments: %s" % (":".join(args),))
    if args and "port" in kwargs:
        raise BadValue("the port is given twice")
    port = args[0] if args else kwargs.get("port")
    if port is None:
        raise BadValue("no port number (as in %s:8888)" % (kind,))
    try:
        port = port_number(port)
    except BadValue as e:
        raise BadValue("port %s" % (e,))
    interface = kwargs.get("interface", "")
    if interface:
        try:
            address = ipaddress.ip_address(interface)
        except ValueError:
            raise BadValue("interface must be an IP address, not %r" % (interface,))
        if kind == "tcp6" and address.version != 6:
            raise BadValue("interface must be an IPv6 address, not %r" % (interface,))
    backlog = kwargs.get("backlog", "50")
    try:
        backlog = positive_int(backlog)
    except BadValue as e:
        raise BadValue("backlog %s" % (e,))
    return port, interface, backlog


def _systemd_socket(description, reactor):
    try:
        return endpoints.serverFromString(reactor, description)
    except KeyError as e:
        names = os.environ.get("LISTEN_FDNAMES")
        raise BadValue("systemd passed no socket named %s (LISTEN_FDNAMES=%s); is this "
                       "started by its socket unit?" % (e, names or "unset"))
    except IndexError:
        raise BadValue("systemd passed no socket at that index (LISTEN_FDS=%s); is this "
                       "started by its socket unit?" % (os.environ.get("LISTEN_FDS", "unset"),))


def _guess(kind, args):
    """A hint for a host:port written where an endpoint string is expected."""
    if args and args[0].isdigit():
        try:
            ipaddress.ip_address(kind)
            return "; did you mean tcp:%s:interface=%s?" % (args[0], kind)
        except ValueError:
            if kind == "localhost":
                return "; did you mean tcp:%s:interface=127.0.0.1?" % (args[0],)
    if kind.isdigit() and not args:
        return "; did you mean tcp:%s?" % (kind,)
    return ""


def endpoint_from_string(description: str, reactor) -> tuple[object, Optional[ServerTLS]]:
    """The endpoint (and TLS side for ssl:) of a description; BadValue says what is wrong."""
    if not description:
        raise BadValue("needs an endpoint such as tcp:8888")
    kind, args, kwargs = split_endpoint(description)
    if kind in ("tcp", "tcp6", "ssl"):
        port, interface, backlog = _tcp_arguments(kind, args, kwargs)
        if kind == "ssl":
            private_key = kwargs.get("privateKey", "server.pem")
            tls = ServerTLS(private_key, kwargs.get("certKey", private_key),
                            kwargs.get("extraCertChain"), kwargs.get("dhParameters"))
            return endpoints.SSL4ServerEndpoint(reactor, port, tls, backlog, interface), tls
        if kind == "tcp6":
            return endpoints.TCP6ServerEndpoint(reactor, port, backlog, interface or "::"), None
        return endpoints.TCP4ServerEndpoint(reactor, port, backlog, interface), None
    if kind == "unix":
        path = args[0] if args else kwargs.get("address", "")
        directory = os.path.dirname(os.path.abspath(path)) if path else ""
        if not path:
            raise BadValue("needs a socket path (as in unix:/run/pcsignal.sock)")
        if not os.path.isdir(directory):
            raise BadValue("directory %s does not exist" % (directory,))
    if kind == "systemd":
        return _systemd_socket(description, reactor), None
    try:
        return endpoints.serverFromString(reactor, description), None
    except ValueError as e:
        if str(e).startswith("Unknown endpoint type"):
            raise BadValue("unknown endpoint type %r (use %s)%s"
                           % (kind, KINDS, _guess(kind, args)))
        raise BadValue("%s: %s" % (kind, e))
    except TypeError as e:
        # The parser's signature refused an argument.
        raise BadValue("%s: %s" % (kind, str(e).split("()", 1)[-1].strip()))


def check_endpoint(description: str, reactor, option: str = "listen", value=None) -> Endpoint:
    """
    An Endpoint for an option's value, or a usage error naming the option.
    ``value`` is what the option was given when it is not the endpoint
    string itself (``--port 8888`` means ``tcp:8888``).
    """
    try:
        endpoint, tls = endpoint_from_string(description, reactor)
    except BadValue as e:
        raise bad_option(option, "%s: %s" % (value or description, e) if description else str(e))
    return Endpoint("--" + option.lstrip("-"), description, endpoint, tls, value)


# -- listening ------------------------------------------------------------------


class CannotListen(SystemExit):
    """Ends twistd with one line (SystemExit prints its text to stderr)."""


def _why(failure, program: str) -> str:
    e = failure.value
    cause = getattr(e, "socketError", None) or e
    number = getattr(cause, "errno", None)
    if number == errno.EADDRINUSE:
        return "address already in use (is another %s running?)" % (program,)
    if number == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if number == errno.EADDRNOTAVAIL:
        return "no such address on this host"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[0].lower() + cause.strerror[1:]
    return str(cause) or type(cause).__name__


def _address(endpoint: Endpoint, failure) -> str:
    e = failure.value
    if isinstance(e, error.CannotListenError):
        interface = e.interface or ("::" if endpoint.description.startswith("tcp6") else "0.0.0.0")
        if isinstance(e.port, int):
            return ("[%s]:%d" if ":" in interface else "%s:%d") % (interface, e.port)
        return "unix:%s" % (e.port,)
    return endpoint.description


class ListenerService(service.Service):
    """
    Listens on one checked Endpoint (or endpoint string) with a factory.
    ``bind`` listens at once (from makeService, so errors end start-up in one
    line); startService logs where it listens; stopService closes the port.
    ``what`` names it in the log, program first: a port in use names that
    program ("is another pcpeer running?").
    """

    def __init__(self, endpoint, factory, what="pcsignal listening", reactor=None):
        if isinstance(endpoint, str):
            if reactor is None:
                from twisted.internet import reactor
            endpoint = check_endpoint(endpoint, reactor)
        self.endpoint = endpoint
        self.factory = factory
        self.what = what
        self.port = None

    def bind(self):
        """Listen now; raise CannotListen with one line if the endpoint cannot."""
        if self.port is not None:
            return self.port
        results = []
        self.endpoint.endpoint.listen(self.factory).addBoth(results.append)
        if not results:
            raise CannotListen("%s: cannot listen on %s: the endpoint did not listen at once"
                               % (self.endpoint.named, self.endpoint.description))
        result = results[0]
        if hasattr(result, "getHost"):
            self.port = result
            return result
        raise CannotListen("%s: cannot listen on %s: %s" % (
            self.endpoint.named, _address(self.endpoint, result),
            _why(result, self.what.split()[0])))

    def privilegedStartService(self):
        self.bind()
        service.Service.privilegedStartService(self)

    def startService(self):
        service.Service.startService(self)
        tls = " (TLS)" if self.endpoint.tls is not None else ""
        # The text is part of the format, so JSON logs keep it searchable.
        log.info(self.what + " on {address}{tls}", address=describe(self.port.getHost()), tls=tls)

    def stopService(self):
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
