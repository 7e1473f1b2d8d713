"""
Value checks shared by every command line: ``twistd pcsignal``,
``twistd pcpeer`` (twisted.python.usage) and the benchmarks (argparse).

Each check raises BadValue, which both parsers understand: usage.Options
reports a ValueError, argparse an ArgumentTypeError, each with our text.

``Options`` is the base of both plugins' option classes: a bad value names
its option (``--peer-timeout must be positive, not '0'``) instead of
twisted.python.usage's ``Parameter type enforcement failed: ...``, and
``--version`` prints pcsignal's version.
Checks that need more than one value, or a file, raise ``usage.UsageError``
from ``postOptions`` through ``bad_option``, so every refusal reads the same.
"""

from __future__ import annotations

import argparse
import os

from twisted.python import usage

from pcsignal import __version__, logs


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A value an option cannot take; str() says why."""


def bad_option(option: str, problem: str) -> usage.UsageError:
    """The usage error for an option: ``--OPTION PROBLEM``."""
    return usage.UsageError("--%s %s" % (option.lstrip("-"), problem))


def _number(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise BadValue("must be %s, not %r" % (what, text))


def positive_int(text: str) -> int:
    value = _number(int, text, "a positive whole number")
    if value <= 0:
        raise BadValue("must be positive, not %r" % (text,))
    return value


def positive_float(text: str) -> float:
    value = _number(float, text, "a positive number")
    if not value > 0 or value == float("inf"):
        raise BadValue("must be positive, not %r" % (text,))
    return value


def non_negative_float(text: str) -> float:
    value = _number(float, text, "a number")
    if not value >= 0 or value == float("inf"):
        raise BadValue("must not be negative, not %r" % (text,))
    return value


def fraction(text: str) -> float:
    value = _number(float, text, "a number from 0 to 1")
    if not 0 <= value <= 1:
        raise BadValue("must be from 0 to 1, not %r" % (text,))
    return value


def port_number(text: str) -> int:
    value = _number(int, text, "a port number (0 to 65535)")
    if not 0 <= value <= 65535:
        raise BadValue("must be a port number (0 to 65535), not %r" % (text,))
    return value


def writable_file(path: str) -> str:
    """A file this process may create or replace: its directory exists and is writable."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise BadValue("%s is a directory, not a file" % (path,))
    if not os.path.isdir(directory):
        raise BadValue("directory %s does not exist" % (directory,))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BadValue("directory %s is not writable" % (directory,))
    return path


def log_level(text: str) -> str:
    if text not in logs.LEVELS:
        raise BadValue("must be one of %s, not %r" % (", ".join(logs.LEVELS), text))
    return text


positive_int.coerceDoc = positive_float.coerceDoc = "Must be positive."
non_negative_float.coerceDoc = "Must not be negative."
port_number.coerceDoc = "0 to 65535."
fraction.coerceDoc = "From 0 to 1."


class _Named:
    """A check that says which option its value was for."""

    def __init__(self, option: str, check):
        self.option = option
        self.check = check
        self.coerceDoc = getattr(check, "coerceDoc", "")  # usage.Options shows it in --help

    def __call__(self, text: str):
        try:
            return self.check(text)
        except ValueError as e:
            # usage.Options turns a ValueError into "Parameter type enforcement
            # failed"; a UsageError goes through as it is.
            problem = str(e) if isinstance(e, BadValue) else "cannot be %r" % (text,)
            raise bad_option(self.option, problem)


class Options(usage.Options):
    """
    usage.Options whose value checks name their option when they refuse:
    every ``optParameters`` row with a check (its fifth item) is wrapped, in
    every subclass.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        rows = cls.__dict__.get("optParameters")
        if rows:
            cls.optParameters = [
                list(row[:4]) + [_Named(row[0], row[4])]
                if len(row) > 4 and row[4] is not None and not isinstance(row[4], _Named)
                else row
                for row in rows
            ]

    def opt_version(self):
        """Print the version and exit."""
        print("pcsignal %s" % (__version__,))
        raise SystemExit(0)
