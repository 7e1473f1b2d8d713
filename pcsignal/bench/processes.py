"""
Processes the benchmarks and the tests start and watch: one follower of a
child's output lines, and CPU and memory of any local process (psutil).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from typing import Optional

import psutil


class ProcessStats:
    """CPU seconds and memory of a process on this machine, by pid (any server, ours or not)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._process = psutil.Process(pid)

    def cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def rss_bytes(self) -> int:
        return self._process.memory_info().rss

    def rss_mib(self) -> float:
        return round(self.rss_bytes() / 1048576.0, 1)

    def peak_rss_mib(self) -> Optional[float]:
        """The kernel's high-water mark (VmHWM); psutil has no peak, so it is read here (Linux)."""
        try:
            with open("/proc/%d/status" % (self.pid,)) as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return round(int(line.split()[1]) / 1024.0, 1)
        except OSError:
            pass
        return None


class LoggedProcess:
    """
    A child process whose output lines (stdout and stderr together) are
    collected by a thread and can be waited for: ``wait_for_log(regex)``
    blocks until a line matches, fails if the process exits first or the
    timeout passes.  From a reactor thread, wait with
    ``threads.deferToThread(process.wait_for_log, ...)``.
    """

    def __init__(self, argv, env=None, cwd=None, pass_fds=()) -> None:
        self.name = os.path.basename(argv[0])
        self.lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        child_env = dict(os.environ, PYTHONUNBUFFERED="1")
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            cwd=cwd,
            pass_fds=pass_fds,
        )
        self.stats = ProcessStats(self.proc.pid)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = 30, after: int = 0):
        """Block until a line numbered >= after matches; returns the match. Any thread may wait."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = after
        with self._changed:
            while True:
                for line in self.lines[index:]:
                    m = regex.search(line)
                    if m:
                        return m
                index = len(self.lines)
                if self._ended:
                    raise AssertionError(
                        "%s exited (%s) before logging %r; log:\n%s"
                        % (self.name, self.proc.wait(), pattern, self.output())
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        "%s: no log line matching %r within %ss; log:\n%s"
                        % (self.name, pattern, timeout, self.output())
                    )
                self._changed.wait(remaining)

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the process and wait; returns its exit code (kills it if it does not exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    "%s did not exit within %ss of %s; log:\n%s" % (self.name, timeout, sig, self.output())
                )
        self._reader.join(5)
        return self.proc.returncode
