"""
Real redis-server and HAProxy processes for the tests, on free loopback ports.

``RedisServer(directory)`` runs Debian's ``redis-server`` with its data
(append-only file) in ``directory``, so ``stop()`` then ``start()`` is a
restart that keeps what was written; ``password=`` requires AUTH,
``unix=True`` listens on a socket in ``directory`` instead of TCP,
``tls=True`` on TLS only, asking clients for a certificate (Redis's
default), with a CA and certificates made in ``directory/tls``.
``cli(*args)`` runs ``redis-cli`` against it.  ``Haproxy`` balances over
pcsignal instances with the shipped example configuration.
"""

import os
import signal
import socket
import subprocess
import time

from conftest import LoggedProcess
from deploy_support import write_mutual_tls

REDIS_SERVER = "/usr/bin/redis-server"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, directory, password=None, unix=False, appendonly=True, tls=False):
        self.directory = str(directory)
        self.password = password
        self.socket = os.path.join(self.directory, "redis.sock") if unix else None
        self.port = None if unix else free_port()
        self.appendonly = appendonly
        self.tls = write_mutual_tls(self.directory) if tls else None
        self.process = None

    @property
    def url(self) -> str:
        if self.socket:
            return "unix://%s" % (self.socket,) + (
                "?password=%s" % self.password if self.password else "")
        auth = ":%s@" % (self.password,) if self.password else ""
        if self.tls:
            return ("rediss://%s127.0.0.1:%d/0?ssl_ca_certs=%s/ca.pem&ssl_certfile=%s/client.pem"
                    "&ssl_keyfile=%s/client.key" % (auth, self.port, *(self.tls,) * 3))
        return "redis://%s127.0.0.1:%d/0" % (auth, self.port)

    def start(self):
        args = [REDIS_SERVER, "--dir", self.directory, "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--logfile", "", "--daemonize", "no",
                "--maxmemory-policy", "noeviction"]
        if self.socket:
            args += ["--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700"]
        elif self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                     "--tls-cert-file", os.path.join(self.tls, "server.pem"),
                     "--tls-key-file", os.path.join(self.tls, "server.key"),
                     "--tls-ca-cert-file", os.path.join(self.tls, "ca.pem")]
        else:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = LoggedProcess(args)
        self.process.wait_for_log(r"(?i)ready to accept connections")
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.process is not None:
            self.process.stop(sig)
            self.process = None

    def cli(self, *args) -> str:
        where = ["-s", self.socket] if self.socket else ["-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            where += ["--tls", "--cacert", os.path.join(self.tls, "ca.pem"),
                      "--cert", os.path.join(self.tls, "client.pem"),
                      "--key", os.path.join(self.tls, "client.key")]
        env = dict(os.environ, REDISCLI_AUTH=self.password) if self.password else None
        out = subprocess.run(["redis-cli", *where, *args], capture_output=True, text=True,
                             timeout=30, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout


class Haproxy:
    """HAProxy with etc/haproxy/haproxy.cfg, pointed at the given pcsignal ports."""

    def __init__(self, directory, ports):
        self.port = free_port()
        config = open(os.path.join(ROOT, "etc", "haproxy", "haproxy.cfg")).read()
        config = config.replace("bind :::8888 v4v6", "bind 127.0.0.1:%d" % self.port)
        servers = "".join(
            "    server pcsignal%d 127.0.0.1:%d check\n" % (i, port)
            for i, port in enumerate(ports, 1))
        start = config.index("    server pcsignal1")
        end = config.index("\n", config.index("    server pcsignal2")) + 1
        config = config[:start] + servers + config[end:]
        # Tests run as root without a chroot jail or a daemon user to drop to.
        config = "\n".join(l for l in config.split("\n")
                           if not l.strip().startswith(("chroot", "user ", "group ", "daemon",
                                                        "log ", "stats socket", "maxconn")))
        self.config = os.path.join(str(directory), "haproxy.cfg")
        with open(self.config, "w") as f:
            f.write(config)
        self.process = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % (self.port,)

    def start(self):
        check = subprocess.run(["haproxy", "-c", "-f", self.config], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.process = LoggedProcess(["haproxy", "-db", "-f", self.config])
        # HAProxy logs nothing when it listens: try until it accepts.
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except ConnectionRefusedError:
                assert self.process.proc.poll() is None, self.process.output()
                assert time.monotonic() < deadline, "HAProxy never listened"
                time.sleep(0.01)

    def stop(self):
        if self.process is not None:
            self.process.stop()
            self.process = None
