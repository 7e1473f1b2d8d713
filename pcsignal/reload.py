"""
SIGHUP: read the options again and apply what can change without dropping
anyone.

The new values come from where they came from at start: the ``--config``
file (read again) and the same command line, parsed by the same Options
class, so a reload checks every value exactly as a start does.  Like
nginx's reload, it is all or nothing: one bad value (or an unreadable
certificate) refuses the whole reload, logs why, and everything keeps its
running value.  Otherwise one log line lists what changed.

Each part of the server registers a *prepare* function
``prepare(current, new) -> [Change]``: ``current`` holds the values in
force, ``new`` the freshly parsed Options.  It returns one Change per
difference, and may raise BadValue (or usage.UsageError) to refuse the
reload.  Nothing is applied until every part has prepared.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Callable, Optional

from twisted.application import service
from twisted.python import usage

from pcsignal import logs
from pcsignal.options import BadValue

log = logs.logger("pcsignal.reload")


@dataclass
class Change:
    """One difference: ``text`` for the log, ``apply`` puts it in force
    (None: it needs a restart), ``values`` are the option values now in force."""

    text: str
    apply: Optional[Callable[[], None]] = None
    values: dict = field(default_factory=dict)


def _shown(value) -> str:
    if value is None:
        return "(default)"
    return "%g" % value if isinstance(value, float) else str(value)


def setting(key: str, apply: Callable[[object], None]):
    """A prepare function for one option whose new value ``apply`` takes."""

    def prepare(current, new):
        if new[key] == current[key]:
            return []
        return [Change("--%s %s -> %s" % (key, _shown(current[key]), _shown(new[key])),
                       lambda: apply(new[key]), {key: new[key]})]

    return prepare


def flag(key: str, apply: Callable[[bool], None]):
    """A prepare function for an on/off option."""

    def prepare(current, new):
        if bool(new[key]) == bool(current[key]):
            return []
        return [Change("--%s %s" % (key, "on" if new[key] else "off"),
                       lambda: apply(bool(new[key])), {key: new[key]})]

    return prepare


def restart_only(*keys: str):
    """A prepare function that reports options a reload cannot change."""

    def prepare(current, new):
        return [Change("--%s differs but needs a restart" % (key,))
                for key in keys if new[key] != current[key]]

    return prepare


class Reloader(service.Service):
    """
    Reloads on SIGHUP (``systemctl reload``) while running.  ``options`` is
    the parsed Options, with ``reparse()`` giving a fresh parse of the same
    sources.
    """

    def __init__(self, options, reactor):
        self.options = options
        self.current = dict(options)
        self.reactor = reactor
        self.parts: list = []
        self._previous_handler = None

    def register(self, prepare) -> None:
        """Add a prepare function (see the module's docstring)."""
        self.parts.append(prepare)

    def startService(self):
        service.Service.startService(self)
        self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self):
        service.Service.stopService(self)
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None

    def _on_sighup(self, signum, frame):
        # Signal handlers may not touch the reactor's state; this is the way in.
        self.reactor.callFromThread(self.reload)

    def reload(self) -> list[Change]:
        """Read the options again and apply what changed; returns the changes."""
        source = self.options.get("config") or "the command line"
        try:
            new = self.options.reparse()
            changes = [change for prepare in self.parts for change in prepare(self.current, new)]
        except (usage.UsageError, BadValue) as e:
            log.error("reload of {source} refused, nothing changed: {problem}",
                      source=source, problem=str(e))
            return []
        for change in changes:
            if change.apply is not None:
                change.apply()
                self.current.update(change.values)
        applied = [c.text for c in changes if c.apply is not None]
        pending = [c.text for c in changes if c.apply is None]
        log.info("reloaded {source}: {changed}{pending}", source=source,
                 changed=", ".join(applied) if applied else "nothing changed",
                 pending="; " + ", ".join(pending) if pending else "")
        return changes
