"""
Logging: twisted.logger, with a level filter at the source and a JSON
observer for log shippers.

pcsignal's loggers publish through ``observer``, which drops events below
the configured level before they reach twistd's log file, so per-message
debug events cost nothing in production.  ``json`` is an observer factory
for ``twistd --logger pcsignal.logs.json``: one JSON object per line on
stdout, which journald and log shippers take as is.
"""

import re
import sys
from typing import Union

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
    jsonFileLogObserver,
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


def json():
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


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
