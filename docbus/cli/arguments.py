"""Argument types the commands share: a bad value is a usage error when the line is parsed.

Each is an ``argparse`` ``type=``: it turns the text into the value or raises
:class:`argparse.ArgumentTypeError` with what is wrong, which argparse prints as one line
(``docbus COMMAND: error: argument --limit: must be 0 or more, not -5``) with exit code 2 —
before any command connects to anything, so a typo costs nothing. Neighbours: the commands in
:mod:`docbus.cli` that declare their options with these, :mod:`docbus.cli.runner` (exit codes).
"""

from __future__ import annotations

import argparse
import math
import re

from docbus.envelope import BATCH_ID_PATTERN

__all__ = [
    "batch_id",
    "count",
    "money",
    "non_empty",
    "non_negative_int",
    "non_negative_seconds",
    "port",
    "positive_int",
    "positive_number",
    "positive_seconds",
    "share",
]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def _checked(ok: bool, rule: str, text: str) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {rule}, not {text}")


def positive_int(text: str) -> int:
    """A whole number, 1 or more (a count of things to do)."""
    value = _int(text)
    _checked(value >= 1, "1 or more", text)
    return value


def non_negative_int(text: str) -> int:
    """A whole number, 0 or more."""
    value = _int(text)
    _checked(value >= 0, "0 or more", text)
    return value


def port(text: str) -> int:
    """A TCP port: 0 to 65535, 0 meaning any free one."""
    value = _int(text)
    _checked(0 <= value <= 65535, "a port from 0 to 65535 (0: any free one)", text)
    return value


def count(text: str) -> int:
    """A number of rows to show: 0 or more, 0 meaning all."""
    return non_negative_int(text)


def positive_number(text: str) -> float:
    """A finite number more than 0 (a rate)."""
    value = _number(text)
    _checked(value > 0, "more than 0", text)
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds, more than 0."""
    value = _number(text)
    _checked(value > 0, "more than 0 seconds", text)
    return value


def non_negative_seconds(text: str) -> float:
    """A finite number of seconds, 0 or more."""
    value = _number(text)
    _checked(value >= 0, "0 seconds or more", text)
    return value


def share(text: str) -> float:
    """A probability or a share: a number from 0 to 1."""
    value = _number(text)
    _checked(0 <= value <= 1, "from 0 to 1", text)
    return value


def money(text: str) -> float:
    """An amount of US dollars: a finite number more than 0 (``inf`` and ``nan`` are not)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of dollars: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a number of dollars: {text!r} (give e.g. 25.00)")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 dollars, not {text}")
    return value


def non_empty(text: str) -> str:
    """Any text but empty or blank (an id, a name)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def batch_id(text: str) -> str:
    """A batch id: up to 64 letters, digits, ``.``, ``_`` or ``-``."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (leave --batch-id out for a fresh id)")
    if not re.match(BATCH_ID_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"invalid batch id {text!r}: use up to 64 letters, digits, . _ or -"
        )
    return text
