"""
Network namespaces made by a test, as root, inside the suite's own
namespace: names unique to this process, veth pairs between them, and all
of it deleted afterwards (a veth pair goes with its namespace).
"""

import itertools
import os
import subprocess

_serial = itertools.count()


def ip(*args):
    """Run ``ip ARGS``; fail with its complaint."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise AssertionError("ip %s: %s" % (" ".join(args), result.stderr.strip()))
    return result.stdout


class Namespaces:
    """The namespaces of one test module; ``close()`` deletes them all."""

    def __init__(self):
        self.names = []
        self._prefix = "pct%d-%d" % (os.getpid(), next(_serial))

    def add(self, role):
        name = "%s-%s" % (self._prefix, role)
        ip("netns", "add", name)
        self.names.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def link(self, ns_a, address_a, ns_b, address_b):
        """A veth pair between two namespaces, addressed ``ADDRESS/PREFIX`` and up."""
        serial = next(_serial)
        ends = [(ns_a, "v%da" % serial, address_a), (ns_b, "v%db" % serial, address_b)]
        ip("link", "add", ends[0][1], "netns", ns_a, "type", "veth", "peer", "name", ends[1][1], "netns", ns_b)
        for ns, device, address in ends:
            ip("-n", ns, "addr", "add", address, "dev", device)
            ip("-n", ns, "link", "set", device, "up")

    @staticmethod
    def command(ns, argv):
        """``argv`` run inside namespace ``ns`` (ip netns exec runs it in place: same pid)."""
        return ["ip", "netns", "exec", ns, *argv]

    def close(self):
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.names = []
