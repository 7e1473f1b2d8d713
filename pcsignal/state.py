"""
The ``--state-file``: the in-memory channel's state across a restart.

On a graceful stop the channel's snapshot (members with their ids, names
and tokens, their queued and in-flight messages, the id allocator) is
written atomically: a temporary file in the same directory, fsync, rename,
fsync of the directory.  At start it is read, given to the channel, and
removed, so a crash later cannot bring back messages delivered since.

A file that cannot be used (unreadable, not JSON, truncated, another
format or version) is moved aside as ``PATH.bad-TIME`` with one log line,
and the server starts empty: a bad file never stops the server from
starting, so systemd never loops on it.
"""

from __future__ import annotations

import json
import os
import time

from pcsignal import logs

log = logs.logger("pcsignal.state")

FORMAT = "pcsignal-state"
VERSION = 1


class StateError(Exception):
    """The state file cannot be used; str() says why."""


def save(path: str, channel) -> None:
    """Write the channel's snapshot to path atomically."""
    document = {"format": FORMAT, "version": VERSION, "written": time.time(),
                "channel": channel.snapshot()}
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(document, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_directory(directory)
    except OSError as e:
        log.error("cannot write the state file {path}: {problem}; peers and queued messages "
                  "are lost at this stop", path=path, problem=e.strerror or str(e))
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return
    peers = len(document["channel"].get("members", ()))
    log.info("state written to {path}: {peers} peers, {items} queued items",
             path=path, peers=peers, items=channel.queued_count)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> dict:
    """The channel snapshot in a state file; StateError says why it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise StateError("cannot read it: %s" % (e.strerror or e,))
    try:
        document = json.loads(data)
    except ValueError as e:
        raise StateError("not a complete JSON document (%s)" % (e,))
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateError("not a pcsignal state file")
    if document.get("version") != VERSION:
        raise StateError("state format version %r, this pcsignal reads version %d"
                         % (document.get("version"), VERSION))
    snapshot = document.get("channel")
    if not isinstance(snapshot, dict):
        raise StateError("no channel state in it")
    return snapshot


def move_aside(path: str) -> str:
    """Rename an unusable state file out of the way; returns where it went."""
    aside = "%s.bad-%s" % (path, time.strftime("%Y%m%dT%H%M%S"))
    os.replace(path, aside)
    return aside


def load(path: str, channel) -> bool:
    """
    Restore the channel from path, if it exists, and remove the file.
    Returns whether anything was restored; never raises for a bad file.
    """
    if not os.path.lexists(path):
        log.info("no state file at {path}: starting empty", path=path)
        return False
    try:
        channel.restore(read(path))
    except (StateError, ValueError, KeyError, TypeError) as e:
        problem = str(e) if isinstance(e, StateError) else "malformed state (%s: %s)" % (
            type(e).__name__, e)
        try:
            where = "moved to " + move_aside(path)
        except OSError as move_error:
            where = "could not move it aside (%s)" % (move_error.strerror or move_error,)
        log.error("state file {path} unusable, starting empty: {problem}; {where}",
                  path=path, problem=problem, where=where)
        return False
    os.unlink(path)
    log.info("state restored from {path}: {peers} peers, {items} queued items",
             path=path, peers=channel.peer_count, items=channel.queued_count)
    return True
