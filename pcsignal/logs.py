"""
Logging: twisted.logger, with a level filter at the source and a JSON
observer for log shippers.

pcsignal's loggers publish through ``observer``, which drops events below
the configured level before they reach twistd's log file, so per-message
debug events cost nothing in production.  ``json`` is an observer factory
for ``twistd --logger pcsignal.logs.json``: one JSON object per line on
stdout, which journald and log shippers take as is.
"""

import json as _json
import math
import re
import sys
from datetime import datetime, timezone
from typing import Union

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    formatEvent,
    globalLogPublisher,
)

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [_levels])

LEVELS = ["debug", "info", "warn", "error", "critical"]

# Checked by hot paths before building a debug event at all.
debug = False


def set_level(name: str) -> None:
    global debug
    _levels.setLogLevelForNamespace(None, LogLevel.levelWithName(name))
    debug = name == "debug"


def logger(namespace: str) -> Logger:
    return Logger(namespace=namespace, observer=observer)


# Keys twisted.python.log's bridge adds to events; "log_*" keys are internals too.
_LEGACY_KEYS = {"format", "isError", "message", "system", "time", "printed"}


def json_record(event: dict) -> dict:
    """
    What a log shipper wants from an event: ``time`` (ISO 8601, UTC),
    ``level``, ``namespace``, ``text`` (the message as a person reads it),
    ``traceback`` when the event carries a failure, and the event's own
    simple fields (``peer_id``, ``address``...).  No Twisted internals.
    """
    record = {
        key: value
        for key, value in event.items()
        if not key.startswith("log_") and key not in _LEGACY_KEYS
        and isinstance(value, (str, int, float, bool))
        and not (isinstance(value, float) and not math.isfinite(value))
    }
    when = event.get("log_time")
    record["time"] = (
        datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z") if when is not None else None
    )
    level = event.get("log_level")
    record["level"] = level.name if level is not None else "info"
    record["namespace"] = event.get("log_namespace", "-")
    record["text"] = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    return record


def _json_line(event: dict) -> str:
    return _json.dumps(json_record(event), default=str) + "\n"


def json():
    """Observer factory for ``twistd --logger pcsignal.logs.json``."""
    return FileLogObserver(sys.stdout, _json_line)


# A client-supplied field in a log line is cut to this many characters.
LOG_FIELD_CHARS = 200
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f]")


def clip(field: Union[bytes, str], limit: int = LOG_FIELD_CHARS) -> str:
    """
    A client-supplied field fit for a log line (a method, path, header or
    peer name): control characters escaped, cut to ``limit`` characters with
    its full length noted.
    """
    text = field.decode("latin-1") if isinstance(field, bytes) else field
    shown = _UNPRINTABLE.sub(lambda m: "\\x%02x" % (ord(m.group()),), text[:limit])
    if len(text) > limit:
        shown += "...(%d %s)" % (len(field), "bytes" if isinstance(field, bytes) else "characters")
    return shown
