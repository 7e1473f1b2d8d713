"""
Value checks shared by every command line: ``twistd pcsignal``,
``twistd pcpeer`` (twisted.python.usage) and the benchmarks (argparse).

Each check raises BadValue, which both parsers understand: usage.Options
reports a ValueError, argparse an ArgumentTypeError, each with our text.
"""

from __future__ import annotations

import argparse


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A value an option cannot take; str() says why."""


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


positive_int.coerceDoc = positive_float.coerceDoc = "Must be positive."
non_negative_float.coerceDoc = "Must not be negative."
fraction.coerceDoc = "From 0 to 1."
