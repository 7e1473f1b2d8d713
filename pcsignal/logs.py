"""
Logging: twisted.logger, with a level filter at the source and a JSON
observer for log shippers.

pcsignal's loggers publish through ``observer``, which drops events below
the configured level before they reach twistd's log file, so per-message
debug events cost nothing in production.  ``json`` is an observer factory
for ``twistd --logger pcsignal.logs.json``: one JSON object per line on
stdout, which journald and log shippers take as is.
"""

import sys

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
